"""The TCP listener over real loopback sockets, on the default loop and on uvloop."""

from __future__ import annotations

import asyncio
import functools
import operator
import re
import time
from collections.abc import Callable
from pathlib import Path

import pyais
import pytest
import uvloop

from aisfusion.config import FeedConfig
from aisfusion.feeds.decoder import FeedDecoder
from aisfusion.feeds.tcp import TcpServer, start_tcp_server
from aisfusion.messages import RawMessage
from aisfusion.metrics import Metrics

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ais"
SOURCE = "tcp-test"


def manifest_table() -> dict[str, dict[str, int]]:
    """The summary table of MANIFEST.md, by file name."""
    rows: dict[str, dict[str, int]] = {}
    for line in (DATA / "MANIFEST.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 10 or not cells[0].startswith("`shared/"):
            continue
        name = cells[0].strip("`").rsplit("/", 1)[-1]
        _, incomplete, orphans = (int(x) for x in cells[8].split(" / "))
        row = {
            "lines": int(cells[2].replace(",", "")),
            "vdm": int(cells[3].replace(",", "")),
            "messages": int(cells[4].replace(",", "")),
            "incomplete": incomplete,
            "orphans": orphans,
        }
        for amount, what in re.findall(r"(\d+) ([a-z/ ]+?)(?:,|$)", cells[9]):
            row[what] = int(amount)
        rows[name] = row
    return rows


TABLE = manifest_table()


def standalone_tag_lines(name: str) -> int:
    """From the file's own section of MANIFEST.md."""
    text = (DATA / "MANIFEST.md").read_text()
    m = re.search(
        rf"### `shared/data/ais/{re.escape(name)}`.*?standalone tag-block lines ([\d,]+)",
        text,
        re.S,
    )
    assert m, name
    return int(m[1].replace(",", ""))


def gatehouse_lines(name: str) -> int:
    """$PGHP sentences (they time the next sentence: not rejected), from the talkers line of
    the file's section of MANIFEST.md."""
    text = (DATA / "MANIFEST.md").read_text()
    section = text.split(f"### `shared/data/ais/{name}`", 1)[1].split("\n### ", 1)[0]
    m = re.search(r"other:PGHP ([\d,]+)", section)
    return int(m[1].replace(",", "")) if m else 0


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"source": SOURCE, **labels})
    return 0.0 if value is None else value


