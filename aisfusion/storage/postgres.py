"""PostgreSQL history store (asyncpg): migrations, bulk position inserts, vessel upserts, the
read side (one vessel, a track) and the housekeeping the maintenance task calls.

Positions are written with COPY into a transaction-local staging table, then
``INSERT … SELECT … ON CONFLICT DO NOTHING``: COPY alone is faster but one duplicate key aborts
the whole batch, and a retried batch must never duplicate a row. `positions` is partitioned by
day (`storage/partitions.py`); a batch with a day that has no partition yet creates it first.
Vessels are upserted in one statement per batch, reduced to one row per MMSI and sorted by
MMSI, because concurrent writers that lock rows in different orders deadlock
(`bench/deadlock_stress.py` shows 0 deadlocks). Soft delete locks in the same order and skips
rows a writer holds.

With `transaction_pooling` (PgBouncer, pool_mode = transaction) no prepared statement is kept
on the server and every statement, reads included, runs inside an explicit transaction: the
pooler hands a server connection to a client for one transaction only, so an unnamed statement
prepared outside one could be gone when it is executed.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from datetime import UTC, datetime
from typing import Any

import asyncpg

from aisfusion.config import PostgresConfig
from aisfusion.errors import PermanentStorageError, TransientStorageError
from aisfusion.messages import HistoryBatch, Position, VesselSeen
from aisfusion.storage import partitions
from aisfusion.storage.partitions import Partition, day_of

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x41495346  # advisory lock id ("AISF"): one instance migrates at a time
_POSITION_COLUMNS = (
    "mmsi",
    "ts",
    "lat",
    "lon",
    "sog",
    "cog",
    "heading",
    "nav_status",
    "msg_type",
    "source",
    "station",
    "owner_epoch",
)
# Rows go in in key order: two writers inserting the same keys (a batch retried while its first
# attempt still runs) in different orders would each wait for the other's uncommitted row.
INSERT_POSITIONS = (
    "INSERT INTO positions SELECT * FROM positions_staging ORDER BY mmsi, ts ON CONFLICT DO NOTHING"
)
UPSERT_VESSELS = """
INSERT INTO vessels (mmsi, first_seen, last_seen, name, callsign, imo, ship_type, destination,
                     to_bow, to_stern, to_port, to_starboard)
SELECT * FROM unnest($1::integer[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::text[],
                     $6::integer[], $7::smallint[], $8::text[], $9::smallint[], $10::smallint[],
                     $11::smallint[], $12::smallint[])
ON CONFLICT (mmsi) DO UPDATE SET
    first_seen   = LEAST(vessels.first_seen, EXCLUDED.first_seen),
    last_seen    = GREATEST(vessels.last_seen, EXCLUDED.last_seen),
    name         = COALESCE(EXCLUDED.name, vessels.name),
    callsign     = COALESCE(EXCLUDED.callsign, vessels.callsign),
    imo          = COALESCE(EXCLUDED.imo, vessels.imo),
    ship_type    = COALESCE(EXCLUDED.ship_type, vessels.ship_type),
    destination  = COALESCE(EXCLUDED.destination, vessels.destination),
    to_bow       = COALESCE(EXCLUDED.to_bow, vessels.to_bow),
    to_stern     = COALESCE(EXCLUDED.to_stern, vessels.to_stern),
    to_port      = COALESCE(EXCLUDED.to_port, vessels.to_port),
    to_starboard = COALESCE(EXCLUDED.to_starboard, vessels.to_starboard),
    deleted_at   = NULL
"""
# Vessels not seen since $1 are soft-deleted at $2, a chunk at a time, locking in MMSI order
# (as the upserts do) and skipping rows a writer holds: a vessel being written is active.
_SOFT_DELETE = """
WITH doomed AS (
    SELECT mmsi FROM vessels
    WHERE deleted_at IS NULL AND last_seen < $1
    ORDER BY mmsi LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE vessels v SET deleted_at = $2 FROM doomed WHERE v.mmsi = doomed.mmsi
"""
_VESSEL_COLUMNS = (
    "mmsi, name, callsign, imo, ship_type, destination, to_bow, to_stern, to_port, to_starboard,"
    " extract(epoch FROM first_seen)::float8 AS first_seen,"
    " extract(epoch FROM last_seen)::float8 AS last_seen,"
    " extract(epoch FROM deleted_at)::float8 AS deleted_at"
)
_TRACK = """
SELECT extract(epoch FROM ts)::float8 AS ts, lat, lon, sog, cog, heading, nav_status, msg_type,
       source, station
FROM positions WHERE mmsi = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4
"""
SOFT_DELETE_CHUNK = 1000


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in storage/sql, in order."""
    found = []
    for entry in importlib.resources.files("aisfusion.storage.sql").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)


def _wrap(exc: BaseException, what: str) -> Exception:
    """Sort a driver error into transient (retry) or permanent (dead-letter)."""
    if isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.DeadlockDetectedError
        | asyncpg.exceptions.SerializationError
        | asyncpg.exceptions.TooManyConnectionsError,
    ):
        return TransientStorageError(f"{what}: {exc!r}")
    return PermanentStorageError(f"{what}: {exc!r}")


