"""TCP feed listener: receivers (or aggregators) connect and stream NMEA lines.

An `asyncio.Protocol` rather than streams: ``data_received`` plus a split on ``\\n`` frames
about ten times more lines per second than ``StreamReader.readline`` (DESIGN.md, "Facts
measured"). Each connection has its own `FeedDecoder`; nothing a peer sends can close its
connection or touch another one. Works on the default loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from aisfusion.config import FeedConfig
from aisfusion.feeds.decoder import FeedDecoder
from aisfusion.messages import RawMessage
from aisfusion.metrics import Metrics

logger = logging.getLogger(__name__)

Sink = Callable[[list[RawMessage]], None]

#: `feed_rejected` reason for a connection closed because `max_connections` were open.
CONNECTION_REFUSED = "connection_refused"


class _Listener:
    """What the connections of one server share: config, sink, metrics and the live count."""

    def __init__(self, config: FeedConfig, sink: Sink, metrics: Metrics) -> None:
        self.config = config
        self.sink = sink
        self.metrics = metrics
        self.open = 0
        source = config.source
        self.m_connections = metrics.feed_connections.labels(source)
        self.m_bytes = metrics.feed_bytes.labels(source)
        self.m_lines = metrics.feed_lines.labels(source)
        self.m_messages = metrics.feed_messages.labels(source)
        self.m_framing = metrics.stage_seconds.labels("framing")


class _FeedProtocol(asyncio.Protocol):
    """One connection: bytes to its decoder, batches to the sink, counts to metrics."""

    def __init__(self, listener: _Listener) -> None:
        self._listener = listener
        config = listener.config
        self._decoder = FeedDecoder(
            config.source,
            max_line_bytes=config.max_line_bytes,
            fragment_timeout_s=config.fragment_timeout_s,
        )
        self._peer: object = None
        self._accepted = False
        # Counts already added to the metrics, to add only the difference per chunk.
        self._lines = 0
        self._messages = 0
        self._rejects: Counter[str] = Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Typed as the base class on purpose: uvloop's transports are not asyncio.Transport
        # subclasses, and close() and get_extra_info() are all this needs.
        listener = self._listener
        self._peer = transport.get_extra_info("peername")
        source = listener.config.source
        if listener.open >= listener.config.max_connections:
            listener.metrics.feed_rejected.labels(source, CONNECTION_REFUSED).inc()
            logger.warning(
                "feed %s: refusing connection from %s: %d connections open (max_connections)",
                source,
                self._peer,
                listener.open,
            )
            transport.close()
            return
        self._accepted = True
        listener.open += 1
        listener.m_connections.inc()
        logger.info("feed %s: connection from %s", source, self._peer)

    def data_received(self, data: bytes) -> None:
        if not self._accepted:
            return
        listener = self._listener
        started = time.perf_counter()
        now = time.time()
        try:
            messages = self._decoder.feed(data, now)
            self._decoder.expire(now)  # stops at the first young group: nearly free
        except Exception:
            # Unreachable by design (the decoder is property-tested against arbitrary bytes);
            # if a bug slips through, one lost chunk beats a lost connection.
            logger.exception(
                "feed %s: framing failed on a chunk from %s", listener.config.source, self._peer
            )
            messages = []
        listener.m_bytes.inc(len(data))
        self._deliver(messages, time.perf_counter() - started)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._accepted:
            return
        self._accepted = False
        listener = self._listener
        listener.open -= 1
        listener.m_connections.dec()
        started = time.perf_counter()
        messages = self._decoder.flush(time.time())
        self._deliver(messages, time.perf_counter() - started)
        decoder = self._decoder
        logger.info(
            "feed %s: connection from %s closed%s: %d lines, %d messages, rejects %s",
            listener.config.source,
            self._peer,
            f" ({exc})" if exc else "",
            decoder.lines,
            decoder.messages,
            dict(decoder.rejects) or "none",
        )

    def _deliver(self, messages: list[RawMessage], framing_s: float) -> None:
        """Hand a batch to the sink and add this chunk's counts to the metrics.

        `framing_s` excludes the sink: handing batches on is the router's stage, not ours.
        """
        listener = self._listener
        if messages:
            try:
                listener.sink(messages)
            except Exception:
                logger.exception(
                    "feed %s: sink failed on %d messages", listener.config.source, len(messages)
                )
        decoder = self._decoder
        if decoder.lines != self._lines:
            listener.m_lines.inc(decoder.lines - self._lines)
            self._lines = decoder.lines
        if decoder.messages != self._messages:
            listener.m_messages.inc(decoder.messages - self._messages)
            self._messages = decoder.messages
        seen = self._rejects
        for reason, count in decoder.rejects.items():
            if count != seen[reason]:
                listener.metrics.feed_rejected.labels(listener.config.source, reason).inc(
                    count - seen[reason]
                )
                seen[reason] = count
        listener.m_framing.inc(framing_s)


async def start_tcp_server(config: FeedConfig, sink: Sink, metrics: Metrics) -> asyncio.Server:
    """Listen on ``config.host:config.port`` and stream every complete message to `sink`.

    `sink` is called on the event loop with one non-empty batch per chunk read and must not
    block. Closing the returned server stops new connections; on Python 3.11 open ones stay
    until their peers leave (``Server.close_clients`` arrived in 3.13).
    """
    listener = _Listener(config, sink, metrics)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _FeedProtocol(listener), config.host, config.port)
    logger.info(
        "feed %s: listening on %s",
        config.source,
        ", ".join(str(s.getsockname()) for s in server.sockets),
    )
    return server