def rejected(metrics: Metrics, reason: str) -> float:
    return sample(metrics, "aisfusion_feed_rejected_total", reason=reason)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a condition the server side reaches soon; give up after ten seconds."""
    deadline = time.monotonic() + 10.0
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


class Harness:
    """A listener on an ephemeral loopback port, its metrics and everything it delivered."""

    def __init__(self, server: TcpServer, metrics: Metrics) -> None:
        self.server = server
        self.metrics = metrics
        self.batches: list[list[RawMessage]] = []
        self.port = server.port

    @property
    def messages(self) -> list[RawMessage]:
        return [m for batch in self.batches for m in batch]

    def value(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def send_all(self, data: bytes, chunk: int = 65536) -> None:
        """One connection: send `data`, half-close, wait for the server to finish with it."""
        async with asyncio.timeout(30):
            reader, writer = await self.connect()
            for i in range(0, len(data), chunk):
                writer.write(data[i : i + chunk])
                await writer.drain()
            writer.write_eof()
            assert await reader.read() == b""  # the server closes once it has read it all
            writer.close()
            await writer.wait_closed()
            await wait_until(lambda: self.value("aisfusion_feed_connections") == 0)


async def start(**overrides: object) -> Harness:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "source": SOURCE,
        "max_line_bytes": 1024,
        "fragment_timeout_s": 10.0,
        "max_connections": 8,
    } | overrides
    metrics = Metrics()
    batches: list[list[RawMessage]] = []
    server = await start_tcp_server(FeedConfig(**settings), batches.append, metrics)  # type: ignore[arg-type]
    harness = Harness(server, metrics)
    harness.batches = batches
    return harness


async def stop(h: Harness) -> None:
    h.server.close()
    await h.server.wait_closed()


def _key(m: RawMessage) -> tuple[object, ...]:
    return (m.mmsi, m.msg_type, m.payload, m.fill_bits, m.station, m.has_tag_time) + (
        (m.received_at,) if m.has_tag_time else ()
    )


# Files whose counts need no adjustment between MANIFEST.md and aisfusion's reasons (see
# test_decoder.py for the files that do): big plain, standalone tag lines between other
# NMEA, tag blocks with groups, garbage, truncated and bad checksums.
TCP_FILES = [
    "aishub-2015.nmea",
    "dma-denmark-2013.nmea",
    "gfw-listener-tagblock.nmea",
    "gfw-listener-mixed.nmea",
    "gfw-tools-errors.nmea",
    "gpsd-sample.aivdm",
    "gpsd-ais-nmea.log",
]


async def check_file_over_tcp(name: str, chunk: int) -> None:
    data = (DATA / name).read_bytes()
    want = TABLE[name]
    h = await start()
    try:
        await h.send_all(data, chunk)
    finally:
        await stop(h)
    # Independent figures from the manifest's summary table.
    assert h.value("aisfusion_feed_messages_total") == want["messages"]
    assert len(h.messages) == want["messages"]
    assert h.value("aisfusion_feed_lines_total") == want["lines"]
    assert h.value("aisfusion_feed_bytes_total") == len(data)
    assert rejected(h.metrics, "garbage") == want.get("garbage", 0)
    assert rejected(h.metrics, "bad_checksum") == want.get("bad cs", 0)
    assert rejected(h.metrics, "no_checksum") == want.get("no/trunc cs", 0)
    assert rejected(h.metrics, "incomplete_group") == want["incomplete"]
    assert rejected(h.metrics, "orphan_fragment") == want["orphans"]
    # Lines that are neither VDM/VDO nor garbage are other NMEA sentences or tag blocks on
    # their own line (the table has no column for those; the per-file section does).
    other = want["lines"] - want["vdm"] - want.get("garbage", 0)
    assert rejected(h.metrics, "not_ais") == (
        other - standalone_tag_lines(name) - gatehouse_lines(name)
    )
    # The transport adds and loses nothing against the decoder fed in-process.
    d = FeedDecoder(SOURCE, max_line_bytes=1024, fragment_timeout_s=10.0)
    local = d.feed(data, 0.0) + d.flush(0.0)
    assert [_key(m) for m in h.messages] == [_key(m) for m in local]
    for reason, n in d.rejects.items():
        assert rejected(h.metrics, reason) == n, reason
    assert all(h.batches)  # the sink never sees an empty batch
    framing = h.metrics.registry.get_sample_value(
        "aisfusion_stage_seconds_total", {"stage": "framing"}
    )
    assert framing is not None
    assert framing > 0


@pytest.mark.parametrize("name", TCP_FILES)
async def test_file_over_tcp(name: str) -> None:
    await check_file_over_tcp(name, 65536)


async def test_small_writes_over_tcp() -> None:
    await check_file_over_tcp("gfw-listener-tagblock.nmea", 37)


def test_on_uvloop() -> None:
    """The service runs on uvloop, whose transports are not asyncio.Transport subclasses."""
    scenarios = [
        check_file_over_tcp("gfw-listener-tagblock.nmea", 4096),
        check_file_over_tcp("gfw-listener-mixed.nmea", 7),
        test_bad_input_keeps_the_connection_and_spares_others(),
        test_connections_beyond_the_limit_are_refused(),
        test_a_silent_client_is_closed_after_the_idle_timeout(),
        test_closing_the_server_closes_open_connections_and_flushes_them(),
    ]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        for scenario in scenarios:
            # A bound of our own: pytest-timeout's SIGALRM cannot interrupt a stuck uvloop.
            runner.run(asyncio.wait_for(scenario, 30))


GOOD = b"!AIVDM,1,1,,A,15B4FT5000JRP>PE6E68Nbkl0PS5,0*70\r\n"


async def sent_and_seen(h: Harness, writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write and wait until the server has read it, so the next write is a separate chunk."""
    before = h.value("aisfusion_feed_bytes_total")
    writer.write(data)
    await writer.drain()
    await wait_until(lambda: h.value("aisfusion_feed_bytes_total") >= before + len(data))