def _no_partition(exc: BaseException) -> bool:
    """A row had no partition: one was dropped since this process last saw it."""
    return isinstance(exc, asyncpg.exceptions.CheckViolationError) and "no partition" in str(exc)


def reduce_vessels(vessels: list[VesselSeen]) -> list[VesselSeen]:
    """One entry per MMSI (earliest first_seen, latest last_seen and static), sorted by MMSI."""
    merged: dict[int, VesselSeen] = {}
    for v in vessels:
        old = merged.get(v.mmsi)
        if old is None:
            merged[v.mmsi] = v
            continue
        static = v.static if v.static is not None else old.static
        if old.static is not None and v.static is not None and old.static.ts > v.static.ts:
            static = old.static
        merged[v.mmsi] = VesselSeen(
            v.mmsi, min(old.first_seen, v.first_seen), max(old.last_seen, v.last_seen), static
        )
    return [merged[m] for m in sorted(merged)]


class PostgresStore:
    """History in PostgreSQL; every method runs on the storage event loop."""

    def __init__(self, url: str, config: PostgresConfig, *, partition_days: int = 1) -> None:
        self._url = url
        self._config = config
        self.partition_days = partition_days
        self._pool: asyncpg.Pool | None = None
        # Days known to have a partition; a day missing here is checked (and created) first.
        self._days: set[int] = set()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise TransientStorageError("postgres store is not connected")
        return self._pool

    async def connect(self) -> None:
        c = self._config
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=c.pool_min,
                max_size=c.pool_max,
                statement_cache_size=0 if c.transaction_pooling else c.statement_cache_size,
                command_timeout=c.command_timeout_s,
                timeout=c.connect_timeout_s,
                max_inactive_connection_lifetime=c.max_inactive_connection_lifetime_s,
            )
        except Exception as exc:
            raise _wrap(exc, "connect to postgres") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def migrate(self) -> list[int]:
        """Apply pending migrations in order; returns the versions applied now."""
        applied_now = []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied_now.append(version)
                log.info("postgres: applied migration %04d_%s", version, name)
        return applied_now

    async def write(self, batch: HistoryBatch) -> int:
        """Insert a batch idempotently; returns the number of position rows newly inserted."""
        try:
            try:
                return await self._write(batch)
            except asyncpg.exceptions.CheckViolationError as exc:
                if not _no_partition(exc):
                    raise
                log.info("postgres: a partition of batch %d is gone; rechecking", batch.batch_id)
                self._days.clear()
                return await self._write(batch)
        except (TransientStorageError, PermanentStorageError):
            raise
        except Exception as exc:
            raise _wrap(exc, f"write batch {batch.batch_id}") from exc

    async def _write(self, batch: HistoryBatch) -> int:
        records = [position_record(p) for p in batch.positions]
        vessels = reduce_vessels(batch.vessels)
        await self.ensure_partitions({day_of(p.ts) for p in batch.positions})
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = 0
            if records:
                # ON COMMIT DROP keeps the staging table inside one transaction, which is
                # also what works through PgBouncer in transaction pooling mode.
                await conn.execute(
                    "CREATE TEMP TABLE positions_staging"
                    " (LIKE positions INCLUDING DEFAULTS) ON COMMIT DROP"
                )
                await conn.copy_records_to_table(
                    "positions_staging", records=records, columns=_POSITION_COLUMNS
                )
                status = await conn.execute(INSERT_POSITIONS)
                inserted = int(status.rsplit(" ", 1)[-1])
            if vessels:
                await conn.execute(UPSERT_VESSELS, *vessel_columns(vessels))
            return inserted

    async def write_isolated(self, batch: HistoryBatch) -> tuple[int, HistoryBatch, str]:
        """Write a batch the database rejected row by row, so one bad row cannot block it.

        Each row gets its own savepoint. Returns the rows inserted, a batch of the rows
        rejected, and the first rejection's error.
        """
        inserted = 0
        bad_positions: list[Position] = []
        bad_vessels: list[VesselSeen] = []
        first_error = ""
        try:
            await self.ensure_partitions({day_of(p.ts) for p in batch.positions})
            async with self.pool.acquire() as conn, conn.transaction():
                for p in batch.positions:
                    try:
                        async with conn.transaction():
                            status = await conn.execute(
                                f"INSERT INTO positions ({', '.join(_POSITION_COLUMNS)})"  # noqa: S608 - constant column names
                                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                                " ON CONFLICT DO NOTHING",
                                *position_record(p),
                            )
                            inserted += int(status.rsplit(" ", 1)[-1])
                    except asyncpg.PostgresError as exc:
                        bad_positions.append(p)
                        first_error = first_error or repr(exc)
                for v in reduce_vessels(batch.vessels):
                    try:
                        async with conn.transaction():
                            await conn.execute(UPSERT_VESSELS, *vessel_columns([v]))
                    except asyncpg.PostgresError as exc:
                        bad_vessels.append(v)
                        first_error = first_error or repr(exc)
        except Exception as exc:
            raise _wrap(exc, f"write batch {batch.batch_id} row by row") from exc
        return inserted, HistoryBatch(batch.batch_id, bad_positions, bad_vessels), first_error

    async def fetchval(self, query: str, *args: Any) -> Any:
        """One value from a read-only query (status, demo summary, tests)."""
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            return await conn.fetchval(query, *args)

    # -- partitions and housekeeping (storage/retention.py) ------------------------------------

    async def ensure_partitions(self, days: set[int]) -> list[Partition]:
        """Create the partitions missing for `days` (UTC days since the epoch); returns the
        partitions created. Days already known to have one cost nothing."""
        missing = days - self._days
        if not missing:
            return []
        async with self.pool.acquire() as conn:
            created, parts = await partitions.ensure(conn, missing, self.partition_days)
        for p in parts:
            self._days.update(d for d in missing if p.first_day <= d < p.end_day)
        return created

    async def partitions(self) -> list[Partition]:
        """The day partitions of `positions`, oldest first."""
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            return await partitions.existing(conn)

    async def drop_partitions_before(self, cutoff_day: int) -> list[Partition]:
        """Drop the partitions holding only days before `cutoff_day`; returns them."""
        async with self.pool.acquire() as conn:
            dropped = await partitions.drop_before(conn, cutoff_day)
        for p in dropped:
            self._days.difference_update(range(p.first_day, p.end_day))
        return dropped

    async def soft_delete_inactive(
        self, last_seen_before: float, now: float, chunk: int = SOFT_DELETE_CHUNK
    ) -> int:
        """Soft-delete vessels not seen since `last_seen_before` (UNIX s); returns how many.

        A vessel that reports again is restored by the next upsert (``deleted_at = NULL``).
        """
        total = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                status = await conn.execute(_SOFT_DELETE, _utc(last_seen_before), _utc(now), chunk)
            done = int(status.rsplit(" ", 1)[-1])
            total += done
            if done < chunk:
                return total

    # -- the read side ------------------------------------------------------------------------

    async def vessel(self, mmsi: int, *, include_deleted: bool = False) -> dict[str, Any] | None:
        """A vessel's static data and first/last seen (UNIX s); None if unknown, or
        soft-deleted and `include_deleted` is false."""
        return (await self.vessels([mmsi], include_deleted=include_deleted)).get(mmsi)

    async def vessels(
        self, mmsis: list[int], *, include_deleted: bool = False
    ) -> dict[int, dict[str, Any]]:
        """`vessel` for many MMSIs at once (the ones found)."""
        query = f"SELECT {_VESSEL_COLUMNS} FROM vessels WHERE mmsi = ANY($1::integer[])"  # noqa: S608
        if not include_deleted:
            query += " AND deleted_at IS NULL"
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            rows = await conn.fetch(query, mmsis)
        return {r["mmsi"]: dict(r) for r in rows}

    async def track(
        self, mmsi: int, start: float, end: float, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """The stored positions of one vessel with start <= ts < end (UNIX s), oldest first,
        at most `limit`. Served by each partition's (mmsi, ts) key; other days are pruned."""
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            rows = await conn.fetch(_TRACK, mmsi, _utc(start), _utc(end), limit)
        return [dict(r) for r in rows]


def position_record(p: Position) -> tuple[Any, ...]:
    return (
        p.mmsi,
        _utc(p.ts),
        p.lat,
        p.lon,
        p.sog,
        p.cog,
        p.heading,
        p.nav_status,
        p.msg_type,
        p.source,
        p.station,
        p.epoch or None,
    )


def vessel_columns(vessels: list[VesselSeen]) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(12)]
    for v in vessels:
        s = v.static
        row = (
            v.mmsi,
            _utc(v.first_seen),
            _utc(v.last_seen),
            s.name if s else None,
            s.callsign if s else None,
            s.imo if s else None,
            s.ship_type if s else None,
            s.destination if s else None,
            s.to_bow if s else None,
            s.to_stern if s else None,
            s.to_port if s else None,
            s.to_starboard if s else None,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols
