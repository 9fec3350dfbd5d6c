"""The shard hosting vessel entities: decisions downstream, outcomes to the source-quality
actor, and the entities' lifecycle (idle passivation, LRU bound, rehydration from Redis, static
data from PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pykka
import pytest

from aisfusion.actors.fusion import KNOT_MPS
from aisfusion.actors.shard import ShardActor, ShardStats, VesselQuery, known_by_shard
from aisfusion.config import ActorsConfig, FusionConfig, PostgresConfig
from aisfusion.messages import (
    Decisions,
    HistoryBatch,
    Position,
    RawBatch,
    RawMessage,
    SourceOutcomes,
    SourceWeights,
    StaticReport,
    Tick,
    VesselSeen,
)
from aisfusion.metrics import Metrics
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore
from tests.actors.test_vessel import MMSI, NOW, five, north, pos, raw
from tests.dbs import fresh_database, unique_name
from tests.waiting import wait_until


class Inbox:
    """Stands in for a downstream actor: records what it is told."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lock = threading.Lock()

    def tell(self, message: Any) -> None:
        with self.lock:
            self.items.append(message)

    def positions(self) -> list[Position]:
        return [p for d in self.items if isinstance(d, Decisions) for p in d.positions]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(
        self,
        store: RedisStore | None,
        bridge: AsyncBridge | None,
        *,
        static_store: PostgresStore | None = None,
        **actors: Any,
    ):
        self.history, self.live, self.sources = Inbox(), Inbox(), Inbox()
        self.metrics = Metrics()
        self.clock = Clock(NOW)
        self.config = msgspec.structs.replace(ActorsConfig(), **actors)
        self.store, self.bridge = store, bridge
        self.static_store = static_store

    def start(self, known: set[int] | None = None) -> pykka.ActorRef[Any]:
        return ShardActor.start(
            0,
            self.config,
            self.history,  # type: ignore[arg-type]
            self.live,  # type: ignore[arg-type]
            self.metrics,
            self.clock,
            sources=self.sources,  # type: ignore[arg-type]
            store=self.store,
            bridge=self.bridge,
            static_store=(
                (self.static_store, self.bridge)
                if self.static_store is not None and self.bridge is not None
                else None
            ),
            known=known,
        )

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def send(shard: pykka.ActorRef[Any], *messages: RawMessage) -> dict[str, Any]:
    shard.tell(RawBatch(list(messages)))
    stats: dict[str, Any] = shard.ask(ShardStats(), timeout=10)  # FIFO: the batch is done
    return stats


def other(mmsi: int, ts: float) -> RawMessage:
    return raw(pos(56.0, 11.0), ts, mmsi=mmsi)


@pytest.fixture
def bridge() -> Iterator[AsyncBridge]:
    bridge = AsyncBridge("test-storage-loop")
    bridge.start()
    try:
        yield bridge
    finally:
        pykka.ActorRegistry.stop_all()
        bridge.stop()


@pytest.fixture
def store(redis_url: str, bridge: AsyncBridge) -> Iterator[RedisStore]:
    store = RedisStore(redis_url, unique_name("shard") + ":")
    bridge.run(store.connect())
    try:
        yield store
    finally:
        bridge.run(store.close())


@pytest.fixture
def history(pg_url: str, bridge: AsyncBridge) -> Iterator[PostgresStore]:
    store = PostgresStore(bridge.run(fresh_database(pg_url)), PostgresConfig())
    bridge.run(store.connect())
    bridge.run(store.migrate())
    try:
        yield store
    finally:
        bridge.run(store.close())


def test_decisions_go_downstream_and_outcomes_to_the_source_quality_actor() -> None:
    rig = Rig(None, None)
    shard = rig.start()
    try:
        # The shard subscribes to weight snapshots when it starts.
        assert [type(m).__name__ for m in rig.sources.items] == ["Subscribe"]
        first = raw(pos(55.0, 10.0), NOW)
        stats = send(shard, first, msgspec.structs.replace(first, source="s2"))
        assert stats["vessels"] == 1 and stats["processed"] == 2
        [p] = rig.live.positions()
        assert rig.history.positions() == [p]
        [outcomes] = [m for m in rig.sources.items if isinstance(m, SourceOutcomes)]
        by_source = {t.source: t for t in outcomes.tallies}
        assert by_source["s2"].outcomes == {"witness": 1}
        assert rig.sample("aisfusion_feed_overlap_total", source="s2", other="s1") == 1.0
        assert rig.sample("aisfusion_live_decisions_total") == 1.0
        vessel = shard.ask(VesselQuery(MMSI))
        assert vessel["support"] == ["s1", "s2"]
        assert vessel["last"]["lat"] == pytest.approx(55.0)
    finally:
        shard.stop()