async def test_bad_input_keeps_the_connection_and_spares_others() -> None:
    h = await start(max_line_bytes=100)
    try:
        _, bad = await h.connect()
        _, good = await h.connect()
        await sent_and_seen(h, good, GOOD)
        await sent_and_seen(h, bad, b"\x00\xff garbage \x80\n$GPGGA,1*00\n!AIVDM,1,1*00\n")
        await sent_and_seen(h, bad, b"!AIVDM," + b"9" * 80)  # an over-long line, in pieces...
        await sent_and_seen(h, good, GOOD)
        for _ in range(5):
            await sent_and_seen(h, bad, b"Z" * 90)
        await sent_and_seen(h, bad, b"still the same line\n" + GOOD)  # ...then a good one
        await sent_and_seen(h, good, GOOD)
        await wait_until(lambda: len(h.messages) == 4)
        assert h.value("aisfusion_feed_connections") == 2
        assert rejected(h.metrics, "too_long") == 1
        assert rejected(h.metrics, "garbage") == 1
        assert rejected(h.metrics, "not_ais") == 1
        assert rejected(h.metrics, "bad_checksum") == 1
        assert h.value("aisfusion_feed_lines_total") == 8
        for w in (bad, good):
            w.close()
            await w.wait_closed()
        await wait_until(lambda: h.value("aisfusion_feed_connections") == 0)
    finally:
        await stop(h)


def _sentence(body: str) -> bytes:
    cs = functools.reduce(operator.xor, body.encode(), 0)
    return b"!%s*%02X\n" % (body.encode(), cs)


async def test_two_connections_interleave_fragments_with_the_same_sequence_id() -> None:
    east = [
        _sentence("AIVDM,2,1,3,A,55?MbV02;H;s<HtKR20EHE:0@T4@Dn2222222216L961O5Gf0NSQEp6ClRp8,0"),
        _sentence("AIVDM,2,2,3,A,88888888880,2"),
    ]
    west = [
        _sentence("AIVDM,2,1,3,A,53KPtl01pv8`tTtR22050thhtr2222222222220l1`A916Vh0;20DPSmD`0D,0"),
        _sentence("AIVDM,2,2,3,A,ljDm0CPiH80,2"),
    ]
    h = await start()
    try:
        _, a = await h.connect()
        _, b = await h.connect()
        await sent_and_seen(h, a, east[0])
        await sent_and_seen(h, b, west[0])
        await sent_and_seen(h, a, east[1])
        await sent_and_seen(h, b, west[1])
        await wait_until(lambda: len(h.messages) == 2)
        assert [m.mmsi for m in h.messages] == [
            pyais.decode(*east).mmsi,
            pyais.decode(*west).mmsi,
        ]
        assert rejected(h.metrics, "orphan_fragment") == 0
        assert rejected(h.metrics, "incomplete_group") == 0
        for w in (a, b):
            w.close()
            await w.wait_closed()
    finally:
        await stop(h)


async def _held_connection(h: Harness) -> asyncio.StreamWriter:
    before = h.value("aisfusion_feed_lines_total")
    _, w = await h.connect()
    await sent_and_seen(h, w, GOOD)
    await wait_until(lambda: h.value("aisfusion_feed_lines_total") == before + 1)
    return w


async def test_connections_beyond_the_limit_are_refused() -> None:
    h = await start(max_connections=2)
    try:
        first = await _held_connection(h)
        second = await _held_connection(h)
        reader, extra = await h.connect()
        extra.write(GOOD)
        assert await reader.read() == b""  # closed by the server straight away
        extra.close()
        await extra.wait_closed()
        assert rejected(h.metrics, "connection_refused") == 1
        assert h.value("aisfusion_feed_connections") == 2
        await sent_and_seen(h, first, GOOD)  # the accepted ones carry on
        first.close()
        await first.wait_closed()
        await wait_until(lambda: h.value("aisfusion_feed_connections") == 1)
        third = await _held_connection(h)  # a freed slot is usable again
        assert len(h.messages) == 4
        for w in (second, third):
            w.close()
            await w.wait_closed()
    finally:
        await stop(h)


