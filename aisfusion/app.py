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
from aisfusion.actors.writers import LiveWriterActor, PostgresWriterActor
from aisfusion.config import Config
from aisfusion.feeds.tcp import start_tcp_server
from aisfusion.httpd import MetricsServer
from aisfusion.messages import Flush, Tick
from aisfusion.metrics import Metrics
from aisfusion.router import Router, shard_of
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.embedded import EmbeddedServers
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore

log = logging.getLogger(__name__)


class Ticker:
    """A thread that tells `Tick` to the actors that flush on time."""

    def __init__(self, interval_s: float, targets: list[pykka.ActorRef[Any]]) -> None:
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
                if target.is_alive():
                    target.tell(tick)

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
        self.batcher: pykka.ActorRef[Any] | None = None
        self.pg_writer: pykka.ActorRef[Any] | None = None
        self.live_writer: pykka.ActorRef[Any] | None = None
        self._ticker: Ticker | None = None
        self._feed: asyncio.Server | None = None
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

    async def _start(self) -> None:
        cfg = self.config
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
        self.pg_writer = PostgresWriterActor.start(self.postgres, self.bridge, m)
        self.live_writer = LiveWriterActor.start(
            self.redis, self.bridge, m, cfg.redis.flush_interval_s
        )
        self.batcher = BatcherActor.start(cfg.batcher, self.pg_writer)
        self.shards = [
            ShardActor.start(i, cfg.actors, self.batcher, self.live_writer, m)
            for i in range(cfg.actors.shards)
        ]
        tick = min(cfg.batcher.flush_interval_s, cfg.redis.flush_interval_s) / 2
        self._ticker = Ticker(
            max(0.005, min(tick, 0.25)), [self.batcher, self.live_writer, self.pg_writer]
        )
        self._ticker.start()
        self._feed = await start_tcp_server(cfg.feed, Router(self.shards, m), m)
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

    async def drain(self, deadline_s: float = 60.0) -> None:
        """Write everything accepted so far to Redis and Postgres before returning."""
        loop = asyncio.get_running_loop()

        def _drain() -> None:
            # Shards first (their mailboxes are FIFO: a stats reply means earlier batches are
            # done), then the batcher, whose Flush waits for the Postgres writer.
            for shard in self.shards:
                shard.ask(ShardStats(), timeout=deadline_s)
            if self.batcher is not None:
                self.batcher.ask(Flush(), timeout=deadline_s)
            if self.live_writer is not None:
                self.live_writer.ask(Flush(), timeout=deadline_s)

        await loop.run_in_executor(None, _drain)

    async def stop(self, *, drain: bool = True) -> None:
        """Stop everything in reverse start order; idempotent."""
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._feed is not None:
            self._feed.close()
            await self._feed.wait_closed()
            self._feed = None
        try:
            if drain and self.shards:
                await self.drain()
        finally:
            if self._ticker is not None:
                self._ticker.stop()
                self._ticker = None
            for ref in [*self.shards, self.batcher, self.live_writer, self.pg_writer]:
                if ref is not None:
                    ref.stop()
            self.shards, self.batcher, self.live_writer, self.pg_writer = [], None, None, None
            for store in (self.redis, self.postgres):
                if store is not None and self.bridge.running:
                    await asyncio.wrap_future(self.bridge.submit(store.close()))
            self.redis = self.postgres = None
            self.bridge.stop()
            if self.embedded is not None:
                self.embedded.stop()
                self.embedded = None

    # -- queries ---------------------------------------------------------------------------

    @property
    def feed_port(self) -> int:
        if self._feed is None:
            raise RuntimeError("feed listener not running")
        port: int = self._feed.sockets[0].getsockname()[1]
        return port

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
        """Read-only status for /status (blocking: call off the feed loop)."""
        actors = {
            "batcher": self.batcher,
            "postgres_writer": self.pg_writer,
            "live_writer": self.live_writer,
        }
        return {
            "started_at": self.started_at,
            "shards": [s.ask(ShardStats(), timeout=5) for s in self.shards if s.is_alive()],
            "actors": {name: bool(ref and ref.is_alive()) for name, ref in actors.items()},
            "embedded": self.embedded is not None,
        }

    @property
    def ready(self) -> bool:
        return self.started_at is not None and all(
            ref is not None and ref.is_alive()
            for ref in [*self.shards, self.batcher, self.live_writer, self.pg_writer]
        )
