"""Replay delivers every line once, in order, paced or not, to a real TCP listener."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pyais
import pytest

from aisfusion import cli
from aisfusion.traffic.receivers import receivers
from aisfusion.traffic.replay import read_file_lines, send_lines, simulate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ais"


@dataclass
class Sink:
    port: int
    lines: list[str] = field(default_factory=list)
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    state = Sink(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        while line := await reader.readline():
            assert line.endswith(b"\r\n")
            state.lines.append(line[:-2].decode("latin-1"))
        writer.close()
        await writer.wait_closed()
        state.closed.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


async def test_full_speed_delivers_every_line_once_in_order(sink: Sink) -> None:
    lines = [f"line {i}" for i in range(50_000)]
    counts: list[int] = []
    sent = await send_lines(iter(lines), "127.0.0.1", sink.port, progress=counts.append)
    await asyncio.wait_for(sink.closed.wait(), 10)
    assert sent == 50_000
    assert sink.lines == lines
    assert sink.connections == 1
    assert counts[-1] == 50_000


async def test_rate_limited_delivers_in_order_and_is_paced(sink: Sink) -> None:
    lines = [f"!AIVDM,{i}" for i in range(300)]
    rate = 2000.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = await send_lines(lines, "127.0.0.1", sink.port, rate=rate)
    elapsed = loop.time() - started
    await asyncio.wait_for(sink.closed.wait(), 10)
    assert sent == 300
    assert sink.lines == lines
    # Pacing can only be late, never early: 300 lines at 2000/s need at least ~0.15 s.
    assert elapsed >= 0.9 * (len(lines) - 1) / rate


async def test_async_source_and_existing_line_endings(sink: Sink) -> None:
    async def source() -> AsyncIterator[str]:
        for i in range(2500):
            if i % 1000 == 0:
                await asyncio.sleep(0.01)
            yield f"a{i}\r\n" if i % 2 else f"a{i}"

    sent = await send_lines(source(), "127.0.0.1", sink.port, rate=50_000)
    await asyncio.wait_for(sink.closed.wait(), 10)
    assert sent == 2500
    assert sink.lines == [f"a{i}" for i in range(2500)]


async def test_a_failing_source_fails_the_send_and_closes(sink: Sink) -> None:
    async def source() -> AsyncIterator[str]:
        yield "first"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        await send_lines(source(), "127.0.0.1", sink.port)
    await asyncio.wait_for(sink.closed.wait(), 10)


async def test_connection_refused_is_raised(sink: Sink) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await send_lines(["x"], "127.0.0.1", port)


async def test_rejects_a_nonsense_rate(sink: Sink) -> None:
    async def source() -> AsyncIterator[str]:
        yield "x"

    with pytest.raises(ValueError):
        await send_lines(["x"], "127.0.0.1", sink.port, rate=0)
    with pytest.raises(ValueError):
        await send_lines(source(), "127.0.0.1", sink.port, rate=float("nan"))
    with pytest.raises(ValueError):
        await simulate(
            "127.0.0.1", sink.port, vessels=1, rate=-1, duration_s=1, seed=0, station=None
        )
    assert sink.connections == 0


def test_read_file_lines_on_recorded_data() -> None:
    path = DATA / "aisdb-20211101.nm4"
    expected = sum(1 for raw in path.read_bytes().split(b"\n") if raw.rstrip(b"\r"))
    lines = list(read_file_lines(path))
    assert len(lines) == expected == 997  # the count in the corpus MANIFEST
    assert lines[0].startswith("\\s:42809,c:1635731889")


def test_read_file_lines_strips_endings_and_blanks(tmp_path: Path) -> None:
    path = tmp_path / "x.nmea"
    path.write_bytes(b"!A,1\r\n\r\n!B,\xe92\n\n!C,3")
    assert list(read_file_lines(path)) == ["!A,1", "!B,\xe92", "!C,3"]


async def test_simulate_streams_valid_current_sentences(sink: Sink) -> None:
    before = time.time()
    counts: list[int] = []
    sent = await simulate(
        "127.0.0.1",
        sink.port,
        vessels=300,
        rate=None,
        duration_s=1.5,
        seed=3,
        station="sim",
        progress=counts.append,
    )
    await asyncio.wait_for(sink.closed.wait(), 10)
    after = time.time()
    assert sent == len(sink.lines) == counts[-1] > 0
    fragments: list[str] = []
    for line in sink.lines:
        tag, _, sentence = line[1:].partition("\\")
        fields = dict(part.split(":") for part in tag.split("*")[0].split(","))
        assert fields["s"] == "sim"
        assert int(before) <= int(fields["c"]) <= after
        fragments.append(sentence)
        if sentence.split(",")[1] == sentence.split(",")[2]:  # last fragment
            pyais.decode(*fragments, error_if_checksum_invalid=True)
            fragments = []
    assert fragments == []


async def test_simulate_caps_the_rate(sink: Sink) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = await simulate(
        "127.0.0.1", sink.port, vessels=500, rate=100, duration_s=0.5, seed=4, station=None
    )
    elapsed = loop.time() - started
    await asyncio.wait_for(sink.closed.wait(), 10)
    assert sent == len(sink.lines) > 0
    assert sent <= 100 * elapsed + 2


async def test_simulate_with_receivers_writes_the_truth(sink: Sink, tmp_path: Path) -> None:
    truth = tmp_path / "truth.csv"
    rx = receivers(2, fault="offset", delay_s=0.0, duplicates=0.0, prefix="rx")
    sent = await simulate(
        "127.0.0.1",
        sink.port,
        vessels=200,
        rate=None,
        duration_s=1.5,
        seed=3,
        station="ignored",
        receivers=rx,
        truth=truth,
    )
    await asyncio.wait_for(sink.closed.wait(), 10)
    assert sent == len(sink.lines) > 0
    stations = {line[1:].partition("\\")[0].split(",")[0] for line in sink.lines}
    assert stations == {"s:rx-1", "s:rx-2", "s:rx-bad"}
    rows = truth.read_text().splitlines()
    assert rows[0] == "t,mmsi,lat,lon,sog,cog"
    assert len(rows) > 1


def test_cli_simulate_passes_the_receiver_flags(tmp_path: Path) -> None:
    lines: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as f:
            lines.extend(f)

    thread = threading.Thread(target=accept)
    thread.start()
    truth = tmp_path / "t.csv"
    port = server.getsockname()[1]
    argv = ["simulate", "--to", f"127.0.0.1:{port}", "--vessels", "100", "--duration", "1"]
    argv += ["--receivers", "3", "--fault", "clock", "--loss", "0", "--delay", "0"]
    argv += ["--station", "cli", "--truth", str(truth)]
    try:
        assert cli.main(argv) == 0
    finally:
        thread.join(10)
        server.close()
    stations = {line[1:].partition(b"\\")[0].split(b",")[0] for line in lines}
    assert stations == {b"s:cli-1", b"s:cli-2", b"s:cli-3", b"s:cli-bad"}
    assert truth.read_text().startswith("t,mmsi,lat,lon")
