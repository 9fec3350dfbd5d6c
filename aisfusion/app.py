"""The service: builds the actor tree, starts it in dependency order and stops it in reverse.

Start order: embedded servers (when no URLs are configured) → storage loop bridge → stores
(connect, migrate) → writers → batcher → shards → ticker → feed listener → metrics HTTP →
control socket (`aisfusion shell`).
Stop is the reverse, in `finally` blocks, idempotent; a graceful stop drains every stage so
nothing accepted is left unwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, cast

import pykka

from aisfusion import __version__
from aisfusion.actors.batcher import BatcherActor
from aisfusion.actors.shard import ShardActor, ShardStats, VesselQuery, known_by_shard
from aisfusion.actors.sources import SourcesActor, SourceTable, WeightBoard
from aisfusion.commands import NEAR_MAX_KM
from aisfusion.config import Config
from aisfusion.control import ControlServer
from aisfusion.feeds.manager import FeedSet
from aisfusion.gauges import watch
from aisfusion.heap import CollectorPolicy
from aisfusion.httpd import MetricsServer
from aisfusion.introspection import outline, supervision_tree
from aisfusion.messages import Flush
from aisfusion.metrics import Metrics
from aisfusion.router import Router, shard_of
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.embedded import EmbeddedServers
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore
from aisfusion.storage.retention import Maintenance
from aisfusion.storage.spool import Spool
from aisfusion.supervisors.breaker import BreakerState, CircuitBreaker
from aisfusion.supervisors.storage import (
    WRITERS,
    BreakerCommand,
    DlqCommand,
    SpillInflight,
    StorageStatus,
    StorageSupervisor,
)
from aisfusion.supervisors.supervisor import (
    RestartChild,
    Slot,
    SupervisionTree,
)
from aisfusion.ticker import Ticker

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 3.0
_FLOAT_FIELDS = frozenset({"lat", "lon", "sog", "cog", "ts"})


def _typed(record: dict[str, str]) -> dict[str, Any]:
    """A live record's fields with the numeric ones as floats (a malformed one stays text)."""
    typed: dict[str, Any] = {}
    for key, value in record.items():
        try:
            typed[key] = float(value) if key in _FLOAT_FIELDS else value
        except ValueError:
            typed[key] = value
    return typed


