"""Storage writer actors, supervised children of the storage supervisor.

Each owns one store and reaches it through the `AsyncBridge`, blocking only its own thread,
with a timeout so a stalled database cannot hold it forever.

- The Postgres writer writes the batches its supervisor hands it and reports each outcome back
  (`BatchWritten` / `BatchFailed`); keeping, retrying and diverting batches is the
  supervisor's job. Rows the database rejects permanently are isolated row by row.
- The live writer conflates positions per vessel and writes the latest of each every flush
  interval; while Redis is down the conflated state waits (bounded by the number of vessels).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pykka

from aisfusion.errors import PermanentStorageError, StorageError, TransientStorageError
from aisfusion.messages import (
    BatchFailed,
    BatchWritten,
    Decisions,
    Flush,
    Position,
    Tick,
    WriteBatch,
)
from aisfusion.metrics import Metrics
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore
from aisfusion.supervisors.breaker import CircuitBreaker
from aisfusion.supervisors.supervisor import SupervisedActor

log = logging.getLogger(__name__)
T = TypeVar("T")


def call(bridge: AsyncBridge, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
    """Run a storage coroutine with a deadline; a timeout cancels it and is transient."""
    future = bridge.submit(coro)
    try:
        return future.result(timeout_s)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TransientStorageError(f"timed out after {timeout_s:g} s") from None


class PostgresWriterActor(SupervisedActor):
    def __init__(
        self,
        supervisor: pykka.ActorRef[Any],
        store: PostgresStore,
        bridge: AsyncBridge,
        metrics: Metrics,
        timeout_s: float,
    ) -> None:
        super().__init__("postgres_writer", supervisor)
        self._store = store
        self._bridge = bridge
        self._metrics = metrics
        self._timeout = timeout_s

    def on_receive(self, message: Any) -> Any:
        match message:
            case WriteBatch(ticket=ticket, batch=batch):
                started = time.perf_counter()
                try:
                    inserted = call(self._bridge, self._store.write(batch), self._timeout)
                except TransientStorageError as exc:
                    self._supervisor.tell(BatchFailed(ticket, str(exc)))
                    return None
                except PermanentStorageError as exc:
                    log.warning(
                        "postgres writer: batch %d rejected (%s); isolating rows",
                        batch.batch_id,
                        exc,
                    )
                    try:
                        inserted, rejected, error = call(
                            self._bridge, self._store.write_isolated(batch), self._timeout
                        )
                    except StorageError as again:
                        self._supervisor.tell(BatchFailed(ticket, str(again)))
                        return None
                    elapsed = time.perf_counter() - started
                    self._metrics.stored("postgres", batch.positions)
                    self._supervisor.tell(BatchWritten(ticket, inserted, elapsed, rejected, error))
                    return None
                elapsed = time.perf_counter() - started
                self._metrics.stage_seconds.labels("postgres").inc(elapsed)
                self._metrics.stored("postgres", batch.positions)
                self._supervisor.tell(BatchWritten(ticket, inserted, elapsed))
                return None
            case _:
                raise TypeError(f"postgres writer: unexpected message {message!r}")


class LiveWriterActor(SupervisedActor):
    """Conflates positions per vessel and writes the latest of each every flush interval."""

    def __init__(
        self,
        supervisor: pykka.ActorRef[Any],
        store: RedisStore,
        bridge: AsyncBridge,
        metrics: Metrics,
        breaker: CircuitBreaker,
        flush_interval_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("live_writer", supervisor)
        self._store = store
        self._bridge = bridge
        self._metrics = metrics
        self._breaker = breaker
        self._interval = flush_interval_s
        self._timeout = timeout_s
        self._clock = clock
        self._latest: dict[int, Position] = {}
        self._last_flush = clock()

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
                if self._latest and self._clock() - self._last_flush >= self._interval:
                    self._write()
                return None
            case Flush():
                self._write()
                return len(self._latest)
            case _:
                raise TypeError(f"live writer: unexpected message {message!r}")

    def _write(self) -> None:
        self._last_flush = self._clock()
        if not self._latest or not self._breaker.allow():
            return
        batch = list(self._latest.values())
        started = time.perf_counter()
        m = self._metrics
        try:
            call(self._bridge, self._store.write_live(batch), self._timeout)
        except StorageError as exc:
            # The conflated state stays: a retry writes each vessel's latest position once.
            self._breaker.failure(str(exc))
            m.batch_flushes.labels("redis", "error").inc()
            log.warning("live writer: %d records not written, will retry: %s", len(batch), exc)
            return
        elapsed = time.perf_counter() - started
        self._breaker.success()
        # Positions that arrived meanwhile are newer; drop only those just written.
        for p in batch:
            if self._latest.get(p.mmsi) is p:
                del self._latest[p.mmsi]
        m.batch_flushes.labels("redis", "ok").inc()
        m.batch_rows.labels("redis").inc(len(batch))
        m.batch_duration.labels("redis").observe(elapsed)
        m.stage_seconds.labels("redis").inc(elapsed)
        m.stored("redis", batch)
