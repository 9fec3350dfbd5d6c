"""Deadlock stress: concurrent history writers on the real schema, overlapping vessels.

Several writers, each with its own connection (a `PostgresStore` with a pool of one), write
batches for vessels drawn from one shared set, in shuffled order, as fast as they can: the
same vessels' rows are upserted by every writer at once, and position keys overlap too (a few
timestamps per vessel, so writers insert the same (mmsi, ts) keys concurrently, as a batch
retried while its first attempt still runs would). A soft-delete pass runs in a loop beside
them, as the maintenance task does. The batches go through `PostgresStore.write`, which sorts
vessels by MMSI and inserts positions in key order, so no two transactions take row locks in
opposite orders: the run must report 0 deadlocks.

`--unsorted` writes the same batches with the same SQL but in their shuffled order (what the
store does not do) to show what the sorting prevents.

    .venv/bin/python bench/deadlock_stress.py [--writers 4] [--seconds 8 | --batches N]
        [--vessels 2000] [--batch 500] [--url postgresql://…] [--unsorted]

Without `--url` it starts an embedded PostgreSQL. Prints deadlocks, other errors and committed
rows per second; exits 1 when there was any deadlock or error in the sorted mode.
`tests/storage/test_deadlock.py` runs a short variant (a fixed number of batches per writer).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

import asyncpg
import uvloop

from aisfusion.config import PostgresConfig
from aisfusion.messages import HistoryBatch, Position, StaticReport, VesselSeen
from aisfusion.storage.embedded import EmbeddedServers, discard_moved_data
from aisfusion.storage.partitions import day_of
from aisfusion.storage.postgres import (
    INSERT_POSITIONS,
    UPSERT_VESSELS,
    PostgresStore,
    position_record,
    vessel_columns,
)

T0 = time.time() - 3600.0
TIMES_PER_VESSEL = 64  # few distinct times: writers collide on position keys


@dataclass
class Tally:
    batches: int = 0
    positions: int = 0  # position rows committed (inserted or already there)
    inserted: int = 0  # of which new
    vessels: int = 0  # vessel rows upserted
    deadlocks: int = 0
    errors: int = 0
    soft_deleted: int = 0
    first_error: str = ""

    def failed(self, exc: Exception) -> None:
        """Count a failed statement: a deadlock, or another error (the first one kept)."""
        if is_deadlock(exc):
            self.deadlocks += 1
        else:
            self.errors += 1
            self.first_error = self.first_error or repr(exc)


def make_batch(rng: random.Random, batch_id: int, vessels: int, size: int) -> HistoryBatch:
    mmsis = rng.sample(range(200_000_000, 200_000_000 + vessels), size)  # shuffled order
    positions = [
        Position(
            m, T0 + rng.randrange(TIMES_PER_VESSEL), 55.0, 10.0, 10.0, 90.0, 90, 0, 1, "s", None, 0
        )
        for m in mmsis
    ]
    seen = [
        VesselSeen(m, T0, T0 + rng.random() * 60, StaticReport(m, T0, name=f"V{m % 997}"))
        for m in mmsis
    ]
    return HistoryBatch(batch_id, positions, seen)


# The store's insert without its ORDER BY (checked, so a change to it cannot silently make the
# unsorted mode sorted).
_UNSORTED_INSERT = INSERT_POSITIONS.replace(" ORDER BY mmsi, ts", "")
assert _UNSORTED_INSERT != INSERT_POSITIONS, "INSERT_POSITIONS no longer orders by mmsi, ts"


async def write_unsorted(store: PostgresStore, batch: HistoryBatch) -> int:
    """The store's SQL in the batch's own (shuffled) order: what the sorting prevents."""
    await store.ensure_partitions({day_of(p.ts) for p in batch.positions})
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE positions_staging (LIKE positions INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        await conn.copy_records_to_table(
            "positions_staging", records=[position_record(p) for p in batch.positions]
        )
        status = await conn.execute(_UNSORTED_INSERT)
        await conn.execute(UPSERT_VESSELS, *vessel_columns(batch.vessels))
    return int(status.rsplit(" ", 1)[-1])


def is_deadlock(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, asyncpg.exceptions.DeadlockDetectedError):
            return True
        seen = seen.__cause__
    return False


async def writer(
    store: PostgresStore, seed: int, args: argparse.Namespace, deadline: float, tally: Tally
) -> None:
    rng = random.Random(seed)
    batch_id = seed * 1_000_000
    done = 0

    def more() -> bool:  # a fixed amount of work (--batches), or what fits in --seconds
        return done < args.batches if args.batches else time.monotonic() < deadline

    while more():
        done += 1
        batch_id += 1
        batch = make_batch(rng, batch_id, args.vessels, args.batch)
        try:
            if args.unsorted:
                inserted = await write_unsorted(store, batch)
            else:
                inserted = await store.write(batch)
        except Exception as exc:
            tally.failed(exc)
            continue
        tally.batches += 1
        tally.positions += len(batch.positions)
        tally.inserted += inserted
        tally.vessels += len(batch.vessels)


async def soft_deleter(store: PostgresStore, writers_done: asyncio.Event, tally: Tally) -> None:
    """Soft-delete every vessel not seen in the future, over and over while the writers run
    (and once after): it fights the upserts for the same rows (and skips the ones they hold)."""
    while True:
        last = writers_done.is_set()
        try:
            tally.soft_deleted += await store.soft_delete_inactive(T0 + 3600 * 24, time.time())
        except Exception as exc:
            tally.failed(exc)
        if last:
            return
        await asyncio.sleep(0.05)


async def run(url: str, args: argparse.Namespace) -> Tally:
    config = PostgresConfig(pool_min=1, pool_max=1)
    tally = Tally()
    async with AsyncExitStack() as stack:
        stores = []
        for _ in range(args.writers + 1):
            store = PostgresStore(url, config)
            await store.connect()
            stack.push_async_callback(store.close)
            stores.append(store)
        await stores[0].migrate()
        deadline = time.monotonic() + args.seconds
        started = time.perf_counter()
        writers_done = asyncio.Event()

        async def writers() -> None:
            await asyncio.gather(
                *(writer(s, i + 1, args, deadline, tally) for i, s in enumerate(stores[1:]))
            )
            writers_done.set()

        await asyncio.gather(writers(), soft_deleter(stores[0], writers_done, tally))
        elapsed = time.perf_counter() - started
        rows = await stores[0].fetchval("SELECT count(*) FROM positions")
    mode = "UNSORTED (what the store avoids)" if args.unsorted else "sorted (PostgresStore.write)"
    print(f"mode: {mode}")
    work = f"{args.batches} batches each" if args.batches else f"{args.seconds:g} s"
    print(
        f"writers {args.writers} (+1 soft-deleter), {work}, {args.vessels} vessels, "
        f"batches of {args.batch}"
    )
    print(f"deadlocks: {tally.deadlocks}")
    print(f"other errors: {tally.errors}{' (' + tally.first_error + ')' if tally.errors else ''}")
    print(f"batches committed: {tally.batches}")
    print(
        f"committed rows/s: {(tally.positions + tally.vessels) / elapsed:,.0f} "
        f"(positions {tally.positions / elapsed:,.0f}/s, of which new "
        f"{tally.inserted / elapsed:,.0f}/s; vessel upserts {tally.vessels / elapsed:,.0f}/s)"
    )
    print(f"soft-deleted by the maintenance pass meanwhile: {tally.soft_deleted}")
    print(f"rows in positions: {rows} (inserted {tally.inserted})")
    if rows != tally.inserted:
        tally.errors += 1
        print("MISMATCH: rows in positions differ from the rows reported inserted")
    return tally


async def main(args: argparse.Namespace) -> int:
    if args.url:
        tally = await run(args.url, args)
    else:
        with tempfile.TemporaryDirectory(prefix="aisf-deadlock-") as tmp:
            servers = EmbeddedServers(tmp, redis=False)
            servers.start()
            try:
                tally = await run(servers.postgres_url, args)
            finally:
                servers.stop()
                # As root the data may have moved out of `tmp` (see storage/embedded.py).
                discard_moved_data(tmp)
    if args.unsorted:
        return 0
    return 1 if tally.deadlocks or tally.errors else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batches", type=int, default=0, help="per writer, instead of --seconds")
    parser.add_argument("--vessels", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--url", default="", help="PostgreSQL URL (default: embedded)")
    parser.add_argument("--unsorted", action="store_true", help="skip the sorting (shows why)")
    sys.exit(uvloop.run(main(parser.parse_args())))
