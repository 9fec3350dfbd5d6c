"""Storage writer actors: the Postgres history writer and the Redis live-state writer.

Each owns one store and reaches it through the `AsyncBridge`, blocking only its own thread.
A failed write never loses data: the batch (or the conflated live state) stays pending and is
retried on the next `Tick`, with exponential backoff, until the store takes it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka

from aisfusion.errors import StorageError
from aisfusion.messages import Decisions, Flush, HistoryBatch, Position, Tick
from aisfusion.metrics import Metrics
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore

log = logging.getLogger(__name__)

_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 10.0


class _Backoff:
    """When the next retry is due after consecutive failures."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.failures = 0
        self._due = 0.0

    def due(self) -> bool:
        return self._clock() >= self._due

    def failed(self) -> None:
        self.failures += 1
        delay = min(_BACKOFF_MAX_S, _BACKOFF_MIN_S * 2 ** (self.failures - 1))
        self._due = self._clock() + delay

    def succeeded(self) -> None:
        self.failures = 0
        self._due = 0.0


class PostgresWriterActor(pykka.ThreadingActor):
    def __init__(
        self,
        store: PostgresStore,
        bridge: AsyncBridge,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._store = store
        self._bridge = bridge
        self._metrics = metrics
        self._pending: deque[HistoryBatch] = deque()
        self._backoff = _Backoff(clock)
        self.rows_written = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case HistoryBatch():
                self._pending.append(message)
                if self._backoff.due():
                    self._drain()
                return None
            case Tick():
                if self._pending and self._backoff.due():
                    self._drain()
                return None
            case Flush():
                self._drain()
                return len(self._pending)
            case _:
                raise TypeError(f"postgres writer: unexpected message {message!r}")

    def _drain(self) -> None:
        m = self._metrics
        while self._pending:
            batch = self._pending[0]
            started = time.perf_counter()
            try:
                inserted = self._bridge.run(self._store.write(batch))
            except StorageError as exc:
                self._backoff.failed()
                m.batch_flushes.labels("postgres", "error").inc()
                log.warning(
                    "postgres writer: batch %d (%d rows) failed, %d pending, retrying: %s",
                    batch.batch_id,
                    len(batch.positions),
                    len(self._pending),
                    exc,
                )
                return
            elapsed = time.perf_counter() - started
            self._pending.popleft()
            self._backoff.succeeded()
            self.rows_written += inserted
            m.batch_flushes.labels("postgres", "ok").inc()
            m.batch_rows.labels("postgres").inc(inserted)
            m.batch_duration.labels("postgres").observe(elapsed)
            m.stage_seconds.labels("postgres").inc(elapsed)


class LiveWriterActor(pykka.ThreadingActor):
    """Conflates positions per vessel and writes the latest of each every flush interval."""

    def __init__(
        self,
        store: RedisStore,
        bridge: AsyncBridge,
        metrics: Metrics,
        flush_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._store = store
        self._bridge = bridge
        self._metrics = metrics
        self._interval = flush_interval_s
        self._clock = clock
        self._latest: dict[int, Position] = {}
        self._last_flush = clock()
        self._backoff = _Backoff(clock)

    def on_receive(self, message: Any) -> Any:
        match message:
            case Decisions(positions=positions):
                latest = self._latest
                for p in positions:
                    old = latest.get(p.mmsi)
                    if old is None or p.ts > old.ts:
                        latest[p.mmsi] = p
                return None
            case Tick():
                now = self._clock()
                if (
                    self._latest
                    and now - self._last_flush >= self._interval
                    and self._backoff.due()
                ):
                    self._write()
                return None
            case Flush():
                self._write()
                return len(self._latest)
            case _:
                raise TypeError(f"live writer: unexpected message {message!r}")

    def _write(self) -> None:
        self._last_flush = self._clock()
        if not self._latest:
            return
        batch = list(self._latest.values())
        started = time.perf_counter()
        try:
            self._bridge.run(self._store.write_live(batch))
        except StorageError as exc:
            # The conflated state stays: a retry writes each vessel's latest position once.
            self._backoff.failed()
            self._metrics.batch_flushes.labels("redis", "error").inc()
            log.warning("live writer: %d records failed, retrying: %s", len(batch), exc)
            return
        elapsed = time.perf_counter() - started
        self._backoff.succeeded()
        # Positions that arrived meanwhile are newer; keep only those not written now.
        for p in batch:
            if self._latest.get(p.mmsi) is p:
                del self._latest[p.mmsi]
        m = self._metrics
        m.batch_flushes.labels("redis", "ok").inc()
        m.batch_rows.labels("redis").inc(len(batch))
        m.batch_duration.labels("redis").observe(elapsed)
        m.stage_seconds.labels("redis").inc(elapsed)
