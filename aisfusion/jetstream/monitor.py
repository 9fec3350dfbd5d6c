"""The front's view of the log, every second: the local workers kept running, and per partition
its owner (from the lease bucket) and lag (from its consumer), for /status, the shell and the
`aisfusion_partition_*` gauges."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from nats.aio.client import Client as Nats
from nats.js.errors import NotFoundError

from aisfusion.config import Config
from aisfusion.jetstream import log as jlog
from aisfusion.jetstream.leases import live_keys, open_buckets
from aisfusion.jetstream.workers import WorkerPool
from aisfusion.metrics import Metrics

logger = logging.getLogger(__name__)

_INTERVAL_S = 1.0


class LogMonitor:
    def __init__(self, nc: Nats, config: Config, metrics: Metrics, pool: WorkerPool) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._config = config
        self._metrics = metrics
        self._pool = pool
        self._task: asyncio.Task[None] | None = None
        self._snapshot: dict[str, Any] = {"partitions": [], "stream": None}
        self._buckets: tuple[Any, Any] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await jlog.cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while not jlog.stopping():
            self._pool.poll()
            try:
                await self.observe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: the publisher's metrics say so
                logger.debug("log monitor: %s", exc)
            await asyncio.sleep(_INTERVAL_S)

    async def observe(self) -> None:
        """Look at owners and lags now (also on demand: a drain waits for a fresh look)."""
        cfg, m = self._config.nats, self._metrics
        if self._buckets is None:
            self._buckets = await open_buckets(self._nc, cfg, self._config.workers.lease_ttl_s)
        leases, members = self._buckets
        held = await live_keys(self._js, jlog.leases_bucket(cfg), leases)
        owners = {key: value.decode() for key, value in held.items()}
        cards = await live_keys(self._js, jlog.members_bucket(cfg), members)
        workers = sorted(cards)
        m.workers_alive.set(len(workers))
        infos = await asyncio.gather(
            *(
                self._js.consumer_info(cfg.stream, jlog.consumer_name(cfg, part))
                for part in range(cfg.partitions)
            ),
            return_exceptions=True,
        )
        partitions = []
        for part, info in enumerate(infos):
            owner = owners.get(f"p{part}")
            lag: int | None = None
            if isinstance(info, NotFoundError):
                lag = None  # never consumed yet
            elif isinstance(info, BaseException):
                raise info
            else:
                lag = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            label = str(part)
            m.partition_owned.labels(label).set(1 if owner in workers else 0)
            if lag is not None:
                m.partition_lag.labels(label).set(lag)
            partitions.append({"partition": part, "owner": owner, "lag": lag})
        stream = await self._js.stream_info(cfg.stream)
        self._snapshot = {
            "observed_at": time.time(),
            "workers_alive": [{"id": w, **json.loads(cards[w])} for w in workers],
            "stream": {
                "name": cfg.stream,
                "messages": stream.state.messages,
                "bytes": stream.state.bytes,
            },
            "partitions": partitions,
        }

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot

    def drained_since(self, since: float) -> bool:
        """Whether an observation made after `since` saw every partition fully acknowledged
        (a partition nobody ever consumed has no consumer: then the stream must be empty of
        it, which only a workqueue stream shows; so an unconsumed partition counts as not
        drained)."""
        snap = self._snapshot
        return snap.get("observed_at", 0.0) > since and all(
            p["lag"] == 0 for p in snap["partitions"]
        )
