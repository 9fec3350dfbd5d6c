"""Storage writer actors, supervised children of the storage supervisor.

Each owns one store and reaches it through the `AsyncBridge`, blocking only its own thread,
with a timeout so a stalled database cannot hold it forever.

- The Postgres writer writes the batches its supervisor hands it and reports each outcome back
  (`BatchWritten` / `BatchFailed`); keeping, retrying and diverting batches is the
  supervisor's job. Rows the database rejects permanently are isolated row by row.
- The live writer conflates positions per vessel and writes the latest of each as soon as the
  previous write returned; while Redis is down the conflated state waits (bounded by the
  number of vessels).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import msgspec
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


class _Written(msgspec.Struct, frozen=True):
    """A live write the writer started has ended (told from the storage loop)."""

    future: concurrent.futures.Future[None]


class LiveWriterActor(SupervisedActor):
    """Conflates positions per vessel and writes the latest of each as soon as Redis is free.

    At most one write is in flight: positions that arrive meanwhile conflate, and the next
    write starts when it returns (natural batching: small writes when quiet, large ones under
    load, with no timer to wait for). `min_interval_s` spaces the starts of two writes.
    """

    def __init__(
        self,
        supervisor: pykka.ActorRef[Any],
        store: RedisStore,
        bridge: AsyncBridge,
        metrics: Metrics,
        breaker: CircuitBreaker,
        min_interval_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("live_writer", supervisor)
        self._store = store
        self._bridge = bridge
        self._metrics = metrics
        self._breaker = breaker
        self._interval = min_interval_s
        self._timeout = timeout_s
        self._clock = clock
        self._latest: dict[int, Position] = {}
        self._last_start = -math.inf
        # The write in flight: its future, its positions and when it started.
        self._inflight: tuple[concurrent.futures.Future[None], list[Position], float] | None = None

    def on_receive(self, message: Any) -> Any:
        match message:
            case Decisions(positions=positions):
                latest = self._latest
                for p in positions:
                    old = latest.get(p.mmsi)
                    if old is None or p.ts > old.ts:
                        latest[p.mmsi] = p
                self._start()
                return None
            case _Written(future=future):
                if self._inflight is not None and self._inflight[0] is future:
                    self._finish()
                    self._start()
                return None
            case Tick():
                self._expire()
                self._start()
                return None
            case Flush():
                self._wait()
                if self._start(now=True):
                    self._wait()
                return len(self._latest)
            case _:
                raise TypeError(f"live writer: unexpected message {message!r}")

    def _start(self, *, now: bool = False) -> bool:
        """Start writing the conflated positions if due; True if a write started."""
        if self._inflight is not None or not self._latest:
            return False
        started = self._clock()
        if not now and started - self._last_start < self._interval:
            return False  # a Tick starts it
        if not self._breaker.allow():
            return False
        self._last_start = started
        batch = list(self._latest.values())
        future = self._bridge.submit(self._write(batch))
        self._inflight = (future, batch, started)
        ref = self.actor_ref

        def written(done: concurrent.futures.Future[None]) -> None:
            with contextlib.suppress(pykka.ActorDeadError):  # stopped or being restarted
                ref.tell(_Written(done))

        future.add_done_callback(written)
        return True

    async def _write(self, batch: list[Position]) -> None:
        """On the storage loop: the latency is observed the moment Redis has the records."""
        await self._store.write_live(batch)
        self._metrics.stored("redis", batch)

    def _expire(self) -> None:
        """A write past its deadline is cancelled (its `_Written` follows, as a failure)."""
        if self._inflight is not None and self._clock() - self._inflight[2] > self._timeout:
            self._inflight[0].cancel()

    def _wait(self) -> None:
        """Block until the write in flight ends (for Flush), with the write deadline."""
        if self._inflight is None:
            return
        future, _, started = self._inflight
        with contextlib.suppress(Exception):  # its outcome is read by _finish
            future.result(max(0.0, started + self._timeout - self._clock()))
        if not future.done():
            future.cancel()
        self._finish()

    def _finish(self) -> None:
        assert self._inflight is not None
        future, batch, started = self._inflight
        self._inflight = None
        elapsed = self._clock() - started
        m = self._metrics
        error = f"timed out after {self._timeout:g} s" if future.cancelled() else future.exception()
        if error is not None:
            if not isinstance(error, StorageError | str):
                raise error  # a bug, not an outage: crash and let the supervisor restart us
            # The conflated state stays: a retry writes each vessel's latest position once.
            self._breaker.failure(str(error))
            m.batch_flushes.labels("redis", "error").inc()
            log.warning("live writer: %d records not written, will retry: %s", len(batch), error)
            return
        self._breaker.success()
        # Positions that arrived meanwhile are newer; drop only those just written.
        for p in batch:
            if self._latest.get(p.mmsi) is p:
                del self._latest[p.mmsi]
        m.batch_flushes.labels("redis", "ok").inc()
        m.batch_rows.labels("redis").inc(len(batch))
        m.batch_duration.labels("redis").observe(elapsed)
        m.stage_seconds.labels("redis").inc(elapsed)
