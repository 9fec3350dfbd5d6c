"""Time partitions of the `positions` history table.

`positions` is partitioned by RANGE on `ts` (migration 0002). A partition covers
`partition_days` UTC days, aligned on the UNIX epoch (day ``d`` falls in the partition starting
at ``d - d % partition_days``), and is named ``positions_YYYYMMDD`` after its first day.
Partitions are created ahead of time by the maintenance task and on demand by the writer (a
late or replayed batch whose day has none), and retention drops whole partitions whose last
day is past the retention age: no row-by-row DELETE, no bloat.

Changing `partition_days` later is safe: a new partition is clipped to the gap between the
existing ones, so ranges never overlap.

Creating and dropping take an advisory lock, so several instances (or the writer and the
maintenance task) never race on the catalog; a drop waits at most `_LOCK_TIMEOUT` for the
table lock (writers hold it for milliseconds) and otherwise retries at the next run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec

log = logging.getLogger(__name__)

DAY_S = 86400
PARTITION_LOCK = 0x41495350  # advisory lock id ("AISP"): one catalog change at a time
_LOCK_TIMEOUT = "5s"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BOUNDS = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")
_LIST = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'positions'::regclass
"""


class Partition(msgspec.Struct, frozen=True, order=True):
    """One partition: days since the UNIX epoch, [first_day, end_day)."""

    first_day: int
    end_day: int
    name: str

    @property
    def start(self) -> datetime:
        return day_start(self.first_day)

    @property
    def end(self) -> datetime:
        return day_start(self.end_day)


def day_of(ts: float) -> int:
    """The UTC day (days since the UNIX epoch) of a UNIX time."""
    return int(ts // DAY_S)


def day_start(day: int) -> datetime:
    return _EPOCH + timedelta(days=day)


def partition_name(first_day: int) -> str:
    return "positions_" + day_start(first_day).strftime("%Y%m%d")


def aligned(day: int, partition_days: int) -> tuple[int, int]:
    """The [first, end) days of the aligned partition that holds `day`."""
    first = day - day % partition_days
    return first, first + partition_days


def plan(day: int, partition_days: int, existing: Iterable[Partition]) -> Partition | None:
    """The partition to create for `day`: the aligned range clipped to the gap between the
    existing partitions; None when an existing partition holds `day` already."""
    first, end = aligned(day, partition_days)
    for p in existing:
        if p.first_day <= day < p.end_day:
            return None
        if p.end_day <= day:
            first = max(first, p.end_day)
        elif p.first_day > day:
            end = min(end, p.first_day)
    return Partition(first, end, partition_name(first))


def _parse_day(text: str) -> int | None:
    # Bounds print as '2026-11-23 00:00:00+00' in a UTC session.
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - _EPOCH).total_seconds()
    return int(seconds // DAY_S) if seconds % DAY_S == 0 else None


async def _utc(conn: asyncpg.Connection) -> None:
    # Transaction-local, so it also holds behind PgBouncer in transaction pooling mode.
    await conn.execute("SET LOCAL TimeZone = 'UTC'")


async def existing(conn: asyncpg.Connection) -> list[Partition]:
    """The day partitions of `positions`, oldest first (call inside a transaction).

    Partitions that are not whole UTC days (made by hand: a DEFAULT or MINVALUE partition,
    sub-day bounds) are left out.
    """
    await _utc(conn)
    found = []
    for row in await conn.fetch(_LIST):
        match = _BOUNDS.fullmatch(row["bound"] or "")
        if match is None:
            log.info("positions partition %s is not a day range; left alone", row["name"])
            continue
        first, end = _parse_day(match[1]), _parse_day(match[2])
        if first is None or end is None:
            log.info("positions partition %s is not whole UTC days; left alone", row["name"])
            continue
        found.append(Partition(first, end, row["name"]))
    return sorted(found)


async def ensure(
    conn: asyncpg.Connection, days: Iterable[int], partition_days: int
) -> tuple[list[Partition], list[Partition]]:
    """Create the partitions missing for `days`; returns (created, all partitions).

    Runs in its own transaction under the partition lock.
    """
    created: list[Partition] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        parts = await existing(conn)
        for day in sorted(set(days)):
            new = plan(day, partition_days, parts)
            if new is None:
                continue
            # DDL takes no parameters; the name and bounds are made here, not given.
            await conn.execute(
                f'CREATE TABLE "{new.name}" PARTITION OF positions'
                f" FOR VALUES FROM ({_literal(new.start)}) TO ({_literal(new.end)})"
            )
            parts = sorted([*parts, new])
            created.append(new)
            log.info("postgres: created partition %s [%s, %s)", new.name, new.start, new.end)
    return created, parts


async def drop_before(conn: asyncpg.Connection, cutoff_day: int) -> list[Partition]:
    """Drop the partitions whose every day is before `cutoff_day`; returns them."""
    dropped: list[Partition] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        old = [p for p in await existing(conn) if p.end_day <= cutoff_day]
        if old:
            # The parent first: a drop locks it anyway, and taking it before any partition
            # means a writer and the drop never hold one lock each while waiting for the other.
            await conn.execute("LOCK TABLE positions IN ACCESS EXCLUSIVE MODE")
        for p in old:
            await conn.execute(f'DROP TABLE "{p.name}"')
            dropped.append(p)
            log.info("postgres: dropped partition %s (retention)", p.name)
    return dropped


def _literal(when: datetime) -> str:
    """A partition bound as a SQL literal (DDL takes no parameters)."""
    return "'" + when.strftime("%Y-%m-%d %H:%M:%S+00") + "'"
