"""The service: builds the actor tree, starts it in dependency order and stops it in reverse.

Start order: embedded servers (when no URLs are configured) → storage loop bridge → stores
(connect, migrate) → writers → batcher → shards → ticker → feed listener → metrics HTTP.
Stop is the reverse, in `finally` blocks, idempotent; a graceful stop drains every stage so
nothing accepted is left unwritten.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, cast

import pykka

from aisfusion.actors.batcher import BatcherActor
from aisfusion.actors.shard import ShardActor, ShardStats, VesselQuery
from aisfusion.actors.sources import SourcesActor, SourceTable
from aisfusion.config import Config
from aisfusion.feeds.manager import FeedSet
from aisfusion.httpd import MetricsServer
from aisfusion.messages import Flush, Tick
from aisfusion.metrics import Metrics
from aisfusion.router import Router, shard_of
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.embedded import EmbeddedServers
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore
from aisfusion.storage.spool import Spool
from aisfusion.supervisors.breaker import BreakerState, CircuitBreaker
from aisfusion.supervisors.storage import (
    BreakerCommand,
    DlqCommand,
    SpillInflight,
    StorageStatus,
    StorageSupervisor,
)
from aisfusion.supervisors.supervisor import Slot

log = logging.getLogger(__name__)


class Ticker:
    """A thread that tells `Tick` to the actors that flush on time (and supervise)."""

    def __init__(self, interval_s: float, targets: list[pykka.ActorRef[Any] | Slot]) -> None:
        self._interval = interval_s
        self._targets = targets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            tick = Tick(time.monotonic())
            for target in self._targets:
                try:
                    target.tell(tick)
                except pykka.ActorDeadError:
                    continue  # stopping, or being restarted by its supervisor

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class Service:
    """One aisfusion instance. Use `start()`, then `stop()` (or `async with`)."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.embedded: EmbeddedServers | None = None
        self.bridge = AsyncBridge()
        self.postgres: PostgresStore | None = None
        self.redis: RedisStore | None = None
        self.shards: list[pykka.ActorRef[Any]] = []
        self.sources: pykka.ActorRef[Any] | None = None
        self.batcher: pykka.ActorRef[Any] | None = None
        self.storage: pykka.ActorRef[Any] | None = None
        self.spool: Spool | None = None
        self.breakers: dict[str, CircuitBreaker] = {}
        self.failure: str | None = None
        self.failed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: Ticker | None = None
        self._feed: FeedSet | None = None
        self._http: MetricsServer | None = None
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
        self.postgres = PostgresStore(pg_url, cfg.postgres)
        self.redis = RedisStore(redis_url, cfg.redis.key_prefix)
        await asyncio.wrap_future(self.bridge.submit(self.postgres.connect()))
        await asyncio.wrap_future(self.bridge.submit(self.postgres.migrate()))
        await asyncio.wrap_future(self.bridge.submit(self.redis.connect()))

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
        )
        live = self.storage.proxy().slot("live_writer").get()
        self.batcher = BatcherActor.start(cfg.batcher, self.storage)
        self.sources = SourcesActor.start(cfg.sources, m)
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
                store=self.redis,
                bridge=self.bridge,
                shards=cfg.actors.shards,
            )
            for i in range(cfg.actors.shards)
        ]
        tick = min(cfg.batcher.flush_interval_s, cfg.redis.flush_interval_s) / 2
        self._ticker = Ticker(max(0.005, min(tick, 0.25)), [self.batcher, self.storage, live])
        self._ticker.start()
        log.info("supervision tree:\n%s", self.tree_text())
        self._feed = FeedSet()
        await self._feed.start(cfg.feed, Router(self.shards, m), m)
        self._http = MetricsServer(cfg.metrics.host, cfg.metrics.port, self)
        self._http.start()
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
            for store in (self.redis, self.postgres):
                if store is not None and self.bridge.running:
                    await asyncio.wrap_future(self.bridge.submit(store.close()))
            self.redis = self.postgres = None
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
        """Read-only status for /status and the shell (blocking: call off the feed loop)."""
        storage = self.storage.ask(StorageStatus(), timeout=5) if self.storage else None
        return {
            "started_at": self.started_at,
            "failure": self.failure,
            "shards": [s.ask(ShardStats(), timeout=5) for s in self.shards if s.is_alive()],
            "sources": self.sources.ask(SourceTable(), timeout=5) if self.sources else [],
            "batcher": bool(self.batcher and self.batcher.is_alive()),
            "storage": storage,
            "embedded": self.embedded is not None,
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

    def tree_text(self) -> str:
        """The supervision tree as printed at start."""
        cfg = self.config
        s = cfg.supervision
        lines = [
            "aisfusion (root: escalation stops the service, exit 1)",
            f"├── shards x{cfg.actors.shards} (vessel entities by MMSI)",
            "├── batcher",
            f"└── storage supervisor ({s.strategy}, max {s.max_restarts} restarts in "
            f"{s.within_s:g} s; breakers: postgres, redis; DLQ, spool {cfg.spool.dir})",
            "    ├── postgres_writer",
            "    └── live_writer",
        ]
        return "\n".join(lines)

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
