"""UDP feed listener: receivers send datagrams of one or more NMEA lines.

Framing state (the open fragment groups, a tag block on its own line) is kept per sender
address, so two receivers sending to one port never mix their fragments. A datagram is a
whole number of lines: one that does not end in a newline gets one (most receivers send one
sentence per datagram, many without a line terminator), so nothing waits for a next datagram
that may never come.

Senders are bounded (``max_peers``, the least recently heard dropped first) and forgotten
after ``fragment_timeout_s`` of silence, when their framing state can hold nothing useful;
dropping a sender counts its open fragment groups as incomplete. The sender count is the
source's ``aisfusion_feed_connections``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from aisfusion.config import UdpFeedConfig
from aisfusion.feeds.stream import FeedSource, FeedStream

logger = logging.getLogger(__name__)


class UdpFeed(asyncio.DatagramProtocol):
    """One UDP port of a feed. Use `start_udp`, then `close` and `wait_closed`."""

    def __init__(self, config: UdpFeedConfig, source: FeedSource) -> None:
        self.config = config
        self.source = source
        self._loop = asyncio.get_running_loop()
        self._peers: OrderedDict[object, FeedStream] = OrderedDict()
        self._transport: asyncio.BaseTransport | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    @property
    def port(self) -> int:
        if self._transport is None:
            raise RuntimeError(f"feed {self.source.name}: not listening")
        port: int = self._transport.get_extra_info("sockname")[1]
        return port

    @property
    def peers(self) -> int:
        """Senders with framing state."""
        return len(self._peers)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._sweeper = self._loop.call_later(self.source.config.fragment_timeout_s, self._sweep)

    def datagram_received(self, data: bytes, addr: object) -> None:
        peers = self._peers
        stream = peers.get(addr)
        if stream is None:
            stream = self._add(addr)
        else:
            peers.move_to_end(addr)
        stream.last_active = self._loop.time()
        if data[-1:] == b"\n":
            stream.feed(data)
        else:
            stream.feed(data + b"\n", len(data))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from an earlier send; this socket never sends, so nothing to do.
        logger.debug("feed %s: %s", self.source.name, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._peers:
            self._drop(next(iter(self._peers)))
        logger.info("feed %s: UDP listener closed", self.source.name)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        self.close()
        if self._transport is not None:
            await asyncio.wait([self.closed], timeout=timeout_s)
        self.source.close()

    def _add(self, addr: object) -> FeedStream:
        peers = self._peers
        # At the bound, new senders come and go all the time: log them at debug level only.
        level = logging.INFO
        if len(peers) >= self.config.max_peers:
            level = logging.DEBUG
            oldest = next(iter(peers))
            logger.debug("feed %s: max_peers reached: forgetting %s", self.source.name, oldest)
            self._drop(oldest)
        stream = peers[addr] = FeedStream(self.source, addr)
        self.source.m_connections.set(len(peers))
        logger.log(level, "feed %s: datagrams from %s", self.source.name, addr)
        return stream

    def _drop(self, addr: object) -> None:
        self._peers.pop(addr).flush()
        self.source.m_connections.set(len(self._peers))

    def _sweep(self) -> None:
        """Forget senders quiet for longer than the fragment timeout (oldest first)."""
        timeout = self.source.config.fragment_timeout_s
        deadline = self._loop.time() - timeout
        peers = self._peers
        while peers:
            addr, stream = next(iter(peers.items()))
            if stream.last_active > deadline:
                break
            self._drop(addr)
        self._sweeper = self._loop.call_later(timeout, self._sweep)


async def start_udp(config: UdpFeedConfig, source: FeedSource) -> UdpFeed:
    """Listen for datagrams on ``config.host:config.port``."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: UdpFeed(config, source), local_addr=(config.host, config.port)
    )
    logger.info("feed %s: listening for UDP on %s:%d", source.name, config.host, protocol.port)
    return protocol