async def test_connection_lost_flushes_the_decoder() -> None:
    h = await start()
    try:
        first_fragment = _sentence("AIVDM,2,1,3,A,53KPtl01pv8`tTtR22050thhtr2222222222220l1,0")
        # A complete last line without its newline, and a fragment group left open.
        await h.send_all(first_fragment + GOOD.rstrip())
        assert len(h.messages) == 1
        assert rejected(h.metrics, "incomplete_group") == 1
        assert h.value("aisfusion_feed_lines_total") == 2
    finally:
        await stop(h)


async def test_a_failing_sink_does_not_close_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def sink(batch: list[RawMessage]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("downstream hiccup")

    metrics = Metrics()
    config = FeedConfig(host="127.0.0.1", port=0, source=SOURCE)
    server = await start_tcp_server(config, sink, metrics)
    try:
        _, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(GOOD)
        await w.drain()
        await wait_until(lambda: len(calls) == 1)
        w.write(GOOD)
        await w.drain()
        await wait_until(lambda: len(calls) == 2)
        assert "sink failed" in caplog.text
        w.close()
        await w.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


# --- idle connections ----------------------------------------------------------------------


async def test_a_silent_client_is_closed_after_the_idle_timeout() -> None:
    h = await start(idle_timeout_s=0.2)
    try:
        reader, writer = await h.connect()
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # the server hung up
        await wait_until(lambda: h.value("aisfusion_feed_connections") == 0)
        assert h.value("aisfusion_feed_idle_closed_total") == 1
        writer.close()
        await writer.wait_closed()
    finally:
        await stop(h)


async def test_bytes_without_a_newline_do_not_keep_a_connection_open() -> None:
    """A peer trickling bytes that never end a line holds a slot and delivers nothing."""
    h = await start(idle_timeout_s=0.3)
    try:
        reader, writer = await h.connect()

        async def trickle() -> None:
            for byte in GOOD.rstrip() * 20:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.01)

        task = asyncio.create_task(trickle())
        async with asyncio.timeout(10):
            assert await reader.read() == b""
        task.cancel()
        assert h.value("aisfusion_feed_idle_closed_total") == 1
        assert h.value("aisfusion_feed_lines_total") == 1  # the partial line, flushed at close
        writer.close()
    finally:
        await stop(h)


async def test_a_client_sending_lines_is_not_idle() -> None:
    h = await start(idle_timeout_s=0.5)
    try:
        _, writer = await h.connect()
        for _ in range(30):  # 1.5 s: three idle timeouts
            writer.write(GOOD)
            await writer.drain()
            await asyncio.sleep(0.05)
        await wait_until(lambda: len(h.messages) == 30)
        assert h.value("aisfusion_feed_connections") == 1
        assert h.value("aisfusion_feed_idle_closed_total") == 0
        writer.close()
        await writer.wait_closed()
    finally:
        await stop(h)


async def test_closing_the_server_closes_open_connections_and_flushes_them() -> None:
    h = await start()
    reader, writer = await h.connect()
    await sent_and_seen(h, writer, GOOD + GOOD.rstrip())  # the second line has no newline
    async with asyncio.timeout(10):
        await stop(h)
        assert await reader.read() == b""
    assert len(h.messages) == 2
    assert h.value("aisfusion_feed_connections") == 0
    writer.close()


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir() if p.name != "MANIFEST.md"))
async def test_every_recorded_file_over_tcp_matches_the_decoder(name: str) -> None:
    """Every file over a real socket gives what the decoder gives in-process, which
    tests/feeds/test_decoder.py checks against counts derived independently from each file."""
    data = (DATA / name).read_bytes()
    h = await start()
    try:
        await h.send_all(data, 65536)
    finally:
        await stop(h)
    d = FeedDecoder(SOURCE, max_line_bytes=1024, fragment_timeout_s=10.0)
    local = d.feed(data, 0.0) + d.flush(0.0)
    assert [_key(m) for m in h.messages] == [_key(m) for m in local]
    assert h.value("aisfusion_feed_lines_total") == d.lines
    for reason, n in d.rejects.items():
        assert rejected(h.metrics, reason) == n, reason
