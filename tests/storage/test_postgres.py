"""PostgreSQL history store against a real server: migrations, idempotent batches, upserts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from aisfusion.config import PostgresConfig
from aisfusion.messages import HistoryBatch, Position, StaticReport, VesselSeen
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
