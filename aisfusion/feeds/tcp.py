"""TCP feed listener: receivers (or aggregators) connect and stream NMEA lines.

An `asyncio.Protocol` rather than streams: ``data_received`` plus a split on ``\\n`` frames
about ten times more lines per second than ``StreamReader.readline`` (DESIGN.md, "Facts
measured"). Each connection has its own `FeedDecoder`; nothing a peer sends can close its
connection or touch another one. Connections are capped (``max_connections``) and closed when
idle (``idle_timeout_s``). Works on the default loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aisfusion.config import FeedConfig
from aisfusion.feeds.stream import Clock, FeedSource, Sink, StreamProtocol, wait_closed
from aisfusion.metrics import Metrics

logger = logging.getLogger(__name__)

#: `feed_rejected` reason for a connection closed because `max_connections` were open.
CONNECTION_REFUSED = "connection_refused"


class _ServerProtocol(StreamProtocol):
    def __init__(self, server: TcpServer) -> None:
        super().__init__(server.source, server.source.config.idle_timeout_s)
        self._server = server

    def accept(self) -> bool:
        server = self._server
        source = self.source
        if server.closing:
            return False
        if len(server.connections) >= source.config.max_connections:
            source.rejected(CONNECTION_REFUSED)
            logger.warning(
                "feed %s: refusing connection from %s: %d connections open (max_connections)",
                source.name,
                self.peer,
                len(server.connections),
            )
            return False
        server.connections.add(self)
        logger.info("feed %s: connection from %s", source.name, self.peer)
        return True

    def released(self) -> None:
        self._server.connections.discard(self)


class TcpServer:
    """A listening feed and its open connections.

    `close` stops listening *and* closes every open connection: `asyncio.Server.close` leaves
    them open, and from Python 3.12 on its `wait_closed` waits for them, so a receiver that
    never hangs up would hold a shutdown forever.
    """

    def __init__(self, source: FeedSource) -> None:
        self.source = source
        self.connections: set[_ServerProtocol] = set()
        self.closing = False
        self._server: asyncio.Server | None = None

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.source.config
        self._server = await loop.create_server(
            lambda: _ServerProtocol(self), config.host, config.port
        )
        logger.info(
            "feed %s: listening on %s",
            self.source.name,
            ", ".join(str(s.getsockname()) for s in self._server.sockets),
        )

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError(f"feed {self.source.name}: not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def close(self) -> None:
        """Stop accepting and close every connection (their last lines are still delivered)."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for protocol in list(self.connections):
            protocol.close()

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        """Wait until every connection is flushed and gone; aborts stragglers after `timeout_s`."""
        self.close()
        await wait_closed(list(self.connections), timeout_s)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout_s)
        self.source.close()


async def start_tcp_server(
    config: FeedConfig, sink: Sink, metrics: Metrics, *, clock: Clock = time.monotonic
) -> TcpServer:
    """Listen on ``config.host:config.port`` and stream every complete message to `sink`.

    `sink` is called on the event loop with one non-empty batch per chunk read and must not
    block. Messages carry ``config.source`` as their source.
    """
    source = FeedSource(config.source, config, sink, metrics, clock=clock)
    server = TcpServer(source)
    try:
        await server.listen()
    except BaseException:
        source.close()
        raise
    return server
