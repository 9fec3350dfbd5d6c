"""The TCP client feed against local servers that drop, stall and refuse connections.

Waits between reconnects go through an injected `sleep` that records them, so backoff is
checked exactly without sleeping; only the idle watchdog runs on the real clock, with a
fraction of a second as its timeout.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from aisfusion.config import FeedConfig, TcpClientFeedConfig
from aisfusion.feeds.client import TcpClientFeed, backoff_delay
from aisfusion.feeds.stream import FeedSource
from aisfusion.messages import RawMessage
from aisfusion.metrics import Metrics
from tests.feeds.test_tcp import GOOD, wait_until

NAME = "upstream"
Handler = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A feed host on a loopback port; `handler(n, …)` scripts its n-th connection (from 1)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.finished = 0  # handlers that returned (the client hung up, or the script ended)
        self.release = asyncio.Event()  # ends stalled handlers
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            await self.handler(self.accepted, reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.finished += 1

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def stall(upstream: Upstream, reader: asyncio.StreamReader) -> None:
    """Send nothing more; return when the client hangs up or the test ends."""
    read = asyncio.ensure_future(reader.read())
    released = asyncio.ensure_future(upstream.release.wait())
    await asyncio.wait([read, released], return_when=asyncio.FIRST_COMPLETED)
    read.cancel()
    released.cancel()


class Client:
    """A `TcpClientFeed`, its metrics, its messages and the delays it asked to wait."""

    def __init__(
        self, port: int, *, sleep_forever_after: int | None = None, **settings: float
    ) -> None:
        self.metrics = Metrics()
        self.messages: list[RawMessage] = []
        self.delays: list[float] = []
        self._stop_sleeping_after = sleep_forever_after
        config = TcpClientFeedConfig(
            name=NAME,
            host="127.0.0.1",
            port=port,
            **({"reconnect_min_s": 0.01, "reconnect_max_s": 0.05} | settings),
        )
        source = FeedSource(NAME, FeedConfig(), self.messages.extend, self.metrics)
        self.feed = TcpClientFeed(config, source, rng=random.Random(3), sleep=self._sleep)

    async def _sleep(self, delay: float) -> None:
        self.delays.append(delay)
        if self._stop_sleeping_after is not None and len(self.delays) >= self._stop_sleeping_after:
            await asyncio.Event().wait()  # until stop() cancels it
        await asyncio.sleep(0)

    def value(self, name: str) -> float:
        v = self.metrics.registry.get_sample_value(name, {"source": NAME})
        return 0.0 if v is None else v


async def stop_all(things: list[Upstream | Client]) -> None:
    async with asyncio.timeout(10):
        for thing in things:
            if isinstance(thing, Client):
                await thing.feed.stop()
            else:
                await thing.stop()


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Upstream | Client]]:
    things: list[Upstream | Client] = []
    yield things
    await stop_all(things)


@given(
    failures=st.integers(1, 500),
    min_s=st.floats(0.001, 10.0),
    factor=st.floats(1.0, 1000.0),
    seed=st.integers(0, 2**32),
)
def test_backoff_doubles_is_capped_and_jittered_down_to_half(
    failures: int, min_s: float, factor: float, seed: int
) -> None:
    max_s = min_s * factor
    base = min(max_s, min_s * 2.0 ** (failures - 1)) if failures < 64 else max_s
    delay = backoff_delay(failures, min_s, max_s, random.Random(seed))
    assert base / 2 <= delay <= base
    assert delay <= max_s


async def test_reconnects_after_a_drop_and_after_a_stall(cleanup: list[Upstream | Client]) -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GOOD)
        await writer.drain()
        if n == 1:
            return  # drop the connection
        await stall(upstream, reader)  # 2: stall until the watchdog gives up; 3: hold

    upstream = Upstream(script)
    cleanup.append(upstream)
    client = Client(await upstream.start(), idle_timeout_s=0.3)
    cleanup.append(client)
    client.feed.start()
    await wait_until(lambda: len(client.messages) == 3)
    assert upstream.accepted == 3
    assert upstream.finished == 2  # the stalled connection was closed by the client
    assert client.value("aisfusion_feed_reconnects_total") == 2
    assert client.value("aisfusion_feed_idle_closed_total") == 1
    assert client.value("aisfusion_feed_connections") == 1
    assert client.feed.connected
    assert {(m.source, m.station) for m in client.messages} == {(NAME, None)}
    assert all(d <= 0.05 for d in client.delays)

    async with asyncio.timeout(10):
        await client.feed.stop()
    assert client.value("aisfusion_feed_connections") == 0
    assert not client.feed.connected
    await wait_until(lambda: upstream.finished == 3)


async def test_backoff_grows_while_the_host_refuses(cleanup: list[Upstream | Client]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(port, sleep_forever_after=8, reconnect_min_s=1.0, reconnect_max_s=8.0)
    cleanup.append(client)
    client.feed.start()
    await wait_until(lambda: len(client.delays) == 8)
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(b / 2 <= d <= b for d, b in zip(client.delays, bases, strict=True))
    assert client.value("aisfusion_feed_reconnects_total") == 7
    assert client.value("aisfusion_feed_connections") == 0
    async with asyncio.timeout(10):
        await client.feed.stop()  # cancels the wait


async def test_backoff_starts_over_once_a_connection_delivered_a_line(
    cleanup: list[Upstream | Client],
) -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if n in (3, 6):
            writer.write(GOOD)
            await writer.drain()
        # every connection is dropped; only the 3rd and 6th sent a line before

    upstream = Upstream(script)
    cleanup.append(upstream)
    client = Client(
        await upstream.start(), sleep_forever_after=6, reconnect_min_s=1.0, reconnect_max_s=60.0
    )
    cleanup.append(client)
    client.feed.start()
    await wait_until(lambda: len(client.delays) == 6)
    bases = [1, 2, 1, 2, 4, 1]
    assert all(b / 2 <= d <= b for d, b in zip(client.delays, bases, strict=True))
    assert len(client.messages) == 2


async def test_stop_delivers_the_last_unterminated_line(cleanup: list[Upstream | Client]) -> None:
    async def script(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GOOD + GOOD.rstrip())
        await writer.drain()
        await stall(upstream, reader)

    upstream = Upstream(script)
    cleanup.append(upstream)
    client = Client(await upstream.start(), idle_timeout_s=30.0)
    cleanup.append(client)
    client.feed.start()
    await wait_until(lambda: client.value("aisfusion_feed_bytes_total") == 2 * len(GOOD) - 2)
    assert len(client.messages) == 1
    async with asyncio.timeout(10):
        await client.feed.stop()
    assert len(client.messages) == 2
    await client.feed.stop()  # idempotent


def test_on_uvloop() -> None:
    async def scenario() -> None:
        things: list[Upstream | Client] = []
        try:
            await test_reconnects_after_a_drop_and_after_a_stall(things)
            await test_stop_delivers_the_last_unterminated_line(things)
        finally:
            await stop_all(things)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        # A bound of our own: pytest-timeout's SIGALRM cannot interrupt a stuck uvloop.
        runner.run(asyncio.wait_for(scenario(), 30))
