"""PostgreSQL history store against a real server: migrations, idempotent batches, upserts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from aisfusion.config import PostgresConfig
from aisfusion.messages import HistoryBatch, Position, StaticReport, VesselSeen
from aisfusion.storage import partitions, postgres
from aisfusion.storage.postgres import PostgresStore, migrations, reduce_vessels
from tests.dbs import fresh_database

T0 = 1_700_000_000.0


def position(mmsi: int, ts: float, lat: float = 55.0) -> Position:
    return Position(mmsi, ts, lat, 10.0, 12.3, 45.0, 44, 0, 1, "s1", "rx1", ts)


@pytest.fixture
async def store(servers: Any) -> AsyncIterator[PostgresStore]:
    url = await fresh_database(servers.postgres_url)
    s = PostgresStore(url, PostgresConfig())
    await s.connect()
    await s.migrate()
    yield s
    await s.close()


async def test_migrations_apply_once(store: PostgresStore) -> None:
    assert await store.migrate() == []
    assert [v for v, _, _ in migrations()] == [1, 2, 3]
    versions = await store.pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in versions] == [v for v, _, _ in migrations()]


async def test_batch_is_idempotent(store: PostgresStore) -> None:
    batch = HistoryBatch(
        1,
        [position(1, T0), position(1, T0 + 1.5), position(2, T0), position(1, T0)],
        [VesselSeen(1, T0, T0 + 1.5, None), VesselSeen(2, T0, T0, None)],
    )
    assert await store.write(batch) == 3  # the in-batch duplicate (1, T0) is dropped
    assert await store.write(batch) == 0  # a retried batch never duplicates rows
    rows = await store.pool.fetch(
        "SELECT mmsi, extract(epoch FROM ts) AS t FROM positions ORDER BY 1, 2"
    )
    assert [(r["mmsi"], float(r["t"])) for r in rows] == [(1, T0), (1, T0 + 1.5), (2, T0)]
    row = await store.pool.fetchrow(
        "SELECT * FROM positions WHERE mmsi = 1 AND ts = to_timestamp($1)", T0
    )
    assert (row["lat"], row["sog"], row["heading"], row["source"], row["station"]) == (
        55.0,
        pytest.approx(12.3),
        44,
        "s1",
        "rx1",
    )


async def test_vessels_upsert_merges_seen_and_static(store: PostgresStore) -> None:
    static = StaticReport(mmsi=7, ts=T0, name="ALPHA", callsign="AB12", imo=9000001, ship_type=70)
    await store.write(HistoryBatch(1, [], [VesselSeen(7, T0, T0 + 10, static)]))
    renamed = StaticReport(mmsi=7, ts=T0 + 60, name="BETA")
    await store.write(HistoryBatch(2, [], [VesselSeen(7, T0 - 5, T0 + 5, renamed)]))
    row = await store.pool.fetchrow(
        "SELECT name, callsign, imo, ship_type, extract(epoch FROM first_seen) AS f,"
        " extract(epoch FROM last_seen) AS l, deleted_at FROM vessels WHERE mmsi = 7"
    )
    assert (row["name"], row["callsign"], row["imo"], row["ship_type"]) == (
        "BETA",
        "AB12",
        9000001,
        70,
    )
    assert (float(row["f"]), float(row["l"]), row["deleted_at"]) == (T0 - 5, T0 + 10, None)


def test_reduce_vessels_keeps_one_sorted_entry_per_mmsi() -> None:
    a = StaticReport(mmsi=5, ts=T0, name="OLD")
    b = StaticReport(mmsi=5, ts=T0 + 1, name="NEW")
    reduced = reduce_vessels(
        [VesselSeen(9, T0, T0, None), VesselSeen(5, T0, T0 + 3, b), VesselSeen(5, T0 - 1, T0, a)]
    )
    assert [v.mmsi for v in reduced] == [5, 9]
    assert (reduced[0].first_seen, reduced[0].last_seen, reduced[0].static) == (T0 - 1, T0 + 3, b)


async def test_permanent_and_transient_errors_are_told_apart(servers: Any) -> None:
    from aisfusion.errors import PermanentStorageError, TransientStorageError

    bad = PostgresStore("postgresql://postgres@127.0.0.1:1/postgres", PostgresConfig())
    with pytest.raises(TransientStorageError):
        await bad.connect()
    url = await fresh_database(servers.postgres_url)
    store = PostgresStore(url, PostgresConfig())
    await store.connect()
    try:
        await store.migrate()
        out_of_range = Position(1, T0, 55.0, 10.0, None, None, 40000, None, 1, "s", None, T0)
        with pytest.raises(PermanentStorageError):
            await store.write(HistoryBatch(1, [out_of_range], []))
    finally:
        await store.close()
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT count(*) FROM positions") == 0
    await conn.close()


# -- partitions, retention, soft delete, the read side ------------------------------------------

DAY = partitions.DAY_S
D0 = int(T0 // DAY)  # the UTC day of T0 (2023-11-14)


async def partition_names(store: PostgresStore) -> list[str]:
    return [p.name for p in await store.partitions()]


async def test_positions_are_partitioned_by_day_created_on_demand(store: PostgresStore) -> None:
    batch = HistoryBatch(
        1,
        [position(1, T0), position(1, T0 + DAY), position(2, T0 + 2 * DAY + 5)],
        [VesselSeen(1, T0, T0 + DAY, None)],
    )
    assert await store.write(batch) == 3
    assert await partition_names(store) == [
        "positions_20231114",
        "positions_20231115",
        "positions_20231116",
    ]
    assert await store.write(batch) == 0  # still idempotent across partitions
    per_partition = await store.pool.fetch(
        "SELECT tableoid::regclass::text AS part, count(*) AS n"
        " FROM positions GROUP BY 1 ORDER BY 1"
    )
    assert [(r["part"], r["n"]) for r in per_partition] == [
        ("positions_20231114", 1),
        ("positions_20231115", 1),
        ("positions_20231116", 1),
    ]


async def test_migration_moves_rows_of_the_unpartitioned_table(servers: Any) -> None:
    url = await fresh_database(servers.postgres_url)
    conn = await asyncpg.connect(url)
    try:
        [(_, _, initial), *_] = migrations()
        await conn.execute(initial)
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now());"
            " INSERT INTO schema_migrations (version, name) VALUES (1, 'initial')"
        )
        await conn.executemany(
            "INSERT INTO positions (mmsi, ts, lat, lon, msg_type, source)"
            " VALUES ($1, to_timestamp($2), 1, 2, 1, 's')",
            [(1, T0), (1, T0 + 60), (2, T0 + DAY), (3, T0 + 4 * DAY)],
        )
    finally:
        await conn.close()
    store = PostgresStore(url, PostgresConfig())
    await store.connect()
    try:
        assert await store.migrate() == [2, 3]
        assert await partition_names(store) == [
            "positions_20231114",
            "positions_20231115",
            "positions_20231118",
        ]
        assert await store.fetchval("SELECT count(*) FROM positions") == 4
        assert await store.write(HistoryBatch(1, [position(1, T0 + 60)], [])) == 0
        assert await store.fetchval("SELECT count(*) FROM active_vessels") == 0
    finally:
        await store.close()


def test_partition_plan_aligns_and_clips_to_the_gaps() -> None:
    plan = partitions.plan
    week = 7
    assert plan(D0, 1, []) == partitions.Partition(D0, D0 + 1, "positions_20231114")
    first, end = partitions.aligned(D0, week)
    assert first <= D0 < end == first + week and first % week == 0
    # Daily partitions exist inside D0's week; a weekly one fills only the gap it falls in.
    existing = [
        partitions.Partition(first + 1, first + 2, "a"),
        partitions.Partition(first + 4, first + 5, "b"),
    ]
    name = partitions.partition_name
    assert plan(first + 2, week, existing) == partitions.Partition(
        first + 2, first + 4, name(first + 2)
    )
    assert plan(first, week, existing) == partitions.Partition(first, first + 1, name(first))
    assert plan(first + 4, week, existing) is None
    assert plan(first + 6, week, existing) == partitions.Partition(first + 5, end, name(first + 5))


async def test_changing_partition_days_never_overlaps(servers: Any) -> None:
    url = await fresh_database(servers.postgres_url)
    daily = PostgresStore(url, PostgresConfig(), partition_days=1)
    await daily.connect()
    weekly = PostgresStore(url, PostgresConfig(), partition_days=7)
    await weekly.connect()
    try:
        await daily.migrate()
        await daily.ensure_partitions({D0, D0 + 3})
        await weekly.ensure_partitions(set(range(D0 - 7, D0 + 14)))
        parts = await weekly.partitions()
        covered = [d for p in parts for d in range(p.first_day, p.end_day)]
        assert len(covered) == len(set(covered))  # no overlap
        assert set(range(D0 - 7, D0 + 14)) <= set(covered)
        # Weeks aligned on the epoch (D0 is day 5 of its week), clipped around the two days.
        assert [(p.first_day - D0, p.end_day - D0) for p in parts] == [
            (-12, -5), (-5, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 9), (9, 16)
        ]  # fmt: skip
    finally:
        await daily.close()
        await weekly.close()


async def test_retention_drops_whole_old_partitions(
    store: PostgresStore, servers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await store.write(HistoryBatch(1, [position(1, T0 + d * DAY) for d in range(5)], []))
    dropped = await store.drop_partitions_before(D0 + 3)
    assert [p.name for p in dropped] == [
        "positions_20231114",
        "positions_20231115",
        "positions_20231116",
    ]
    assert await store.fetchval("SELECT count(*) FROM positions") == 2
    assert await store.drop_partitions_before(D0 + 3) == []
    # Another instance that still believes the day has a partition finds out and recreates it.
    other = PostgresStore(store._url, PostgresConfig())
    await other.connect()
    caplog.set_level(logging.INFO, logger="aisfusion.storage.postgres")
    try:
        await other.write(HistoryBatch(2, [position(2, T0 + 3 * DAY)], []))
        assert [p.name for p in await store.drop_partitions_before(D0 + 4)] == [
            "positions_20231117"
        ]
        assert await other.write(HistoryBatch(3, [position(3, T0 + 3 * DAY)], [])) == 1
        assert "a partition of batch 3 is gone; rechecking" in caplog.text
    finally:
        await other.close()


async def test_track_of_one_vessel_uses_its_key_and_prunes_other_days(
    store: PostgresStore,
) -> None:
    rows = [
        position(m, T0 + d * DAY + s)
        for d in range(3)
        for m in range(50)
        for s in range(0, 6000, 30)
    ]
    for i in range(0, len(rows), 10_000):
        await store.write(HistoryBatch(i, rows[i : i + 10_000], []))
    await store.pool.execute("ANALYZE positions")
    track = await store.track(7, T0 + DAY + 600, T0 + DAY + 1200)
    assert [r["ts"] for r in track] == [T0 + DAY + s for s in range(600, 1200, 30)]
    assert set(track[0]) == {
        "ts", "lat", "lon", "sog", "cog", "heading", "nav_status", "msg_type", "source", "station"
    }  # fmt: skip
    assert len(await store.track(7, T0, T0 + 3 * DAY, limit=5)) == 5
    # The store's own query, with the parameters track() gives it.
    plan = "\n".join(
        r[0]
        for r in await store.pool.fetch(
            "EXPLAIN " + postgres._TRACK,
            7,
            postgres._utc(T0 + DAY + 600),
            postgres._utc(T0 + DAY + 1200),
            10_000,
        )
    )
    assert "positions_20231115" in plan
    assert "positions_20231114" not in plan and "positions_20231116" not in plan
    assert "Index" in plan and "pkey" in plan, plan


async def test_soft_delete_and_automatic_restore(store: PostgresStore) -> None:
    static = StaticReport(mmsi=1, ts=T0, name="OLD TIMER")
    await store.write(
        HistoryBatch(
            1,
            [],
            [VesselSeen(1, T0, T0, static), VesselSeen(2, T0, T0 + 10 * DAY, None)],
        )
    )
    now = T0 + 31 * DAY
    assert await store.soft_delete_inactive(now - 30 * DAY, now) == 1
    assert await store.soft_delete_inactive(now - 30 * DAY, now) == 0
    assert await store.vessel(1) is None  # left out unless asked
    gone = await store.vessel(1, include_deleted=True)
    assert gone is not None and gone["name"] == "OLD TIMER" and gone["deleted_at"] == now
    assert (await store.vessel(2) or {}).get("deleted_at") is None
    assert sorted(await store.vessels([1, 2, 3])) == [2]
    assert sorted(await store.vessels([1, 2], include_deleted=True)) == [1, 2]
    assert await store.fetchval("SELECT count(*) FROM active_vessels") == 1
    # It reports again: restored, static data kept.
    await store.write(HistoryBatch(2, [position(1, now)], [VesselSeen(1, now, now, None)]))
    back = await store.vessel(1)
    assert back is not None and back["deleted_at"] is None and back["name"] == "OLD TIMER"
    assert back["last_seen"] == now


async def test_soft_delete_skips_a_vessel_a_writer_holds(store: PostgresStore) -> None:
    await store.write(HistoryBatch(1, [], [VesselSeen(m, T0, T0, None) for m in (1, 2, 3)]))
    conn = await asyncpg.connect(store._url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT * FROM vessels WHERE mmsi = 2 FOR UPDATE")
            # Returns at once, without waiting for the lock.
            assert await store.soft_delete_inactive(T0 + 1, T0 + DAY, chunk=1) == 2
    finally:
        await conn.close()
    assert await store.vessel(2) is not None
    assert await store.vessel(1) is None and await store.vessel(3) is None


@pytest.mark.parametrize("transaction_pooling", [False, True])
async def test_transaction_pooling_mode_keeps_no_prepared_statement(
    servers: Any, transaction_pooling: bool
) -> None:
    url = await fresh_database(servers.postgres_url)
    config = PostgresConfig(pool_min=1, pool_max=1, transaction_pooling=transaction_pooling)
    store = PostgresStore(url, config)
    await store.connect()
    try:
        await store.migrate()
        await store.write(HistoryBatch(1, [position(1, T0)], [VesselSeen(1, T0, T0, None)]))
        await store.track(1, T0, T0 + 1)
        kept = await store.fetchval(
            "SELECT count(*) FROM pg_prepared_statements"
            " WHERE statement NOT LIKE '%pg_prepared_statements%'"  # not this query itself
        )
    finally:
        await store.close()
    assert (kept == 0) is transaction_pooling
