"""Partition leases on the real NATS server: every partition has one holder, a new worker gets
its share handed over, and a holder that stops renewing (a frozen process) has stopped
considering itself the owner before anyone else takes the partition."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import nats
import pytest

from aisfusion.config import NatsConfig, WorkersConfig
from aisfusion.jetstream.leases import Leases, rendezvous
from aisfusion.metrics import Metrics
from tests.dbs import unique_name

PARTITIONS = 8
WORKERS = WorkersConfig(lease_ttl_s=1.0, renew_interval_s=0.2)


def test_rendezvous_is_stable_and_spreads_the_partitions() -> None:
    workers = ["a", "b", "c"]
    owners = [rendezvous(p, workers) for p in range(300)]
    assert owners == [rendezvous(p, list(reversed(workers))) for p in range(300)]
    assert min(Counter(owners).values()) > 60  # about a third each
    # A worker leaving moves only its own partitions.
    without_c = [rendezvous(p, ["a", "b"]) for p in range(300)]
    assert all(o == w for o, w in zip(owners, without_c, strict=True) if o != "c")
    assert rendezvous(0, []) is None


class Holder:
    """A Leases with a journal of what it was given."""

    def __init__(self, url: str, config: NatsConfig, name: str) -> None:
        self.acquired: dict[int, float] = {}
        self.released: list[int] = []
        self.on_acquire: list[object] = []
        self.leases = Leases(
            lambda: nats.connect(url),
            config,
            WORKERS,
            name,
            Metrics(),
            self._acquired,
            self._released,
        )

    async def _acquired(self, part: int, epoch: int) -> None:
        for check in self.on_acquire:
            check(part)  # type: ignore[operator]
        self.acquired[part] = time.monotonic()

    async def _released(self, part: int, handed_over: bool) -> None:
        self.released.append(part)


async def until(condition: object, what: str, limit_s: float = 15.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def config() -> NatsConfig:
    return NatsConfig(stream=unique_name("L").replace("_", "-")[:60], partitions=PARTITIONS)


async def test_a_new_worker_gets_its_share_handed_over(nats_url: str) -> None:
    cfg = config()
    a, b = Holder(nats_url, cfg, "worker-a"), Holder(nats_url, cfg, "worker-b")
    await a.leases.start()
    await until(lambda: len(a.leases.held) == PARTITIONS, "a to hold every partition")
    epochs_a = dict(a.leases.epochs)
    # b may take a partition only once a has let it go.
    b.on_acquire.append(
        lambda part: pytest.fail(f"a still holds {part}") if part in a.leases.held else None
    )
    await b.leases.start()
    wanted_b = {
        p for p in range(PARTITIONS) if rendezvous(p, ["worker-a", "worker-b"]) == "worker-b"
    }
    assert wanted_b  # not vacuous
    await until(lambda: set(b.leases.held) == wanted_b, "b to get its share")
    assert set(a.leases.held) == set(range(PARTITIONS)) - wanted_b
    assert sorted(a.released) == sorted(wanted_b)
    # Every handed-over partition has a newer epoch than it had.
    assert all(b.leases.epochs[p] > epochs_a[p] for p in wanted_b)
    await b.leases.stop()
    await until(lambda: len(a.leases.held) == PARTITIONS, "a to take everything back")
    await a.leases.stop()


async def test_a_frozen_holder_stops_owning_before_anyone_takes_over(nats_url: str) -> None:
    cfg = config()
    a, b = Holder(nats_url, cfg, "worker-a"), Holder(nats_url, cfg, "worker-b")
    await a.leases.start()
    await until(lambda: len(a.leases.held) == PARTITIONS, "a to hold every partition")
    epochs_a = dict(a.leases.epochs)
    # Freeze a: it stops renewing (as a paused or partitioned process would) but still
    # believes it holds its leases until `valid` says otherwise.
    a.leases.freeze()
    b.on_acquire.append(
        lambda part: (
            pytest.fail(f"a still considers {part} its own") if a.leases.valid(part) else None
        )
    )
    await b.leases.start()
    await until(lambda: len(b.leases.held) == PARTITIONS, "b to take every partition")
    assert all(b.leases.epochs[p] > epochs_a[p] for p in range(PARTITIONS))
    assert not any(a.leases.valid(p) for p in range(PARTITIONS))
    await b.leases.stop()
    await a.leases.stop()  # its thread and connection (giving back what it lost changes nothing)
