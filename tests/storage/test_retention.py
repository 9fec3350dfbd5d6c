"""The housekeeping task on real servers, with an injected clock: partitions ahead, retention,
soft delete, the live picture's leavers; one store down does not stop the other's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aisfusion.config import PostgresConfig, RetentionConfig
from aisfusion.messages import HistoryBatch, Position, VesselSeen
from aisfusion.metrics import Metrics
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.partitions import DAY_S, day_of
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore
from aisfusion.storage.retention import Maintenance
from tests.dbs import fresh_database, unique_name

NOW = 1_700_000_000.0
TODAY = day_of(NOW)


def position(mmsi: int, ts: float) -> Position:
    return Position(mmsi, ts, 55.0, 10.0, None, None, None, None, 1, "s", None, ts)


@pytest.fixture
async def stores(servers: Any) -> AsyncIterator[tuple[PostgresStore, RedisStore]]:
    pg = PostgresStore(await fresh_database(servers.postgres_url), PostgresConfig())
    rd = RedisStore(servers.redis_url, unique_name("ret") + ":")
    await pg.connect()
    await pg.migrate()
    await rd.connect()
    yield pg, rd
    await pg.close()
    await rd.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_one_run_does_all_four_jobs(stores: tuple[PostgresStore, RedisStore]) -> None:
    pg, rd = stores
    # History over the last 10 days; vessels last seen 40, 20 and 0 days ago; live vessels
    # last heard 2 h and 10 min ago.
    await pg.write(
        HistoryBatch(
            1,
            [position(1, NOW - d * DAY_S) for d in range(10)],
            [
                VesselSeen(1, NOW - 40 * DAY_S, NOW - 40 * DAY_S, None),
                VesselSeen(2, NOW - 20 * DAY_S, NOW - 20 * DAY_S, None),
                VesselSeen(3, NOW, NOW, None),
            ],
        )
    )
    await rd.write_live([position(7, NOW - 7200), position(8, NOW - 600)])
    metrics = Metrics(CollectorRegistry())
    config = RetentionConfig(
        partitions_ahead=2, history_days=7, vessel_inactive_days=30, live_inactive_s=3600
    )
    maintenance = Maintenance(config, pg, rd, metrics, clock=lambda: NOW)
    report = await maintenance.run_once()
    assert report.errors == {}
    assert len(report.created) == 2  # tomorrow and the day after
    # Dropped: the days whose every row is over 7 days old (8 and 9 days ago); 7 days ago
    # still has rows younger than that.
    assert len(report.dropped) == 2
    assert [p.first_day for p in await pg.partitions()] == list(range(TODAY - 7, TODAY + 3))
    assert await pg.fetchval("SELECT count(*) FROM positions") == 8
    assert report.soft_deleted == 1 and await pg.vessel(1) is None
    assert await pg.vessel(2) is not None
    assert report.live_removed == 1 and await rd.live_mmsis() == [8]
    assert report.partitions == 10
    assert sample(metrics, "aisfusion_history_partitions") == 10
    assert sample(metrics, "aisfusion_history_partitions_changed_total", change="dropped") == 2
    assert sample(metrics, "aisfusion_vessels_soft_deleted_total") == 1
    assert sample(metrics, "aisfusion_live_vessels_removed_total") == 1
    assert sample(metrics, "aisfusion_maintenance_runs_total", task="live", outcome="ok") == 1
    # A second run has nothing left to do.
    again = await maintenance.run_once()
    assert (again.created, again.dropped, again.soft_deleted, again.live_removed) == ([], [], 0, 0)


async def test_zero_settings_keep_everything(stores: tuple[PostgresStore, RedisStore]) -> None:
    pg, rd = stores
    await pg.write(
        HistoryBatch(
            1, [position(1, NOW - 400 * DAY_S)], [VesselSeen(1, NOW - 400 * DAY_S, NOW, None)]
        )
    )
    await rd.write_live([position(7, NOW - 400 * DAY_S)])
    config = RetentionConfig(history_days=0, vessel_inactive_days=0, live_inactive_s=0)
    report = await Maintenance(config, pg, rd, clock=lambda: NOW).run_once()
    assert (report.dropped, report.soft_deleted, report.live_removed, report.errors) == (
        [],
        0,
        0,
        {},
    )
    assert await pg.fetchval("SELECT count(*) FROM positions") == 1
    assert await rd.live_count() == 1


async def test_a_store_down_does_not_stop_the_other(servers: Any) -> None:
    pg = PostgresStore("postgresql://postgres@127.0.0.1:1/none", PostgresConfig())  # never up
    rd = RedisStore(servers.redis_url, unique_name("ret") + ":")
    await rd.connect()
    try:
        await rd.write_live([position(7, NOW - 7200)])
        metrics = Metrics(CollectorRegistry())
        report = await Maintenance(RetentionConfig(), pg, rd, metrics, lambda: NOW).run_once()
        assert set(report.errors) == {"partitions", "soft_delete", "partitions_count"}
        assert report.live_removed == 1
        assert (
            sample(metrics, "aisfusion_maintenance_runs_total", task="partitions", outcome="error")
            == 1
        )
    finally:
        await rd.close()


async def test_runs_periodically_on_the_bridge_until_stopped(
    stores: tuple[PostgresStore, RedisStore],
) -> None:
    pg, _ = stores
    bridge = AsyncBridge("test-maintenance")
    bridge.start()
    # The stores' connections belong to the test's loop: the bridge gets its own.
    pg2 = PostgresStore(pg._url, PostgresConfig())
    bridge.run(pg2.connect())
    try:
        maintenance = Maintenance(RetentionConfig(interval_s=0.05), pg2, None, clock=lambda: NOW)
        maintenance.start(bridge)
        deadline = asyncio.get_running_loop().time() + 10
        while maintenance.last_run_at is None:
            assert asyncio.get_running_loop().time() < deadline, "maintenance never ran"
            await asyncio.sleep(0.02)
        maintenance.stop()
        maintenance.stop()  # idempotent
        assert maintenance.status()["last"]["errors"] == {}
        assert maintenance.status()["last"]["partitions"] == 4  # today and 3 ahead
    finally:
        bridge.run(pg2.close())
        bridge.stop()
