"""What every feed shares, whatever its transport: a named source, byte streams, TCP connections.

* `FeedSource`: one configured feed (the TCP server, a TCP client, a UDP port). It owns the
  sink, the per-source metric children and the time of the last message, which the
  ``aisfusion_feed_last_message_age_seconds`` gauge reads at scrape time.
* `FeedStream`: one byte stream of a source (a TCP connection, or one UDP sender): its
  `FeedDecoder`, and the counts it has already added to the metrics, so that each chunk adds
  only the difference (metrics are too slow to touch per line).
* `StreamProtocol`: one TCP connection, accepted or made, with an idle timer that closes it
  when no complete line arrived for ``idle_timeout_s``. A connection that sends bytes but never
  a newline is as idle as a silent one: it holds a slot and delivers nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from aisfusion.config import FeedConfig
from aisfusion.feeds.decoder import FeedDecoder
from aisfusion.messages import RawMessage
from aisfusion.metrics import Metrics

logger = logging.getLogger(__name__)

#: Receives each non-empty batch of complete messages, on the event loop; must not block.
Sink = Callable[[list[RawMessage]], None]
Clock = Callable[[], float]


class FeedSource:
    """One named feed: its sink, its metric children, when it last delivered a message."""

    def __init__(
        self,
        name: str,
        config: FeedConfig,
        sink: Sink,
        metrics: Metrics,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        #: `clock()` time of the last message; the start time until one arrives, so a feed
        #: that never delivers shows a growing age instead of no series at all.
        self.last_message = clock()
        self.m_connections = metrics.feed_connections.labels(name)
        self.m_bytes = metrics.feed_bytes.labels(name)
        self.m_lines = metrics.feed_lines.labels(name)
        self.m_messages = metrics.feed_messages.labels(name)
        self.m_reconnects = metrics.feed_reconnects.labels(name)
        self.m_idle_closed = metrics.feed_idle_closed.labels(name)
        self.m_framing = metrics.stage_seconds.labels("framing")
        metrics.feed_last_message_age.labels(name).set_function(self.last_message_age)

    def last_message_age(self) -> float:
        """Seconds since the last message (read by the metrics scrape, on any thread)."""
        return max(0.0, self.clock() - self.last_message)

    def rejected(self, reason: str, count: int = 1) -> None:
        self.metrics.feed_rejected.labels(self.name, reason).inc(count)

    def decoder(self) -> FeedDecoder:
        return FeedDecoder(
            self.name,
            max_line_bytes=self.config.max_line_bytes,
            fragment_timeout_s=self.config.fragment_timeout_s,
        )

    def close(self) -> None:
        """The feed is gone: stop exporting an age that would grow forever."""
        with contextlib.suppress(KeyError):
            self.metrics.feed_last_message_age.remove(self.name)


class FeedStream:
    """One byte stream of a source: bytes in, batches to the sink, counts to the metrics."""

    __slots__ = ("_lines", "_messages", "_rejects", "decoder", "last_active", "peer", "source")

    def __init__(self, source: FeedSource, peer: object) -> None:
        self.source = source
        self.peer = peer
        self.decoder = source.decoder()
        #: Owner-maintained activity time (UDP uses it to forget quiet senders).
        self.last_active = 0.0
        self._lines = 0
        self._messages = 0
        self._rejects: Counter[str] = Counter()

    def feed(self, data: bytes, nbytes: int = -1) -> int:
        """Frame a chunk (`nbytes` of it came from the peer); return how many lines it ended."""
        started = time.perf_counter()
        now = time.time()
        decoder = self.decoder
        try:
            messages = decoder.feed(data, now)
            decoder.expire(now)  # stops at the first young group: nearly free
        except Exception:
            # Unreachable by design (the decoder is property-tested against arbitrary bytes);
            # if a bug slips through, one lost chunk beats a lost connection.
            logger.exception(
                "feed %s: framing failed on a chunk from %s", self.source.name, self.peer
            )
            messages = []
        self.source.m_bytes.inc(len(data) if nbytes < 0 else nbytes)
        return self._deliver(messages, time.perf_counter() - started)

    def flush(self) -> None:
        """End of stream: the last unterminated line, open fragment groups as incomplete."""
        started = time.perf_counter()
        messages = self.decoder.flush(time.time())
        self._deliver(messages, time.perf_counter() - started)

    def _deliver(self, messages: list[RawMessage], framing_s: float) -> int:
        """Hand a batch to the sink and add this chunk's counts to the metrics.

        `framing_s` excludes the sink: handing batches on is the router's stage, not ours.
        """
        source = self.source
        if messages:
            source.last_message = source.clock()
            try:
                source.sink(messages)
            except Exception:
                logger.exception("feed %s: sink failed on %d messages", source.name, len(messages))
        decoder = self.decoder
        new_lines = decoder.lines - self._lines
        if new_lines:
            source.m_lines.inc(new_lines)
            self._lines = decoder.lines
        if decoder.messages != self._messages:
            source.m_messages.inc(decoder.messages - self._messages)
            self._messages = decoder.messages
        seen = self._rejects
        for reason, count in decoder.rejects.items():
            if count != seen[reason]:
                source.rejected(reason, count - seen[reason])
                seen[reason] = count
        source.m_framing.inc(framing_s)
        return new_lines


class StreamProtocol(asyncio.Protocol):
    """One TCP connection of a feed, with an idle timer (``idle_timeout_s`` 0 disables it).

    `closed` resolves once the connection is gone and its last line and open fragment groups
    have been flushed, so whoever closes it can wait until everything it sent was delivered.
    Subclasses may refuse a connection in `accept` and hear about its end in `released`.
    """

    def __init__(self, source: FeedSource, idle_timeout_s: float) -> None:
        self.source = source
        self.stream: FeedStream | None = None
        self.peer: object = None
        self._idle_s = idle_timeout_s
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        # Typed as the base class on purpose: uvloop's transports are not asyncio.Transport
        # subclasses, and close(), abort() and get_extra_info() are all this needs.
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_line = 0.0
        #: True when the idle timer closed the connection.
        self.idle_closed = False
        #: Complete lines received over this connection (0 once closed is still meaningful).
        self.lines = 0

    def accept(self) -> bool:
        """Whether to keep a new connection (`peer` is set); a refused one is closed."""
        return True

    def released(self) -> None:
        """An accepted connection has ended (after its stream was flushed)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.peer = transport.get_extra_info("peername")
        if not self.accept():
            transport.close()
            return
        self.stream = FeedStream(self.source, self.peer)
        self.source.m_connections.inc()
        if self._idle_s > 0:
            self._last_line = self._loop.time()
            self._timer = self._loop.call_at(self._last_line + self._idle_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream is None:
            return
        lines = stream.feed(data)
        if lines:
            self.lines += lines
            self._last_line = self._loop.time()

    def _check_idle(self) -> None:
        # One timer per connection, re-armed only when it fires: resetting a timer per chunk
        # would cost more than the chunk's framing.
        self._timer = None
        if self.stream is None or self._transport is None:
            return
        due = self._last_line + self._idle_s
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_idle)
            return
        self.idle_closed = True
        self.source.m_idle_closed.inc()
        logger.warning(
            "feed %s: no complete line from %s for %g s (idle_timeout_s): closing",
            self.source.name,
            self.peer,
            self._idle_s,
        )
        self._transport.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        """Close without waiting for anything (a close that did not complete in time)."""
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        stream, self.stream = self.stream, None
        if stream is not None:
            self.source.m_connections.dec()
            stream.flush()
            decoder = stream.decoder
            logger.info(
                "feed %s: connection with %s closed%s: %d lines, %d messages, rejects %s",
                self.source.name,
                self.peer,
                f" ({exc})" if exc else "",
                decoder.lines,
                decoder.messages,
                dict(decoder.rejects) or "none",
            )
            self.released()
        if not self.closed.done():
            self.closed.set_result(None)


async def wait_closed(protocols: list[StreamProtocol], timeout_s: float) -> None:
    """Wait for closed connections to finish; abort those still open after `timeout_s`."""
    pending = [p.closed for p in protocols if not p.closed.done()]
    if not pending:
        return
    _, late = await asyncio.wait(pending, timeout=timeout_s)
    if late:
        for p in protocols:
            if not p.closed.done():
                p.abort()
        await asyncio.wait(late, timeout=timeout_s)