def test_weight_snapshots_are_swapped_in() -> None:
    rig = Rig(None, None)
    shard = rig.start()
    try:
        send(shard, raw(pos(55.0, 10.0), NOW, source="good"))
        shard.tell(SourceWeights(1, {"good": 1.0, "bad": 0.01}, frozenset({"bad"})))
        send(shard, raw(pos(55.0, 10.001), NOW + 5, source="bad"))
        assert len(rig.live.positions()) == 1  # the demoted source did not win
        assert len(rig.history.positions()) == 2  # but its observation is history
    finally:
        shard.stop()


def test_idle_vessels_are_passivated_by_class_and_come_back_with_their_decision() -> None:
    rig = Rig(None, None, passivate_min_s=120.0, passivate_intervals=3.0)
    shard = rig.start()
    moving, anchored = MMSI, MMSI + 1
    try:
        send(shard, raw(pos(55.0, 10.0), NOW))  # 10 s reports: idle after max(120, 30) s
        send(shard, raw(pos(56.0, 11.0, speed=0.0, status=1), NOW, mmsi=anchored))
        rig.clock.now = NOW + 130
        shard.tell(Tick(0.0))
        stats = send(shard)
        assert stats["vessels"] == 1  # the anchored one (3 min reports) stays 9 minutes
        assert stats["passivations_idle"] == 1
        assert shard.ask(VesselQuery(moving)) is None
        rig.clock.now = NOW + 530
        shard.tell(Tick(0.0))
        assert send(shard)["vessels"] == 1
        rig.clock.now = NOW + 550
        shard.tell(Tick(0.0))
        assert send(shard)["vessels"] == 0
        assert rig.sample("aisfusion_vessel_passivations_total", reason="idle") == 2.0
        assert rig.sample("aisfusion_vessels_active") == 0.0
        # It reports again: the old decision is back (a late position does not replace it).
        live_before = len(rig.live.positions())
        send(shard, raw(pos(55.0, 9.9975), NOW - 30))
        assert len(rig.live.positions()) == live_before
        vessel = shard.ask(VesselQuery(moving))
        assert vessel["last"]["ts"] == NOW
        assert rig.sample("aisfusion_vessel_rehydrations_total", result="hit") == 1.0
        assert rig.sample("aisfusion_vessel_activations_total") == 3.0
        assert rig.sample("aisfusion_vessel_rejected_total", reason="decode_error") == 0.0
    finally:
        shard.stop()


def test_live_vessels_are_bounded_least_recently_used_first() -> None:
    rig = Rig(None, None, max_vessels=2)
    shard = rig.start()
    try:
        for k in range(3):
            stats = send(shard, other(MMSI + k, NOW))
        assert stats["vessels"] == 2
        assert shard.ask(VesselQuery(MMSI)) is None  # the least recently used
        send(shard, other(MMSI + 1, NOW + 1))  # touch: now MMSI + 2 is the oldest
        send(shard, other(MMSI, NOW + 1))
        assert shard.ask(VesselQuery(MMSI + 2)) is None
        assert shard.ask(VesselQuery(MMSI + 1)) is not None
        assert rig.sample("aisfusion_vessel_passivations_total", reason="lru") == 2.0
        assert rig.sample("aisfusion_vessels_active") == 2.0
    finally:
        shard.stop()


