"""TCP client feed: aisfusion connects out to a feed host (an aggregator, a receiver's server).

One task per feed keeps one connection open for as long as the service runs:

* a failed connection attempt, a dropped connection and an idle one all lead to a new attempt
  after an exponential backoff (``reconnect_min_s`` doubling up to ``reconnect_max_s``), with
  jitter so that many instances do not hammer a recovering host in step. The backoff starts
  over once a connection has delivered at least one complete line: a host that accepts and
  hangs up at once is retried at the slow pace, not in a tight loop;
* an idle-read watchdog closes a connection that brought no complete line for
  ``idle_timeout_s``: sockets that look connected but carry nothing (a NAT that forgot the
  flow, a stalled upstream) are the most common way a feed dies silently.

Every attempt after the first counts in ``aisfusion_feed_reconnects_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from aisfusion.config import TcpClientFeedConfig
from aisfusion.feeds.stream import FeedSource, StreamProtocol, wait_closed

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

#: How long stop waits for a closed connection to be flushed before aborting it.
_CLOSE_TIMEOUT_S = 5.0


def backoff_delay(failures: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before the next attempt after `failures` (>= 1) failures in a row.

    ``min_s * 2**(failures - 1)`` capped at `max_s`, then scaled by a random factor in
    [0.5, 1): spread out, but never close to zero (which would defeat the backoff).
    """
    base = min(max_s, min_s * 2.0 ** min(failures - 1, 64))
    return base * (0.5 + 0.5 * rng.random())


class TcpClientFeed:
    """Keeps one outgoing connection to ``config.host:config.port``; `start`, then `stop`."""

    def __init__(
        self,
        config: TcpClientFeedConfig,
        source: FeedSource,
        *,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.source = source
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._protocol: StreamProtocol | None = None
        #: Connections made so far (successful attempts).
        self.connections = 0

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.stream is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"feed-client-{self.config.name}")
            self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Close the connection (its last lines are delivered) and stop reconnecting."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.source.close()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("feed %s: client task failed", self.config.name, exc_info=task.exception())

    async def _connect(self, protocol: StreamProtocol) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(cfg.connect_timeout_s):
            await loop.create_connection(lambda: protocol, cfg.host, cfg.port)

    async def _run(self) -> None:
        cfg = self.config
        name = cfg.name
        failures = 0
        attempts = 0
        while True:
            if attempts:
                self.source.m_reconnects.inc()
            attempts += 1
            protocol = StreamProtocol(self.source, cfg.idle_timeout_s)
            try:
                await self._connect(protocol)
            except Exception as exc:  # refused, unreachable, DNS, timeout...: all retried
                failures += 1
                delay = backoff_delay(failures, cfg.reconnect_min_s, cfg.reconnect_max_s, self._rng)
                logger.warning(
                    "feed %s: cannot connect to %s:%d (%s); retrying in %.1f s",
                    name,
                    cfg.host,
                    cfg.port,
                    exc.__class__.__name__ if isinstance(exc, TimeoutError) else exc,
                    delay,
                )
                await self._sleep(delay)
                continue
            self.connections += 1
            self._protocol = protocol
            logger.info("feed %s: connected to %s:%d", name, cfg.host, cfg.port)
            try:
                # Shielded: cancelling the task must not cancel the future connection_lost sets.
                await asyncio.shield(protocol.closed)
            except asyncio.CancelledError:
                protocol.close()
                await wait_closed([protocol], _CLOSE_TIMEOUT_S)
                raise
            finally:
                self._protocol = None
            failures = 1 if protocol.lines else failures + 1
            delay = backoff_delay(failures, cfg.reconnect_min_s, cfg.reconnect_max_s, self._rng)
            logger.warning(
                "feed %s: connection to %s:%d %s; reconnecting in %.1f s",
                name,
                cfg.host,
                cfg.port,
                "idle, closed by the watchdog" if protocol.idle_closed else "lost",
                delay,
            )
            await self._sleep(delay)
