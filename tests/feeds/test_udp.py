"""The UDP listener over real loopback sockets: several lines per datagram, per-sender state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pyais
import pytest
import uvloop

from aisfusion.config import FeedConfig, UdpFeedConfig
from aisfusion.feeds.stream import FeedSource
from aisfusion.feeds.udp import UdpFeed, start_udp
from aisfusion.messages import RawMessage
from aisfusion.metrics import Metrics
from tests.feeds.test_tcp import GOOD, _sentence, wait_until

NAME = "udp-test"
EAST = [
    _sentence("AIVDM,2,1,3,A,55?MbV02;H;s<HtKR20EHE:0@T4@Dn2222222216L961O5Gf0NSQEp6ClRp8,0"),
    _sentence("AIVDM,2,2,3,A,88888888880,2"),
]
WEST = [
    _sentence("AIVDM,2,1,3,A,53KPtl01pv8`tTtR22050thhtr2222222222220l1`A916Vh0;20DPSmD`0D,0"),
    _sentence("AIVDM,2,2,3,A,ljDm0CPiH80,2"),
]


class Listener:
    def __init__(self, udp: UdpFeed, metrics: Metrics, messages: list[RawMessage]) -> None:
        self.udp = udp
        self.metrics = metrics
        self.messages = messages
        self.senders: list[asyncio.DatagramTransport] = []

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, {"source": NAME, **labels})
        return 0.0 if v is None else v

    async def sender(self) -> asyncio.DatagramTransport:
        """A socket of its own: another sender address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", self.udp.port)
        )
        self.senders.append(transport)
        return transport

    async def send(self, sender: asyncio.DatagramTransport, datagram: bytes) -> None:
        """Send one datagram and wait until the listener has read it."""
        before = self.value("aisfusion_feed_bytes_total")
        sender.sendto(datagram)
        await wait_until(lambda: self.value("aisfusion_feed_bytes_total") >= before + len(datagram))

    async def close(self) -> None:
        for s in self.senders:
            s.close()
        await self.udp.wait_closed()


async def listen(*, max_peers: int = 1024, fragment_timeout_s: float = 10.0) -> Listener:
    metrics = Metrics()
    messages: list[RawMessage] = []
    feed = FeedConfig(fragment_timeout_s=fragment_timeout_s)
    config = UdpFeedConfig(name=NAME, host="127.0.0.1", port=0, max_peers=max_peers)
    udp = await start_udp(config, FeedSource(NAME, feed, messages.extend, metrics))
    return Listener(udp, metrics, messages)


@pytest.fixture
async def udp() -> AsyncIterator[Listener]:
    listener = await listen()
    yield listener
    await listener.close()


async def test_datagrams_with_several_lines_and_without_a_newline(udp: Listener) -> None:
    a = await udp.sender()
    await udp.send(a, GOOD + b"\x00garbage\r\n" + GOOD)
    await udp.send(a, GOOD.rstrip())  # one sentence, no line terminator
    await udp.send(a, EAST[0])  # a message split over two datagrams
    await udp.send(a, EAST[1].rstrip())
    await wait_until(lambda: len(udp.messages) == 4)
    assert udp.messages[-1].mmsi == pyais.decode(*EAST).mmsi
    assert {(m.source, m.station) for m in udp.messages} == {(NAME, None)}
    assert udp.value("aisfusion_feed_lines_total") == 6
    assert udp.value("aisfusion_feed_messages_total") == 4
    assert udp.value("aisfusion_feed_rejected_total", reason="garbage") == 1
    assert udp.value("aisfusion_feed_connections") == 1  # one sender
    sent = 2 * len(GOOD) + 10 + len(GOOD) - 2 + len(EAST[0]) + len(EAST[1]) - 1
    assert udp.value("aisfusion_feed_bytes_total") == sent


async def test_two_senders_interleave_fragments_with_the_same_sequence_id(udp: Listener) -> None:
    east, west = await udp.sender(), await udp.sender()
    await udp.send(east, EAST[0])
    await udp.send(west, WEST[0])
    await udp.send(east, EAST[1])
    await udp.send(west, WEST[1])
    await wait_until(lambda: len(udp.messages) == 2)
    assert [m.mmsi for m in udp.messages] == [pyais.decode(*EAST).mmsi, pyais.decode(*WEST).mmsi]
    assert udp.value("aisfusion_feed_rejected_total", reason="orphan_fragment") == 0
    assert udp.value("aisfusion_feed_connections") == 2


async def test_tag_blocks_give_station_and_time(udp: Listener) -> None:
    tag = b"s:rx-east,c:1700000000123"
    cs = 0
    for byte in tag:
        cs ^= byte
    a = await udp.sender()
    await udp.send(a, b"\\%s*%02X\\" % (tag, cs) + GOOD)
    await wait_until(lambda: len(udp.messages) == 1)
    m = udp.messages[0]
    assert (m.source, m.station, m.received_at, m.has_tag_time) == (
        NAME,
        "rx-east",
        1700000000.123,
        True,
    )


async def test_senders_beyond_max_peers_push_out_the_least_recent() -> None:
    udp = await listen(max_peers=2)
    try:
        a, b, c = await udp.sender(), await udp.sender(), await udp.sender()
        await udp.send(a, EAST[0])  # a's group is open...
        await udp.send(b, GOOD)
        await udp.send(c, GOOD)  # ...and a is forgotten: its group counts as incomplete
        assert udp.value("aisfusion_feed_rejected_total", reason="incomplete_group") == 1
        assert udp.value("aisfusion_feed_connections") == 2
        await udp.send(a, EAST[1])  # a new sender again, whose continuation fits nothing
        assert udp.value("aisfusion_feed_rejected_total", reason="orphan_fragment") == 1
        assert len(udp.messages) == 2
    finally:
        await udp.close()


async def test_quiet_senders_are_forgotten_after_the_fragment_timeout() -> None:
    udp = await listen(fragment_timeout_s=0.05)
    try:
        a = await udp.sender()
        await udp.send(a, EAST[0])
        await wait_until(lambda: udp.value("aisfusion_feed_connections") == 0)
        assert udp.value("aisfusion_feed_rejected_total", reason="incomplete_group") == 1
        assert udp.udp.peers == 0
    finally:
        await udp.close()


async def test_close_counts_open_groups() -> None:
    udp = await listen()
    a = await udp.sender()
    await udp.send(a, EAST[0])
    await udp.close()
    assert udp.value("aisfusion_feed_rejected_total", reason="incomplete_group") == 1
    assert udp.value("aisfusion_feed_connections") == 0


def test_on_uvloop() -> None:
    async def scenario() -> None:
        for test in (
            test_datagrams_with_several_lines_and_without_a_newline,
            test_two_senders_interleave_fragments_with_the_same_sequence_id,
        ):
            udp = await listen()
            try:
                await test(udp)
            finally:
                await udp.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))
