"""The storage supervisor: supervises the writers and makes sure no history batch is lost.

Every history batch passes through here. While the Postgres breaker is closed and fewer than
`max_inflight_batches` are with the writer, a batch goes to the writer; otherwise (breaker open,
writer behind, write failed) it is diverted to the dead-letter queue in Redis, or — when Redis
is down too — to the local spool on disk. A batch leaves this actor's care only when Postgres
confirmed it or the DLQ/spool holds it. Both drain back automatically: due DLQ entries and
spooled segments are handed to the writer again once the breaker is closed, and while it is
open one probe at a time tests whether Postgres is back.

In a worker process (`on_durable` given) fresh batches are also tracked in arrival order: once
a batch and every one before it are settled (in Postgres, the DLQ or the spool), the `upto`
mark it carries goes to `on_durable`, which acknowledges those messages to the log.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from aisfusion.actors.writers import LiveWriterActor, PostgresWriterActor, call
from aisfusion.config import Config
from aisfusion.errors import AisFusionError
from aisfusion.messages import BatchFailed, BatchWritten, Flush, HistoryBatch, WriteBatch
from aisfusion.metrics import Metrics
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.dlq import DeadLetterQueue, DlqStats
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore
from aisfusion.storage.spool import Spool
from aisfusion.supervisors.breaker import BreakerState, CircuitBreaker
from aisfusion.supervisors.policy import RestartPolicy, Strategy
from aisfusion.supervisors.supervisor import ChildSpec, Supervisor

log = logging.getLogger(__name__)

# Where an in-flight batch came from, so its outcome can be acknowledged there (a fresh batch
# by its batch id).
FRESH = "fresh"
_EMPTY = HistoryBatch(0, [], [])


class BreakerCommand(msgspec.Struct, frozen=True):
    """Control (ask): an operator trips or resets a breaker."""

    breaker: str  # "postgres" or "redis"
    action: str  # "trip" or "reset"


class StorageStatus(msgspec.Struct, frozen=True):
    """Control (ask): breakers, in-flight batches, DLQ and spool figures."""


class DlqCommand(msgspec.Struct, frozen=True):
    """Control (ask): operate the dead-letter queue (stats, peek, retry, clear)."""

    action: str  # "stats", "peek", "retry" or "clear"
    entry_id: str | None = None  # retry: one entry (default: all, parked included)
    limit: int = 10  # peek
    parked: bool = False  # peek/clear: the parked entries only


class SpillInflight(msgspec.Struct, frozen=True):
    """Control (ask), at a stop deadline: move every unconfirmed batch to the spool."""


# The supervised children, by name: the actors an operator may restart.
WRITERS = ("postgres_writer", "live_writer")


class StorageSupervisor(Supervisor):
    def __init__(
        self,
        config: Config,
        postgres: PostgresStore,
        redis: RedisStore,
        bridge: AsyncBridge,
        metrics: Metrics,
        escalate: Callable[[str], None],
        spool: Spool,
        pg_breaker: CircuitBreaker,
        redis_breaker: CircuitBreaker,
        clock: Callable[[], float] = time.monotonic,
        *,
        live: tuple[RedisStore, AsyncBridge] | None = None,
        on_durable: Callable[[int], None] | None = None,
    ) -> None:
        timeout = config.breaker.call_timeout_s
        # The live writer may have a store on a loop of its own (see Service._start).
        live_store, live_bridge = live if live is not None else (redis, bridge)
        children = [
            ChildSpec(
                "postgres_writer",
                lambda sup: PostgresWriterActor.start(sup, postgres, bridge, metrics, timeout),
            ),
            ChildSpec(
                "live_writer",
                lambda sup: LiveWriterActor.start(
                    sup,
                    live_store,
                    live_bridge,
                    metrics,
                    redis_breaker,
                    config.redis.flush_interval_s,
                    timeout,
                ),
            ),
        ]
        s = config.supervision
        policy = RestartPolicy(
            strategy=Strategy(s.strategy),
            max_restarts=s.max_restarts,
            within_s=s.within_s,
            backoff_min_s=s.backoff_min_s,
            backoff_max_s=s.backoff_max_s,
        )
        super().__init__("storage", policy, children, escalate, metrics, clock)
        self._config = config
        self._bridge = bridge
        self._timeout = timeout
        self._dlq = DeadLetterQueue(
            redis,
            max_attempts=config.dlq.max_attempts,
            retry_base_s=config.dlq.retry_base_s,
            retry_max_s=config.dlq.retry_max_s,
        )
        self._spool = spool
        self.pg_breaker = pg_breaker
        self.redis_breaker = redis_breaker
        self._tickets = itertools.count(1)
        self._inflight: dict[int, tuple[HistoryBatch, tuple[str, str]]] = {}
        self._spool_segment: tuple[str, int] | None = None  # (segment id, batches outstanding)
        self._next_poll = 0.0
        self._dlq_stats: dict[str, Any] = {}
        self.rows_written = 0
        self._on_durable = on_durable
        # Fresh batches not yet settled, oldest first: batch id -> [upto, settled].
        self._unsettled: OrderedDict[int, list[int]] = OrderedDict()

    # -- messages ----------------------------------------------------------------------

    def handle(self, message: Any) -> Any:
        match message:
            case HistoryBatch():
                origin = (FRESH, str(message.batch_id))
                if self._on_durable is not None:
                    self._unsettled[message.batch_id] = [message.upto, 0]
                    if not message.positions and not message.vessels:
                        self._settle(origin)  # a mark alone: nothing to write
                        return None
                self._submit(message, origin)
                return None
            case BatchWritten():
                self._written(message)
                return None
            case BatchFailed(ticket=ticket, error=error):
                self._failed_write(ticket, error)
                return None
            case Flush(everything=everything):
                return self._pending(everything)
            case StorageStatus():
                return self.status()
            case BreakerCommand(breaker=name, action=action):
                breaker = {"postgres": self.pg_breaker, "redis": self.redis_breaker}[name]
                breaker.trip() if action == "trip" else breaker.reset()
                return breaker.snapshot()
            case DlqCommand():
                return self._dlq_command(message)
            case SpillInflight():
                return self._spill_inflight()
            case _:
                raise TypeError(f"storage supervisor: unexpected message {message!r}")

    def on_child_restarted(self, name: str) -> None:
        if name == "postgres_writer":
            # The crashed writer's mailbox is gone: hand it everything unconfirmed again.
            slot = self.slot("postgres_writer")
            for ticket, (batch, _) in self._inflight.items():
                slot.tell(WriteBatch(ticket, batch))

    def on_tick(self) -> None:
        now = self._clock()
        if not self._inflight and self.pg_breaker.state is not BreakerState.CLOSED:
            self._probe()
        if now >= self._next_poll:
            self._next_poll = now + self._config.dlq.poll_interval_s
            if self.pg_breaker.state is BreakerState.CLOSED:
                self._replay_dlq()
                self._replay_spool()
            self._update_gauges()

    # -- routing -----------------------------------------------------------------------

    def _submit(self, batch: HistoryBatch, origin: tuple[str, str]) -> None:
        limit = self._config.dlq.max_inflight_batches
        if len(self._inflight) >= limit and origin[0] != "spool":
            self._divert(batch, origin, f"writer behind: {limit} batches in flight")
            return
        if not self.pg_breaker.allow():
            self._divert(batch, origin, "postgres breaker open")
            return
        self._send(batch, origin)

    def _probe(self) -> None:
        """While the breaker is open and nothing is in flight, test Postgres with one batch."""
        if not self.pg_breaker.allow():
            return
        entries = self._dlq_take(1)
        if entries:
            entry = entries[0]
            self._send(entry.batch, ("dlq", entry.id))
        else:
            self._send(_EMPTY, ("probe", ""))

    def _send(self, batch: HistoryBatch, origin: tuple[str, str]) -> None:
        # If the writer is down, on_child_restarted resends everything in flight.
        ticket = next(self._tickets)
        self._inflight[ticket] = (batch, origin)
        self.slot("postgres_writer").tell(WriteBatch(ticket, batch))

    def _written(self, result: BatchWritten) -> None:
        entry = self._inflight.pop(result.ticket, None)
        self.pg_breaker.success()
        if entry is None:
            return
        batch, origin = entry
        m = self._metrics
        self.rows_written += result.inserted
        m.batch_flushes.labels("postgres", "ok").inc()
        m.batch_rows.labels("postgres").inc(result.inserted)
        m.batch_duration.labels("postgres").observe(result.seconds)
        if result.rejected is not None and (result.rejected.positions or result.rejected.vessels):
            log.error(
                "postgres rejected %d rows of batch %d permanently: %s; parked in the DLQ",
                len(result.rejected.positions),
                batch.batch_id,
                result.rejected_error,
            )
            self._park(result.rejected, result.rejected_error or "rejected")
        self._settle(origin)

    def _failed_write(self, ticket: int, error: str) -> None:
        entry = self._inflight.pop(ticket, None)
        self.pg_breaker.failure(error)
        self._metrics.batch_flushes.labels("postgres", "error").inc()
        if entry is None:
            return
        batch, origin = entry
        log.warning("postgres write of batch %d failed: %s", batch.batch_id, error)
        if origin[0] == "dlq":
            self._dlq_fail(origin[1], batch, error)
        elif origin[0] != "probe":
            self._divert(batch, origin, error)

    def _settle(self, origin: tuple[str, str]) -> None:
        """A batch from `origin` is safe in Postgres (or diverted again): release it there."""
        kind, ident = origin
        if kind == FRESH:
            self._durable(int(ident))
        elif kind == "dlq":
            self._redis_call(self._dlq.ack(ident))
        elif kind == "spool" and self._spool_segment is not None:
            segment, outstanding = self._spool_segment
            outstanding -= 1
            if outstanding > 0:
                self._spool_segment = (segment, outstanding)
            else:
                self._spool.remove(segment)
                self._spool_segment = None

    def _durable(self, batch_id: int) -> None:
        entry = self._unsettled.get(batch_id)
        if entry is None or self._on_durable is None:
            return
        entry[1] = 1
        upto = 0
        while self._unsettled:
            first = next(iter(self._unsettled.values()))
            if not first[1]:
                break
            upto = max(upto, first[0])
            self._unsettled.popitem(last=False)
        if upto:
            self._on_durable(upto)

    # -- the dead-letter path -----------------------------------------------------------

    def _divert(self, batch: HistoryBatch, origin: tuple[str, str], reason: str) -> None:
        if not batch.positions and not batch.vessels:
            self._settle(origin)
            return
        if self._redis_call(self._dlq.push(batch, error=reason, source=origin[0])) is None:
            self._spool.append(batch)
            self._metrics.dead_letter_diverted.labels("spool").inc()
        else:
            self._metrics.dead_letter_diverted.labels("dlq").inc()
        self._settle(origin)

    def _park(self, batch: HistoryBatch, error: str) -> None:
        pushed = self._redis_call(
            self._dlq.push(
                batch, error=error, source="rejected", attempts=self._config.dlq.max_attempts
            )
        )
        if pushed is None:
            self._spool.append(batch)

    def _dlq_fail(self, entry_id: str, batch: HistoryBatch, error: str) -> None:
        if self._redis_call(self._dlq.fail(entry_id, error)) is None:
            # The lease expires and the entry becomes due again; the spool copy is extra
            # safety, and a duplicate write is harmless (inserts are idempotent).
            self._spool.append(batch)

    def _dlq_take(self, limit: int) -> list[Any]:
        if limit <= 0:
            return []
        taken = self._redis_call(self._dlq.take_due(limit))
        return list(taken) if taken else []

    def _replay_dlq(self) -> None:
        room = self._config.dlq.max_inflight_batches - len(self._inflight)
        for entry in self._dlq_take(room):
            self._send(entry.batch, ("dlq", entry.id))

    def _replay_spool(self) -> None:
        if self._spool_segment is not None or self._spool.pending_batches() == 0:
            return
        oldest = self._spool.oldest()
        if oldest is None:
            return
        segment, batches = oldest
        if not batches:
            self._spool.remove(segment)
            return
        log.info("replaying %d spooled batches from segment %s", len(batches), segment)
        self._spool_segment = (segment, len(batches))
        for batch in batches:
            self._send(batch, ("spool", segment))

    def _dlq_command(self, cmd: DlqCommand) -> Any:
        """Operator access to the DLQ; raises if Redis cannot be reached (no silent answer)."""
        dlq = self._dlq
        match cmd.action:
            case "stats":
                coro: Any = dlq.stats()
            case "peek":
                coro = dlq.peek(cmd.limit, parked=cmd.parked)
            case "retry":
                coro = dlq.retry_now(cmd.entry_id)
            case "clear":
                coro = dlq.clear(parked_only=cmd.parked)
            case _:
                raise ValueError(f"unknown dlq action {cmd.action!r}")
        result = call(self._bridge, coro, self._timeout)
        if cmd.action == "peek":
            return [
                {
                    "id": e.id,
                    "attempts": e.attempts,
                    "error": e.error,
                    "source": e.source,
                    "rows": len(e.batch.positions),
                    "first_failed_at": e.first_failed_at,
                    "next_retry_at": e.next_retry_at,
                    "parked": e.parked,
                }
                for e in result
            ]
        return msgspec.to_builtins(result)

    def _redis_call(self, coro: Any) -> Any:
        """A DLQ operation under the Redis breaker; None when Redis is unavailable."""
        if not self.redis_breaker.allow():
            coro.close()
            return None
        try:
            result = call(self._bridge, coro, self._timeout)
        except AisFusionError as exc:
            self.redis_breaker.failure(str(exc))
            log.warning("dead-letter queue unavailable: %s", exc)
            return None
        self.redis_breaker.success()
        return True if result is None else result

    def _pending(self, everything: bool) -> int:
        """Batches not yet in Postgres that should get there now: in flight, and — while the
        breaker is closed, or `everything` is asked — waiting in the DLQ (parked ones
        excepted) or in the spool."""
        pending = len(self._inflight)
        if everything or self.pg_breaker.state is BreakerState.CLOSED:
            stats = self._redis_call(self._dlq.stats())
            if isinstance(stats, DlqStats):
                pending += stats.ready + stats.scheduled + stats.leased
            pending += self._spool.pending_batches()
        return pending

    def _spill_inflight(self) -> int:
        """Stop deadline: everything not confirmed goes to the spool (written twice at worst)."""
        count = 0
        for batch, origin in self._inflight.values():
            if origin[0] not in ("probe", "spool") and (batch.positions or batch.vessels):
                self._spool.append(batch)
                count += 1
        self._inflight.clear()
        self._spool.flush()
        return count

    # -- observability -----------------------------------------------------------------

    def _update_gauges(self) -> None:
        stats = self._redis_call(self._dlq.stats())
        m = self._metrics
        if isinstance(stats, DlqStats):
            self._dlq_stats = msgspec.to_builtins(stats)
            for state in ("ready", "scheduled", "leased", "parked"):
                m.dead_letter_batches.labels(state).set(self._dlq_stats[state])
            m.dead_letter_rows.set(stats.rows)
            m.dead_letter_oldest_age.set(stats.oldest_age_s or 0.0)
        m.spool_batches.set(self._spool.pending_batches())
        m.inflight_batches.set(len(self._inflight))

    def status(self) -> dict[str, Any]:
        return {
            "tree": self.tree(),
            "breakers": [self.pg_breaker.snapshot(), self.redis_breaker.snapshot()],
            "inflight_batches": len(self._inflight),
            "dlq": self._dlq_stats,
            "spool": {
                "batches": self._spool.pending_batches(),
                "rows": self._spool.pending_rows(),
                "corrupt_records": self._spool.corrupt_records,
            },
            "rows_written": self.rows_written,
        }
