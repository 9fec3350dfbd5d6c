"""The pipeline: builds the actor tree, starts it in dependency order and stops it in reverse.

Start order: embedded servers (when no URLs are configured) → storage loop bridge → stores
(connect, migrate) → writers → batcher → shards → ticker → intake → the surfaces that show it
outside (`Surfaces`: the HTTP endpoint and the control socket of `aisfusion.ops`, attached by
`aisfusion.app`; the pipeline never imports them).
Stop is the reverse, in `finally` blocks, idempotent; a graceful stop drains every stage so
nothing accepted is left unwritten.

One class, four roles, one pipeline:

- ``direct`` (workers.mode = "in_process", and what tests build): the feed listener hands raw
  messages straight to this process's shards.
- ``worker`` (`aisfusion worker`): the intake is the JetStream log (`jetstream.intake`): the
  partitions this process holds leases on, acknowledged after commit.
- ``front`` (`aisfusion run` with workers.mode = "jetstream"): the feed listener publishes to
  the log (`jetstream.publisher`) and the front starts the local workers; it runs no vessels,
  and answers queries from the stores.
- ``import`` (`aisfusion import`, `archive.importer`): no feed and no maintenance; the importer
  hands an archive's messages to the router itself, in event time (`RawBatch.now`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import pykka

from aisfusion.actors.batcher import BatcherActor
from aisfusion.actors.shard import ShardActor, ShardStats, VesselQuery, known_by_shard
from aisfusion.actors.sources import SourcesActor, SourceTable, WeightBoard
from aisfusion.config import Config
from aisfusion.errors import ConfigError
from aisfusion.feeds.manager import FeedSet
from aisfusion.gauges import watch
from aisfusion.heap import CollectorPolicy
from aisfusion.introspection import outline, status
from aisfusion.jetstream import log as jlog
from aisfusion.jetstream.intake import LogIntake
from aisfusion.jetstream.monitor import LogMonitor
from aisfusion.jetstream.publisher import Publisher
from aisfusion.jetstream.workers import WorkerPool, default_count
from aisfusion.messages import Claim, Flush
from aisfusion.metrics import Metrics
from aisfusion.router import Router, shard_of
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.dlq import DeadLetterQueue
from aisfusion.storage.embedded import EmbeddedServers
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.reads import StoreReads
from aisfusion.storage.redis import RedisStore
from aisfusion.storage.retention import Maintenance
from aisfusion.storage.spool import Spool
from aisfusion.supervisors.breaker import BreakerState, CircuitBreaker
from aisfusion.supervisors.storage import (
    WRITERS,
    BreakerCommand,
    DlqCommand,
    SpillInflight,
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
Role = Literal["direct", "front", "worker", "import"]


class Surfaces(Protocol):
    """What shows a running pipeline outside: started once the actors run (a worker's before
    its intake, since its heartbeat carries `http_port` to the front), stopped first."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def http_port(self) -> int: ...

    @property
    def control_socket(self) -> str | None: ...