class Service:
    """One aisfusion instance. Use `start()`, then `stop()` (or `async with`)."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.embedded: EmbeddedServers | None = None
        self.bridge = AsyncBridge()
        # The live writes (and the shards' rehydration reads) get a loop and a Redis client of
        # their own, so they never queue behind a Postgres COPY on the storage loop.
        self.live_bridge = AsyncBridge("live-loop")
        self.postgres: PostgresStore | None = None
        self.redis: RedisStore | None = None
        self.live: RedisStore | None = None
        self.shards: list[pykka.ActorRef[Any]] = []
        self.sources: pykka.ActorRef[Any] | None = None
        self.batcher: pykka.ActorRef[Any] | None = None
        self.storage: pykka.ActorRef[Any] | None = None
        self.spool: Spool | None = None
        self.maintenance: Maintenance | None = None
        self.breakers: dict[str, CircuitBreaker] = {}
        self.failure: str | None = None
        self.failed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: Ticker | None = None
        self._gc: CollectorPolicy | None = None
        self._feed: FeedSet | None = None
        self._http: MetricsServer | None = None
        self._control: ControlServer | None = None
        self.started_at: float | None = None

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop(drain=False)
            raise

    def _breaker(self, name: str) -> CircuitBreaker:
        b = self.config.breaker
        m = self.metrics

        def moved(name: str, old: BreakerState, new: BreakerState, spent_s: float) -> None:
            log.warning("breaker %s: %s -> %s", name, old, new)
            m.breaker_transitions.labels(name, str(new)).inc()
            m.breaker_state.labels(name, str(old)).set(0)
            m.breaker_state.labels(name, str(new)).set(1)
            if old is not BreakerState.CLOSED:
                m.breaker_open_seconds.labels(name).inc(spent_s)

        m.breaker_state.labels(name, str(BreakerState.CLOSED)).set(1)
        return CircuitBreaker(
            name,
            failure_threshold=b.failure_threshold,
            reset_base_s=b.reset_base_s,
            reset_max_s=b.reset_max_s,
            listener=moved,
        )

    def _escalate(self, reason: str) -> None:
        """The root of the supervision tree: a child gave up, so the service stops (exit 1)."""
        self.failure = reason
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.failed.set)

    def _redis_store(self, url: str) -> RedisStore:
        r = self.config.redis
        return RedisStore(
            url, r.key_prefix, layout=r.layout, cluster=r.cluster, geo_cell_deg=r.geo_cell_deg
        )

    async def _start(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        # First, so that a second instance on the same directories fails before anything.
        self.spool = Spool(cfg.spool.dir, fsync=cfg.spool.fsync)
        pg_url, redis_url = cfg.postgres.url, cfg.redis.url
        if not pg_url or not redis_url:
            self.embedded = EmbeddedServers(
                Path(cfg.embedded.data_dir),
                run_as=cfg.embedded.run_as,
                start_timeout_s=cfg.embedded.start_timeout_s,
                postgres=not pg_url,
                redis=not redis_url,
            )
            # Called on the main thread on purpose: the servers' parent-death signal follows
            # the thread that started them.
            self.embedded.start()
            pg_url = pg_url or self.embedded.postgres_url
            redis_url = redis_url or self.embedded.redis_url
        self.bridge.start()
        self.postgres = PostgresStore(
            pg_url, cfg.postgres, partition_days=cfg.retention.partition_days
        )
        self.redis = self._redis_store(redis_url)
        await asyncio.wrap_future(self.bridge.submit(self.postgres.connect()))
        await asyncio.wrap_future(self.bridge.submit(self.postgres.migrate()))
        await asyncio.wrap_future(self.bridge.submit(self.redis.connect()))
        self.live_bridge.start()
        self.live = self._redis_store(redis_url)
        await asyncio.wrap_future(self.live_bridge.submit(self.live.connect()))
        redis_status = self.redis.status()
        self.metrics.redis_layout.info(
            {"layout": redis_status["layout"], "cluster": str(redis_status["cluster"]).lower()}
        )
        # Partitions ahead, retention, soft delete, the live picture's leavers: now and then
        # every retention.interval_s.
        self.maintenance = Maintenance(cfg.retention, self.postgres, self.redis, self.metrics)
        self.maintenance.start(self.bridge)

        m = self.metrics
        self.breakers = {"postgres": self._breaker("postgres"), "redis": self._breaker("redis")}
        self.storage = StorageSupervisor.start(
            cfg,
            self.postgres,
            self.redis,
            self.bridge,
            m,
            self._escalate,
            self.spool,
            self.breakers["postgres"],
            self.breakers["redis"],
            live=(self.live, self.live_bridge),
        )
        live = self.storage.proxy().slot("live_writer").get()
        self.batcher = BatcherActor.start(cfg.batcher, self.storage, escalate=self._escalate)
        board = WeightBoard()
        self.sources = SourcesActor.start(cfg.sources, m, board=board, escalate=self._escalate)
        # Vessels with a live record: rehydrated from it when they report again.
        saved = await asyncio.wrap_future(self.bridge.submit(self.redis.live_mmsis()))
        known = known_by_shard(saved, cfg.actors.shards)
        self.shards = [
            ShardActor.start(
                i,
                cfg.actors,
                self.batcher,
                live,
                m,
                fusion=cfg.fusion,
                sources_config=cfg.sources,
                sources=self.sources,
                store=self.live,
                bridge=self.live_bridge,
                static_store=(self.postgres, self.bridge),
                shards=cfg.actors.shards,
                known=known[i],
                weights=board,
                escalate=self._escalate,
            )
            for i in range(cfg.actors.shards)
        ]
        # The live writer needs ticks only to retry and to honour its spacing.
        tick = min(cfg.batcher.flush_interval_s, max(0.01, cfg.redis.flush_interval_s)) / 2
        self._ticker = Ticker(max(0.005, min(tick, 0.25)), [self.batcher, self.storage, live])
        self._ticker.start()
        log.info("supervision tree:\n%s", outline(self.config))
        self._feed = FeedSet()
        await self._feed.start(cfg.feed, Router(self.shards, m), m)
        self._http = MetricsServer(cfg.metrics.host, cfg.metrics.port, self)
        self._http.start()
        watch(self, live)
        if cfg.control.socket:
            control = ControlServer(cfg.control.socket, self)
            if control.start():
                self._control = control
        self._gc = CollectorPolicy(cfg.runtime.gc_interval_s, m)
        self._gc.start()  # last: what was built so far lives for the whole run (frozen)
        self.started_at = time.time()
        log.info(
            "aisfusion started: feed %s:%d, metrics http://%s:%d/metrics, %d shards",
            cfg.feed.host,
            self.feed_port,
            cfg.metrics.host,
            self.metrics_port,
            cfg.actors.shards,
        )

    async def drain(self, deadline_s: float = 60.0, *, everything: bool = True) -> bool:
        """Write everything accepted so far to Redis and Postgres; True if done by the deadline.

        With `everything` (the default) this waits until batches diverted to the DLQ or the
        spool are in Postgres too; without, diverted batches count as safe (graceful stop).
        """
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + deadline_s

        def _drain() -> bool:
            # Shards first (their mailboxes are FIFO: a stats reply means earlier batches are
            # done), then the batcher, which hands its rows to the storage supervisor.
            for shard in self.shards:
                # A crashed shard's mailbox went with it (the service is stopping).
                with contextlib.suppress(pykka.ActorDeadError):
                    shard.ask(ShardStats(), timeout=deadline_s)
            if self.batcher is not None:
                self.batcher.ask(Flush(), timeout=deadline_s)
            if self.storage is None:
                return True
            live = self.storage.proxy().slot("live_writer").get()
            if live.ref is not None:
                live.ref.ask(Flush(), timeout=deadline_s)
            flush = Flush(everything=everything)
            while cast(int, self.storage.ask(flush, timeout=deadline_s)) > 0:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            return True

        return await loop.run_in_executor(None, _drain)

    async def stop(self, *, drain: bool = True) -> None:
        """Stop everything in reverse start order; idempotent."""
        if self._gc is not None:
            self._gc.stop()
            self._gc = None
        if self._control is not None:
            self._control.stop()
            self._control = None
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None
        try:
            deadline = self.config.breaker.call_timeout_s
            if drain and self.shards and not await self.drain(deadline, everything=False):
                spilled = self.storage.ask(SpillInflight()) if self.storage else 0
                log.warning("stop deadline: %d unconfirmed batches moved to the spool", spilled)
        finally:
            if self._ticker is not None:
                self._ticker.stop()
                self._ticker = None
            for ref in [*self.shards, self.batcher, self.storage]:
                if ref is not None:
                    ref.stop()
            self.shards, self.batcher, self.storage = [], None, None
            if self.sources is not None:
                self.sources.stop()
                self.sources = None
            if self.maintenance is not None:
                self.maintenance.stop()
                self.maintenance = None
            for store, bridge in (
                (self.live, self.live_bridge),
                (self.redis, self.bridge),
                (self.postgres, self.bridge),
            ):
                if store is not None and bridge.running:
                    await asyncio.wrap_future(bridge.submit(store.close()))
            self.live = self.redis = self.postgres = None
            self.live_bridge.stop()
            self.bridge.stop()
            if self.spool is not None:
                self.spool.close()
                self.spool = None
            if self.embedded is not None:
                self.embedded.stop()
                self.embedded = None

    # -- queries ---------------------------------------------------------------------------

    @property
    def feed_port(self) -> int:
        if self._feed is None:
            raise RuntimeError("feed listener not running")
        return self._feed.tcp_port

    @property
    def metrics_port(self) -> int:
        if self._http is None:
            raise RuntimeError("metrics server not running")
        return self._http.port

    def vessel(self, mmsi: int, timeout: float = 5.0) -> dict[str, Any] | None:
        """One vessel's state from its shard (blocking: call off the feed loop)."""
        shard = self.shards[shard_of(mmsi, len(self.shards))]
        return cast(dict[str, Any] | None, shard.ask(VesselQuery(mmsi), timeout=timeout))

    def status(self) -> dict[str, Any]:
        """Read-only status for /status and the shell's `status` (blocking: call off the feed
        loop). The actors are asked at once; one that does not answer within
        `STATUS_TIMEOUT_S` (a long mailbox) is shown as busy, with its mailbox depth."""
        deadline = time.monotonic() + STATUS_TIMEOUT_S

        def ask(ref: pykka.ActorRef[Any] | None, message: Any) -> Any:
            return None if ref is None else ref.ask(message, block=False)

        def answer(future: Any) -> Any:
            if future is None:
                return None
            try:
                return future.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # busy (timeout) or dead: the tree says which
                return None

        asked_shards = [ask(s, ShardStats()) for s in self.shards]
        asked_storage = ask(self.storage, StorageStatus())
        asked_sources = ask(self.sources, SourceTable())
        shards = [answer(f) for f in asked_shards]
        storage = answer(asked_storage)
        sources = answer(asked_sources)
        started = self.started_at
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": started,
            "uptime_s": None if started is None else round(time.time() - started, 3),
            "ready": self.ready,
            "failure": self.failure,
            "tree": supervision_tree(self, shards, storage),
            "shards": [s for s in shards if s is not None],
            "sources": sources if sources is not None else [],
            "batcher": bool(self.batcher and self.batcher.is_alive()),
            "storage": storage,
            "embedded": self.embedded is not None,
            "stores": self._stores_status(),
            "control_socket": str(self._control.path) if self._control is not None else None,
        }

    @property
    def restartable(self) -> tuple[str, ...]:
        """The actors an operator may restart: the supervised storage writers."""
        return WRITERS

    def restart(self, name: str) -> dict[str, Any]:
        """Restart a supervised actor as an operator; returns its node of the tree (blocking:
        call off the feed loop)."""
        if self.storage is None:
            raise RuntimeError("service not running")
        if name not in WRITERS:
            raise ValueError(f"{name!r} cannot be restarted (restartable: {', '.join(WRITERS)})")
        slot = cast(Slot, self.storage.proxy().slot(name).get(timeout=5))
        if name == "live_writer" and slot.ref is not None:
            # Its conflated positions exist only in its memory: write them first.
            slot.ref.ask(Flush(), timeout=self.config.breaker.call_timeout_s + 5)
        log.warning("operator: restarting %s", name)
        self.storage.ask(RestartChild(name), timeout=self.config.breaker.call_timeout_s + 20)
        tree = cast(dict[str, Any], self.storage.ask(SupervisionTree(), timeout=5))
        return cast(dict[str, Any], next(c for c in tree["children"] if c["name"] == name))

    def near(self, lat: float, lon: float, km: float, limit: int = 20) -> list[dict[str, Any]]:
        """Live vessels within `km` of (lat, lon), nearest first (blocking: off the feed loop)."""
        if self.redis is None:
            raise RuntimeError("service not running")
        if not 0 < km <= NEAR_MAX_KM:
            raise ValueError(f"radius must be within 0..{NEAR_MAX_KM:g} km, got {km:g}")
        hits = self.bridge.run(self.redis.near(lat, lon, km, limit), 5.0)
        return [
            {"mmsi": mmsi, "distance_km": round(dist, 3), **_typed(record)}
            for mmsi, dist, record in hits
        ]

    def vessel_info(self, mmsi: int, *, include_deleted: bool = False) -> dict[str, Any] | None:
        """One vessel's live record (Redis) and static data (PostgreSQL); None when neither
        has it. A soft-deleted vessel's static data only with `include_deleted` (blocking:
        off the feed loop)."""
        if self.redis is None or self.postgres is None:
            raise RuntimeError("service not running")
        record = self.bridge.run(self.redis.live(mmsi), 5.0)
        static = self.bridge.run(
            self.postgres.vessel(mmsi, include_deleted=include_deleted), STATUS_TIMEOUT_S
        )
        if not record and static is None:
            return None
        return {"mmsi": mmsi, "live": _typed(record) if record else None, "static": static}

    def track(
        self, mmsi: int, start: float, end: float, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """A vessel's stored positions with start <= ts < end, oldest first (blocking)."""
        if self.postgres is None:
            raise RuntimeError("service not running")
        if not start < end:
            raise ValueError(f"the track's start must be before its end ({start:g}, {end:g})")
        return self.bridge.run(self.postgres.track(mmsi, start, end, limit), 30.0)

    def _stores_status(self) -> dict[str, Any]:
        """The stores' modes and the last housekeeping run, for /status."""
        return {
            "redis": None if self.redis is None else self.redis.status(),
            "postgres": {
                "transaction_pooling": self.config.postgres.transaction_pooling,
                "partition_days": self.config.retention.partition_days,
            },
            "maintenance": None if self.maintenance is None else self.maintenance.status(),
        }

    def dlq(self, action: str, **options: Any) -> Any:
        """Operate the dead-letter queue (blocking: call off the feed loop)."""
        if self.storage is None:
            raise RuntimeError("service not running")
        return self.storage.ask(DlqCommand(action, **options), timeout=30)

    def breaker(self, name: str, action: str) -> dict[str, Any]:
        """Trip or reset a breaker as an operator (blocking: call off the feed loop)."""
        if self.storage is None or name not in self.breakers or action not in ("trip", "reset"):
            raise ValueError(f"no breaker {name!r} or action {action!r}")
        return cast(dict[str, Any], self.storage.ask(BreakerCommand(name, action), timeout=5))

    @property
    def ready(self) -> bool:
        """Ready when the actors run and each store is reachable or safely diverted."""
        return (
            self.started_at is not None
            and self.failure is None
            and all(ref is not None and ref.is_alive() for ref in [*self.shards, self.batcher])
            and self.storage is not None
            and self.storage.is_alive()
        )