def test_passivation_and_rehydration_from_redis_keep_the_decision(
    store: RedisStore, bridge: AsyncBridge
) -> None:
    rig = Rig(store, bridge)
    shard = rig.start()
    decided = raw(pos(55.0, 10.0), NOW)
    try:
        send(shard, decided)
    finally:
        shard.stop()
    [p] = rig.live.positions()
    bridge.run(store.write_live([p]))  # what the live writer does with it

    # A new shard (after a restart): the vessel has a record, so it is rehydrated from it.
    known = known_by_shard(bridge.run(store.live_mmsis()), 1)[0]
    assert known == {MMSI}
    rig = Rig(store, bridge)
    shard = rig.start(known)
    try:
        send(shard, raw(pos(55.0, 9.9975), NOW - 30))  # older than the saved decision
        assert rig.live.positions() == []
        assert [h.ts for h in rig.history.positions()] == [NOW - 30]
        vessel = shard.ask(VesselQuery(MMSI))
        assert (vessel["last"]["ts"], vessel["last"]["lat"], vessel["last"]["lon"]) == (
            p.ts,
            p.lat,
            p.lon,
        )
        # The restored decision gates: a jump from another source is held back.
        send(shard, raw(pos(north(55.0, 30_000), 10.0), NOW + 10, source="s2"))
        assert rig.live.positions() == []
        assert rig.sample("aisfusion_vessel_rejected_total", reason="jump") == 1.0
        send(shard, other(MMSI + 7, NOW))  # never seen: a miss, without a lookup
        assert rig.sample("aisfusion_vessel_rehydrations_total", result="hit") == 1.0
        assert rig.sample("aisfusion_vessel_rehydrations_total", result="miss") == 1.0
    finally:
        shard.stop()


def test_when_redis_cannot_be_read_vessels_start_fresh(bridge: AsyncBridge) -> None:
    store = RedisStore("redis://127.0.0.1:1/0", "x:")  # never connected
    rig = Rig(store, bridge)
    shard = rig.start(known={MMSI})
    try:
        send(shard, raw(pos(55.0, 10.0), NOW))
        assert len(rig.live.positions()) == 1
        assert rig.sample("aisfusion_vessel_rehydrations_total", result="error") == 1.0
    finally:
        shard.stop()


def test_static_data_comes_back_from_postgres_when_a_vessel_actor_is_created(
    history: PostgresStore, bridge: AsyncBridge
) -> None:
    # What an earlier run stored: a high-speed craft (ship type 40), first seen an hour ago.
    known = StaticReport(MMSI, NOW - 600, name="FAST ONE", callsign="OXAB2", ship_type=40)
    seen = VesselSeen(MMSI, NOW - 3600, NOW - 60, known)
    bridge.run(history.write(HistoryBatch(1, [], [seen])))
    rig = Rig(None, bridge, static_store=history)
    shard = rig.start()
    try:
        send(shard, raw(pos(55.0, 10.0, speed=0.5), NOW))
        wait_until(lambda: shard.ask(VesselQuery(MMSI))["static"] is not None, "static data")
        vessel = shard.ask(VesselQuery(MMSI))
        assert (vessel["static"]["name"], vessel["static"]["ship_type"]) == ("FAST ONE", 40)
        assert vessel["first_seen"] == NOW - 3600
        # It gates as a high-speed craft: 60 kn in 50 s is no jump for one.
        metres_60kn = 60 * KNOT_MPS * 50 + FusionConfig().jump_allowance_m
        send(shard, raw(pos(north(55.0, metres_60kn), 10.0), NOW + 50, source="s2"))
        assert rig.sample("aisfusion_vessel_rejected_total", reason="jump") == 0.0
        # Its identity changes only once confirmed, as if the service had never stopped.
        send(shard, raw(five(shipname="NEW NAME", ship_type=40), NOW + 60))
        assert shard.ask(VesselQuery(MMSI))["static"]["name"] == "FAST ONE"
        send(shard, other(MMSI + 7, NOW))  # never stored: a miss
        wait_until(
            lambda: rig.sample("aisfusion_vessel_static_loads_total", result="miss") == 1.0,
            "the miss",
        )
        assert rig.sample("aisfusion_vessel_static_loads_total", result="hit") == 1.0
    finally:
        shard.stop()


def test_when_postgres_cannot_be_read_vessels_start_without_static_data(
    bridge: AsyncBridge,
) -> None:
    unreachable = PostgresStore("postgresql://postgres@127.0.0.1:1/postgres", PostgresConfig())
    rig = Rig(None, bridge, static_store=unreachable)  # never connected: every read fails
    shard = rig.start()
    try:
        send(shard, raw(pos(55.0, 10.0), NOW))
        assert len(rig.live.positions()) == 1
        wait_until(
            lambda: rig.sample("aisfusion_vessel_static_loads_total", result="error") == 1.0,
            "the failed read",
        )
        # For a while after, new vessels do not wait on PostgreSQL: no read, counted.
        stats = send(shard, other(MMSI + 7, NOW))
        assert stats["static_skipped"] == 1
        assert rig.sample("aisfusion_vessel_static_loads_total", result="error") == 1.0
    finally:
        shard.stop()
