"""Gauges computed when Prometheus scrapes: mailbox depths, readiness and Redis memory.

Each is a callback on the gauge, so nothing polls between scrapes; Redis memory is read at
most every `REDIS_MEMORY_EVERY_S` however often the port is scraped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pykka

from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.redis import RedisStore
from aisfusion.supervisors.breaker import BreakerState
from aisfusion.supervisors.storage import WRITERS
from aisfusion.supervisors.supervisor import Slot, mailbox_depth

if TYPE_CHECKING:  # the pipeline calls in with itself
    from aisfusion.pipeline import Pipeline

REDIS_MEMORY_EVERY_S = 5.0


class RedisMemory:
    """Redis (used, max) memory in bytes, read at most every few seconds (NaN: unknown)."""

    def __init__(self, store: RedisStore, bridge: AsyncBridge) -> None:
        self._store = store
        self._bridge = bridge
        self._lock = threading.Lock()
        self._cached: tuple[float, float, float] | None = None  # used, max, read at

    def read(self) -> tuple[float, float]:
        with self._lock:
            now = time.monotonic()
            cached = self._cached
            if cached is not None and now - cached[2] < REDIS_MEMORY_EVERY_S:
                return cached[0], cached[1]
            used, limit = (cached[0], cached[1]) if cached else (math.nan, math.nan)
            if self._bridge.running:
                future = self._bridge.submit(self._store.memory())
                try:
                    got = future.result(1.0)
                    used, limit = float(got[0]), float(got[1])
                except Exception:  # Redis down: the breaker and its alert say so
                    future.cancel()
            self._cached = (used, limit, now)
            return used, limit


def watch(service: Pipeline, live: Slot) -> None:
    """Attach the scrape-time callbacks to `service`'s metrics (after its actors started)."""
    m = service.metrics
    assert service.storage is not None
    assert service.redis is not None
    writer = cast(Slot, service.storage.proxy().slot("postgres_writer").get())

    def depth(refs: Callable[[], list[pykka.ActorRef[Any] | None]]) -> Callable[[], float]:
        return lambda: float(sum(mailbox_depth(ref) or 0 for ref in refs()))

    depths: dict[str, Callable[[], list[pykka.ActorRef[Any] | None]]] = {
        "shard": lambda: list(service.shards),
        "sources": lambda: [service.sources],
        "batcher": lambda: [service.batcher],
        "storage": lambda: [service.storage],
        "postgres_writer": lambda: [writer.ref],
        "live_writer": lambda: [live.ref],
    }
    for actor, refs in depths.items():
        m.mailbox_messages.labels(actor).set_function(depth(refs))
    # Labelled series exist from the start (at 0), so rates and alerts see them.
    for name in service.breakers:
        for state in BreakerState:
            m.breaker_state.labels(name, str(state))
            m.breaker_transitions.labels(name, str(state))
    for name in WRITERS:
        m.writer_restarts.labels(name)
    for reason in ("idle", "lru"):
        m.vessel_passivations.labels(reason)
    m.ready.set_function(lambda: 1.0 if service.ready else 0.0)
    memory = RedisMemory(service.redis, service.bridge)
    m.redis_memory_used.set_function(lambda: memory.read()[0])
    m.redis_memory_max.set_function(lambda: memory.read()[1])
