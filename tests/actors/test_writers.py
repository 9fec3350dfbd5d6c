"""The live writer against the real embedded Valkey: it writes as soon as Redis is free, with no
timer to wait for, conflates per vessel while a write is in flight, and a write that stalls
past its deadline is cancelled and retried, the newest positions written after it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from aisfusion.actors.writers import LiveWriterActor
from aisfusion.messages import Decisions, Flush, Position, Tick
from aisfusion.metrics import Metrics
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.redis import RedisStore
from aisfusion.supervisors.breaker import CircuitBreaker
from tests.dbs import unique_name
from tests.faults import StallingProxy
from tests.waiting import wait_until

T0 = 1_700_000_000.0


class Supervisor(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.told: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        self.told.append(message)


def position(mmsi: int, ts: float, lat: float = 55.0) -> Position:
    return Position(mmsi, ts, lat, 10.0, 5.0, 90.0, None, 0, 1, "feed", None, time.time())


class Rig:
    def __init__(self, redis_url: str) -> None:
        self.bridge = AsyncBridge()
        self.bridge.start()
        self.store = RedisStore(redis_url, unique_name("live") + ":")
        self.bridge.run(self.store.connect(), 10)
        self.metrics = Metrics()
        self.breaker = CircuitBreaker("redis", failure_threshold=100)
        self.supervisor = Supervisor.start()

    def writer(
        self,
        *,
        timeout_s: float = 10.0,
        min_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> Any:
        return LiveWriterActor.start(
            self.supervisor,
            self.store,
            self.bridge,
            self.metrics,
            self.breaker,
            min_interval_s,
            timeout_s,
            clock,
        )

    def record(self, mmsi: int) -> dict[str, str]:
        return self.bridge.run(self.store.live(mmsi), 10)

    def flushes(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "aisfusion_batch_flushes_total", {"store": "redis", "outcome": outcome}
        )
        return value or 0.0

    def close(self) -> None:
        pykka.ActorRegistry.stop_all()
        self.bridge.run(self.store.close(), 10)
        self.bridge.stop()


@pytest.fixture
def rig(servers: Any) -> Iterator[Rig]:
    r = Rig(servers.redis_url)
    yield r
    r.close()


@pytest.fixture
def proxied(servers: Any) -> Iterator[tuple[Rig, StallingProxy]]:
    """A rig whose Redis is reached through a proxy that can stall."""
    host, port = servers.redis_url.removeprefix("redis://").split("/")[0].split(":")
    proxy = StallingProxy(host, int(port))
    proxy.start()
    r = Rig(f"redis://127.0.0.1:{proxy.port}/0")
    yield r, proxy
    proxy.resume()
    r.close()
    proxy.stop()


def test_writes_without_waiting_for_a_tick(rig: Rig) -> None:
    writer = rig.writer(min_interval_s=3600.0)  # spacing applies between writes, not before one
    writer.tell(Decisions([position(1, T0)], []))
    wait_until(lambda: rig.flushes("ok") == 1, "the write")  # no Tick was ever sent
    assert float(rig.record(1)["ts"]) == T0


def test_conflates_while_a_write_is_in_flight_and_writes_the_newest(
    proxied: tuple[Rig, StallingProxy],
) -> None:
    rig, proxy = proxied
    writer = rig.writer()
    proxy.stall()
    writer.tell(Decisions([position(1, T0)], []))  # starts a write, which hangs
    for i in range(1, 50):
        writer.tell(Decisions([position(1, T0 + i), position(2, T0 + i)], []))
    writer.ask(Tick(0.0))  # every Decisions is in: they conflated behind the stalled write
    proxy.resume()
    assert writer.ask(Flush(), timeout=10) == 0
    assert float(rig.record(1)["ts"]) == T0 + 49
    assert float(rig.record(2)["ts"]) == T0 + 49
    assert rig.flushes("ok") == 2  # the stalled write, then one with the newest of each


def test_a_stalled_write_is_cancelled_at_its_deadline_and_retried(
    proxied: tuple[Rig, StallingProxy],
) -> None:
    rig, proxy = proxied
    clock = [100.0]
    writer = rig.writer(timeout_s=0.3, clock=lambda: clock[0])
    proxy.stall()
    writer.tell(Decisions([position(7, T0)], []))
    writer.ask(Tick(0.0))  # the write has started (and hangs), within its deadline
    clock[0] += 1.0
    writer.ask(Tick(0.0))  # past the deadline: cancelled, counted as a failure
    wait_until(lambda: rig.flushes("error") == 1, "the failed write")
    assert rig.breaker.last_error is not None and "timed out" in rig.breaker.last_error
    # The failed write was retried at once (still stalled); the newer position conflates.
    writer.tell(Decisions([position(7, T0 + 1)], []))
    proxy.resume()
    assert writer.ask(Flush(), timeout=10) == 0
    assert float(rig.record(7)["ts"]) == T0 + 1
    assert (rig.flushes("ok"), rig.flushes("error")) == (2, 1)
