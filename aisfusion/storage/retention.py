"""Housekeeping of both stores, run on the storage event loop every `retention.interval_s`
(and once at start, before the first write):

1. **partitions ahead**: the partitions of `positions` for today and the next
   `partitions_ahead` partitions exist (the writer creates missing ones on demand too);
2. **history retention**: partitions whose days are all older than `history_days` are dropped
   whole (0 keeps everything);
3. **soft delete**: vessels not seen for `vessel_inactive_days` get `deleted_at` (restored by
   their next report; the read side leaves them out unless asked);
4. **live picture**: vessels without a position for `live_inactive_s` leave the geo index,
   the activity index and their live record (geo members have no TTL).

Each step is independent: one that fails (its store down) is logged and counted
(`aisfusion_maintenance_runs_total{task,outcome="error"}`) and the others still run; the next
run tries again. Several instances may run it at once: partition changes take an advisory
lock, the soft delete skips locked rows, and the Redis removals are idempotent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from aisfusion.config import RetentionConfig
from aisfusion.metrics import Metrics
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.partitions import DAY_S, day_of
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore

log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 10.0


class MaintenanceReport(msgspec.Struct, kw_only=True):
    """What one run did; a step that failed is named in `errors`."""

    created: list[str] = msgspec.field(default_factory=list)
    dropped: list[str] = msgspec.field(default_factory=list)
    partitions: int | None = None
    soft_deleted: int = 0
    live_removed: int = 0
    errors: dict[str, str] = msgspec.field(default_factory=dict)


class Maintenance:
    """The housekeeping task. `run_once` for one pass; `start`/`stop` to run it periodically
    on a bridge's event loop."""

    def __init__(
        self,
        config: RetentionConfig,
        postgres: PostgresStore | None,
        redis: RedisStore | None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._postgres = postgres
        self._redis = redis
        self._metrics = metrics
        self._clock = clock
        self._bridge: AsyncBridge | None = None
        self._future: concurrent.futures.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self.last: MaintenanceReport | None = None
        self.last_run_at: float | None = None

    async def run_once(self) -> MaintenanceReport:
        cfg, pg, rd = self.config, self._postgres, self._redis
        now = self._clock()
        today = day_of(now)
        report = MaintenanceReport()
        if pg is not None:

            async def ahead() -> None:
                days = {today + k * cfg.partition_days for k in range(cfg.partitions_ahead + 1)}
                report.created = [p.name for p in await pg.ensure_partitions(days)]

            async def retention() -> None:
                dropped = await pg.drop_partitions_before(today - cfg.history_days)
                report.dropped = [p.name for p in dropped]

            async def soft_delete() -> None:
                cutoff = now - cfg.vessel_inactive_days * DAY_S
                report.soft_deleted = await pg.soft_delete_inactive(cutoff, now)

            async def count() -> None:
                report.partitions = len(await pg.partitions())

            await self._step("partitions", ahead, report)
            if cfg.history_days:
                await self._step("retention", retention, report)
            if cfg.vessel_inactive_days:
                await self._step("soft_delete", soft_delete, report)
            await self._step("partitions_count", count, report)
        if rd is not None and cfg.live_inactive_s:

            async def live() -> None:
                report.live_removed = await rd.evict_inactive(now - cfg.live_inactive_s)

            await self._step("live", live, report)
        self._count(report)
        self.last, self.last_run_at = report, now
        if report.created or report.dropped or report.soft_deleted or report.live_removed:
            log.info(
                "maintenance: partitions created %s, dropped %s; %d vessels soft-deleted, "
                "%d left the live picture",
                report.created or "-",
                report.dropped or "-",
                report.soft_deleted,
                report.live_removed,
            )
        return report

    async def _step(
        self, task: str, step: Callable[[], Awaitable[None]], report: MaintenanceReport
    ) -> None:
        try:
            await step()
        except Exception as exc:  # one store down must not stop the other's housekeeping
            report.errors[task] = repr(exc)
            log.warning("maintenance: %s failed, retried at the next run: %r", task, exc)
            outcome = "error"
        else:
            outcome = "ok"
        if self._metrics is not None:
            self._metrics.maintenance_runs.labels(task, outcome).inc()

    def _count(self, report: MaintenanceReport) -> None:
        m = self._metrics
        if m is None:
            return
        m.history_partitions_changed.labels("created").inc(len(report.created))
        m.history_partitions_changed.labels("dropped").inc(len(report.dropped))
        m.vessels_soft_deleted.inc(report.soft_deleted)
        m.live_vessels_removed.inc(report.live_removed)
        if report.partitions is not None:
            m.history_partitions.set(report.partitions)

    # -- periodic running --------------------------------------------------------------------

    def start(self, bridge: AsyncBridge) -> None:
        """Run now and then every `interval_s` on `bridge`'s loop, until `stop`."""
        if self._future is not None:
            return
        self._bridge = bridge
        self._stop = asyncio.Event()  # binds to the loop that first waits on it
        self._future = bridge.submit(self._loop(self._stop))

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # a bug here must not end housekeeping for good
                log.exception("maintenance run failed")
            try:
                await asyncio.wait_for(stop.wait(), self.config.interval_s)
            except TimeoutError:
                continue

    async def _halt(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def stop(self) -> None:
        """Stop the periodic runs, waiting for a run in progress; idempotent."""
        future, bridge = self._future, self._bridge
        self._future = None
        if future is None or bridge is None or not bridge.running:
            return
        bridge.submit(self._halt()).result(_STOP_TIMEOUT_S)
        try:
            future.result(_STOP_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            log.warning("maintenance did not stop within %.0f s; cancelled", _STOP_TIMEOUT_S)
            future.cancel()

    def status(self) -> dict[str, Any]:
        report = self.last
        return {
            "last_run_at": self.last_run_at,
            "last": None if report is None else msgspec.to_builtins(report),
            "interval_s": self.config.interval_s,
        }
