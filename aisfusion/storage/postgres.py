"""PostgreSQL history store (asyncpg): migrations, bulk position inserts, vessel upserts.

Positions are written with COPY into a transaction-local staging table, then
``INSERT … SELECT … ON CONFLICT DO NOTHING``: COPY alone is faster but one duplicate key aborts
the whole batch, and a retried batch must never duplicate a row. Vessels are upserted in one
statement per batch, reduced to one row per MMSI and sorted by MMSI, because concurrent writers
that lock rows in different orders deadlock.
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
)
_UPSERT_VESSELS = """
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

    def __init__(self, url: str, config: PostgresConfig) -> None:
        self._url = url
        self._config = config
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise TransientStorageError("postgres store is not connected")
        return self._pool

    async def connect(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=self._config.pool_min,
                max_size=self._config.pool_max,
                statement_cache_size=self._config.statement_cache_size,
                command_timeout=self._config.command_timeout_s,
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
        records = [_position_record(p) for p in batch.positions]
        vessels = reduce_vessels(batch.vessels)
        try:
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
                    status = await conn.execute(
                        "INSERT INTO positions SELECT * FROM positions_staging"
                        " ON CONFLICT DO NOTHING"
                    )
                    inserted = int(status.rsplit(" ", 1)[-1])
                if vessels:
                    await conn.execute(_UPSERT_VESSELS, *_vessel_columns(vessels))
                return inserted
        except (TransientStorageError, PermanentStorageError):
            raise
        except Exception as exc:
            raise _wrap(exc, f"write batch {batch.batch_id}") from exc

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
            async with self.pool.acquire() as conn, conn.transaction():
                for p in batch.positions:
                    try:
                        async with conn.transaction():
                            status = await conn.execute(
                                f"INSERT INTO positions ({', '.join(_POSITION_COLUMNS)})"  # noqa: S608 - constant column names
                                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                                " ON CONFLICT DO NOTHING",
                                *_position_record(p),
                            )
                            inserted += int(status.rsplit(" ", 1)[-1])
                    except asyncpg.PostgresError as exc:
                        bad_positions.append(p)
                        first_error = first_error or repr(exc)
                for v in reduce_vessels(batch.vessels):
                    try:
                        async with conn.transaction():
                            await conn.execute(_UPSERT_VESSELS, *_vessel_columns([v]))
                    except asyncpg.PostgresError as exc:
                        bad_vessels.append(v)
                        first_error = first_error or repr(exc)
        except Exception as exc:
            raise _wrap(exc, f"write batch {batch.batch_id} row by row") from exc
        return inserted, HistoryBatch(batch.batch_id, bad_positions, bad_vessels), first_error

    async def fetchval(self, query: str, *args: Any) -> Any:
        """One value from a read-only query (status, demo summary, tests)."""
        return await self.pool.fetchval(query, *args)


def _position_record(p: Position) -> tuple[Any, ...]:
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
    )


def _vessel_columns(vessels: list[VesselSeen]) -> list[list[Any]]:
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