class Pipeline:
    """One aisfusion instance. Use `start()`, then `stop()` (or `async with`)."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        role: Role = "direct",
        worker_id: str = "",
        worker_args: list[str] | None = None,
        surfaces: Callable[[Pipeline], Surfaces] | None = None,
    ) -> None:
        self.config = config
        self.role: Role = role
        self.worker_id = worker_id or f"{os.uname().nodename}-{os.getpid()}"
        self._worker_args = worker_args or []
        self.metrics = metrics if metrics is not None else Metrics()
        self.embedded: EmbeddedServers | None = None
        self.bridge = AsyncBridge()
        # The live writes (and the shards' rehydration reads) get a loop and a Redis client of
        # their own, so they never queue behind a Postgres COPY on the storage loop.
        self.live_bridge = AsyncBridge("live-loop")
        self.postgres: PostgresStore | None = None
        self.redis: RedisStore | None = None
        self.live: RedisStore | None = None
        self._reads: StoreReads | None = None
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
        self._attach = surfaces
        self._surfaces: Surfaces | None = None
        self._nc: Any = None  # the NATS client (front and worker)
        self.publisher: Publisher | None = None
        self.intake: LogIntake | None = None
        self.workers: WorkerPool | None = None
        self.router: Router | None = None
        self.log_monitor: LogMonitor | None = None
        self.started_at: float | None = None

    async def __aenter__(self) -> Pipeline:
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

    def _redis_store(self, url: str, *, newer_only: bool = False) -> RedisStore:
        r = self.config.redis
        return RedisStore(
            url,
            r.key_prefix,
            layout=r.layout,
            cluster=r.cluster,
            geo_cell_deg=r.geo_cell_deg,
            newer_only=newer_only,
        )

    async def _start(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        if self.role != "front":
            # First, so that a second instance on the same directories fails before anything.
            # An import has a spool of its own: it may run beside the service.
            spool = Path(cfg.spool.dir) / "import" if self.role == "import" else cfg.spool.dir
            self.spool = Spool(spool, fsync=cfg.spool.fsync)
        pg_url, redis_url, nats_url = cfg.postgres.url, cfg.redis.url, cfg.nats.url
        if self.role == "worker" and not (pg_url and redis_url and nats_url):
            raise ConfigError(
                ["aisfusion worker needs postgres.url, redis.url and nats.url (the front's)"]
            )
        want_nats = self.role == "front" and not nats_url
        if not pg_url or not redis_url or want_nats:
            self.embedded = EmbeddedServers.configured(
                cfg.embedded, postgres=not pg_url, redis=not redis_url, nats=want_nats
            )
            # Called on the main thread on purpose: the servers' parent-death signal follows
            # the thread that started them.
            self.embedded.start()
            pg_url = pg_url or self.embedded.postgres_url
            redis_url = redis_url or self.embedded.redis_url
            nats_url = nats_url or (self.embedded.nats_url if want_nats else "")
        await self._start_stores(pg_url, redis_url)
        if self.role in ("direct", "front"):
            # Partitions ahead, retention, soft delete, the live picture's leavers: now and
            # then every retention.interval_s (once per installation: the front does it).
            assert self.postgres is not None
            assert self.redis is not None
            self.maintenance = Maintenance(cfg.retention, self.postgres, self.redis, self.metrics)
            self.maintenance.start(self.bridge)
        if self.role in ("front", "worker"):
            nc = self._nc = await jlog.connect(cfg.nats, nats_url, f"aisfusion-{self.role}")
            self.metrics.log_connected.labels(self.role).set_function(lambda: nc.is_connected)
        if self.role in ("direct", "front"):
            self._feed = FeedSet()
        if self.role == "front":
            assert self._feed is not None
            await jlog.ensure_stream(self._nc.jetstream(), cfg.nats)
            self.publisher = Publisher(self._nc, cfg.nats, self.metrics)
            self.publisher.start()
            await self._feed.start(cfg.feed, self.publisher, self.metrics)
            count = cfg.workers.count or default_count()
            self.workers = WorkerPool(
                cfg,
                count,
                self._worker_args,
                {"postgres": pg_url, "redis": redis_url, "nats": nats_url},
                Path(cfg.embedded.data_dir),
            )
            self.workers.start()
            self.log_monitor = LogMonitor(self._nc, cfg, self.metrics, self.workers)
            self.log_monitor.start()
        else:
            live = await self._start_pipeline()
            router = self.router = Router(self.shards, self.metrics)
            if self._feed is not None:
                await self._feed.start(cfg.feed, router, self.metrics)
            if self.role == "worker":
                # Shown first: the heartbeat tells the front where this worker's port is.
                self._show()
                card = {"pid": os.getpid(), "metrics": f"{cfg.metrics.host}:{self.metrics_port}"}
                self.intake = LogIntake(
                    self._nc,
                    # The leases get a connection of their own (on their own thread).
                    functools.partial(jlog.connect, cfg.nats, nats_url, f"{self.worker_id}-leases"),
                    cfg.nats,
                    cfg.workers,
                    self.worker_id,
                    router,
                    self.shards,
                    self.metrics,
                    self._claim,
                    card,
                )
                await self.intake.start()
        if self._surfaces is None:
            self._show()
        if self.role != "front":
            watch(self, live)
        self._gc = CollectorPolicy(cfg.runtime.gc_interval_s, self.metrics)
        self._gc.start()  # last: what was built so far lives for the whole run (frozen)
        self.started_at = time.time()
        log.info(
            "aisfusion %s started: %s, %s, %d shards",
            self.role,
            f"feed {cfg.feed.host}:{self.feed_port}"
            if self._feed is not None
            else "log intake"
            if self.role == "worker"
            else "archive",
            "no surfaces"
            if self._surfaces is None
            else f"metrics http://{cfg.metrics.host}:{self.metrics_port}/metrics",
            len(self.shards),
        )

    def _show(self) -> None:
        if self._attach is not None:
            self._surfaces = self._attach(self)
            self._surfaces.start()

    async def _start_stores(self, pg_url: str, redis_url: str) -> None:
        cfg = self.config
        self.bridge.start()
        self.postgres = PostgresStore(
            pg_url, cfg.postgres, partition_days=cfg.retention.partition_days
        )
        self.redis = self._redis_store(redis_url)
        await asyncio.wrap_future(self.bridge.submit(self.postgres.connect()))
        await asyncio.wrap_future(self.bridge.submit(self.postgres.migrate()))
        await asyncio.wrap_future(self.bridge.submit(self.redis.connect()))
        self.live_bridge.start()
        self.live = self._redis_store(redis_url, newer_only=self.role == "import")
        await asyncio.wrap_future(self.live_bridge.submit(self.live.connect()))
        self._reads = StoreReads(self.bridge, self.redis, self.postgres)
        redis_status = self.redis.status()
        self.metrics.redis_layout.info(
            {"layout": redis_status["layout"], "cluster": str(redis_status["cluster"]).lower()}
        )

    async def _claim(self, part: int) -> None:
        """A partition was taken (its lease is ours): before it is consumed, tell the shards
        which of its vessels have a live record, read now, so that what its previous owner
        decided is rehydrated rather than decided again from scratch."""
        assert self.redis is not None
        mmsis = await asyncio.wrap_future(self.bridge.submit(self.redis.live_mmsis()))
        of, shards = self.config.nats.partitions, len(self.shards)
        for shard, known in zip(
            self.shards, known_by_shard([m for m in mmsis if m % of == part], shards), strict=True
        ):
            shard.tell(Claim(frozenset(known)))

    def _durable(self, upto: int) -> None:
        """Storage → the log intake: messages marked up to `upto` are committed."""
        if self.intake is not None:
            self.intake.durable(upto)

    async def _start_pipeline(self) -> Slot:
        """The actors that decide and store: writers, batcher, sources, shards, ticker."""
        cfg = self.config
        assert self.postgres is not None
        assert self.redis is not None
        assert self.live is not None
        assert self.spool is not None
        worker = self.role == "worker"
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
            on_durable=self._durable if worker else None,
        )
        live = cast(Slot, self.storage.proxy().slot("live_writer").get())
        self.batcher = BatcherActor.start(
            cfg.batcher,
            self.storage,
            escalate=self._escalate,
            shards=cfg.actors.shards if worker else 0,
        )
        board = WeightBoard()
        self.sources = SourcesActor.start(cfg.sources, m, board=board, escalate=self._escalate)
        # Vessels with a live record: rehydrated from it when they report again (a worker
        # learns them per partition it takes: `_claim`). Not an import's: its vessels start
        # from the archive alone, so importing it again decides the same again (and stores
        # nothing new); its live writes go only over older records instead.
        saved = (
            []
            if worker or self.role == "import"
            else await asyncio.wrap_future(self.bridge.submit(self.redis.live_mmsis()))
        )
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
        return live

    async def drain(self, deadline_s: float = 60.0, *, everything: bool = True) -> bool:
        """Write everything accepted so far to Redis and Postgres; True if done by the deadline.

        With `everything` (the default) this waits until batches diverted to the DLQ or the
        spool are in Postgres too; without, diverted batches count as safe (graceful stop).
        The front publishes what it holds and waits until the workers acknowledged it all.
        """
        if self.role == "front":
            return await self._drain_log(deadline_s, everything)
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
        if self._surfaces is not None:
            self._surfaces.stop()
            self._surfaces = None
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None
        try:
            await self._stop_log(drain)
            deadline = self.config.breaker.call_timeout_s
            if drain and self.shards and not await self.drain(deadline, everything=False):
                spilled = self.storage.ask(SpillInflight()) if self.storage else 0
                log.warning("stop deadline: %d unconfirmed batches moved to the spool", spilled)
            if self.intake is not None:
                if drain:
                    await asyncio.sleep(0.05)  # the last acks, scheduled by the drain
                await self.intake.stop()  # leases back only now: the next owner starts after us
                self.intake = None
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.drain()
                self._nc = None
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
            self._reads = None
            self.live_bridge.stop()
            self.bridge.stop()
            if self.spool is not None:
                self.spool.close()
                self.spool = None
            if self.embedded is not None:
                self.embedded.stop()
                self.embedded = None

    async def _drain_log(self, deadline_s: float, everything: bool) -> bool:
        """The front: everything read is published, and every partition's consumer has
        acknowledged everything (workers acknowledge after commit, or once a batch is safe
        in the DLQ). With `everything`, also wait until the shared DLQ is empty, so that
        what was acknowledged is in Postgres (a worker's local spool is its own: it shows
        in that worker's status)."""
        if self.publisher is None or self.log_monitor is None or self.redis is None:
            return False
        deadline = time.monotonic() + deadline_s
        if not await self.publisher.flush(deadline_s):
            return False
        published_at = time.time()
        while not self.log_monitor.drained_since(published_at):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
            with contextlib.suppress(Exception):  # NATS away: look again until the deadline
                await self.log_monitor.observe()
        dlq = DeadLetterQueue(self.redis)
        while everything:
            stats = await asyncio.wrap_future(self.bridge.submit(dlq.stats()))
            if stats.ready + stats.scheduled + stats.leased == 0:
                break
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def _stop_log(self, drain: bool) -> None:
        """Before the drain: the front publishes what it holds and stops its workers; a
        worker stops taking from the log."""
        deadline = self.config.breaker.call_timeout_s
        if self.log_monitor is not None:
            await self.log_monitor.stop()
            self.log_monitor = None
        if self.publisher is not None:
            left = await self.publisher.stop(deadline if drain else 0.0)
            if left:
                log.error("stop: %d messages were not acknowledged by the log", left)
            self.publisher = None
        if self.workers is not None:
            workers = self.workers
            await asyncio.get_running_loop().run_in_executor(None, workers.stop, deadline + 20)
            self.workers = None
        if self.intake is not None:
            await self.intake.pause()

    # -- queries ---------------------------------------------------------------------------

    @property
    def feed_port(self) -> int:
        if self._feed is None:
            raise RuntimeError("feed listener not running")
        return self._feed.tcp_port

    @property
    def metrics_port(self) -> int:
        if self._surfaces is None:
            raise RuntimeError("metrics server not running")
        return self._surfaces.http_port

    @property
    def control_socket(self) -> str | None:
        return None if self._surfaces is None else self._surfaces.control_socket

    def vessel(self, mmsi: int, timeout: float = 5.0) -> dict[str, Any] | None:
        """One vessel's state from its shard (blocking: call off the feed loop)."""
        if not self.shards:
            return None  # the front: vessels live in the worker processes
        shard = self.shards[shard_of(mmsi, len(self.shards))]
        return cast(dict[str, Any] | None, shard.ask(VesselQuery(mmsi), timeout=timeout))

    def status(self) -> dict[str, Any]:
        """Read-only status for /status and the shell's `status` (blocking: call off the feed
        loop; see `introspection.status`)."""
        return status(self, STATUS_TIMEOUT_S)

    def source_table(self) -> list[dict[str, Any]]:
        """Each source's quality and weight (blocking: call off the feed loop)."""
        if self.sources is None:
            raise RuntimeError("service not running")
        return cast(list[dict[str, Any]], self.sources.ask(SourceTable(), timeout=5.0))

    @property
    def reads(self) -> StoreReads:
        """The read API over the stores (live records, static data, tracks)."""
        if self._reads is None:
            raise RuntimeError("service not running")
        return self._reads

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
        """Ready when the actors run and each store is reachable or safely diverted; with the
        log, when NATS is connected (the front: publishes succeed and a worker runs)."""
        if self.started_at is None or self.failure is not None:
            return False
        if self.role == "front":
            return (
                self.publisher is not None
                and self.publisher.healthy
                and self.workers is not None
                and any(w["alive"] for w in self.workers.status())
            )
        if self.role == "worker" and not (self._nc is not None and self._nc.is_connected):
            return False
        return (
            all(ref is not None and ref.is_alive() for ref in [*self.shards, self.batcher])
            and self.storage is not None
            and self.storage.is_alive()
        )
