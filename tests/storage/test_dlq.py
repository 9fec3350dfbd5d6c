"""Dead-letter queue against a real Valkey: leases, backoff, parking, operations, isolation."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aisfusion.errors import TransientStorageError
from aisfusion.messages import HistoryBatch, Position, StaticReport, VesselSeen
from aisfusion.storage.dlq import DeadLetterQueue, DlqEntry, DlqStats
from aisfusion.storage.redis import RedisStore
from tests.dbs import unique_name

T0 = 1_700_000_000.123456


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def batch(batch_id: int, rows: int = 3) -> HistoryBatch:
    positions = [
        Position(
            mmsi=219_000_000 + i,
            ts=T0 + i + 0.000_001,
            lat=55.5 + i / 7,
            lon=10.25 - i / 3,
            sog=12.3 if i % 2 else None,
            cog=None,
            heading=511 if i % 3 else 90,
            nav_status=0,
            msg_type=1,
            source="feed-a",
            station="DK-éø" if i % 2 else None,
            arrival=T0 + i + 0.5,
        )
        for i in range(rows)
    ]
    static = StaticReport(219_000_000, T0, name="ÆGIR", imo=9_074_729, to_bow=12)
    vessels = [VesselSeen(219_000_000, T0 - 3600.0, T0, static), VesselSeen(1, T0, T0, None)]
    return HistoryBatch(batch_id, positions, vessels)


@pytest.fixture
async def store(servers: Any) -> AsyncIterator[RedisStore]:
    s = RedisStore(servers.redis_url, unique_name("dlq") + ":")
    await s.connect()
    yield s
    await s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dlq(store: RedisStore, clock: FakeClock) -> DeadLetterQueue:
    return DeadLetterQueue(
        store, max_attempts=4, retry_base_s=1.0, retry_max_s=5.0, lease_s=30.0,
        clock=clock, rng=random.Random(7),
    )  # fmt: skip


async def test_push_take_ack_round_trip(dlq: DeadLetterQueue, clock: FakeClock) -> None:
    original = batch(42)
    entry_id = await dlq.push(original, error="ConnectionRefused", source="write-failed")
    assert await dlq.take_due(10) == [], "the first retry waits for its backoff"

    clock.now += 1.0  # backoff(0) is at most retry_base_s
    [entry] = await dlq.take_due(10)
    assert entry.batch == original
    assert entry.id == entry_id
    assert (entry.attempts, entry.error, entry.source) == (0, "ConnectionRefused", "write-failed")
    assert entry.first_failed_at == T0
    assert T0 + 0.5 <= entry.next_retry_at <= T0 + 1.0
    assert not entry.parked
    assert await dlq.stats() == DlqStats(0, 0, 1, 0, 3, 1.0)

    await dlq.ack(entry_id)
    assert await dlq.stats() == DlqStats(0, 0, 0, 0, 0, None)
    await dlq.ack(entry_id)  # a second ack is a no-op
    assert [k async for k in dlq._store.client.scan_iter(match=dlq._store.prefix + "*")] == []


async def test_two_concurrent_takers_never_share_an_entry(
    servers: Any, dlq: DeadLetterQueue, store: RedisStore, clock: FakeClock
) -> None:
    pushed = {await dlq.push(batch(i, rows=1), error="e", source="s") for i in range(40)}
    clock.now += 2.0
    # Second clients and queue objects: what other writer processes would have.
    stores = [RedisStore(servers.redis_url, store.prefix) for _ in range(3)]
    for s in stores:
        await s.connect()
    try:
        takers = [dlq, *(DeadLetterQueue(s, clock=clock) for s in stores)]
        taken: list[str] = []
        for expected in (28, 12, 0):  # several rounds of 4 takers x 7
            results = await asyncio.gather(*(t.take_due(7) for t in takers))
            ids = [e.id for result in results for e in result]
            assert len(ids) == expected
            taken += ids
        assert len(taken) == len(set(taken)) == 40, "no entry leased twice"
        assert set(taken) == pushed
        assert await dlq.stats() == DlqStats(0, 0, 40, 0, 40, 2.0)
    finally:
        for s in stores:
            await s.close()


async def test_fail_backs_off_then_parks(dlq: DeadLetterQueue, clock: FakeClock) -> None:
    entry_id = await dlq.push(batch(1), error="first", source="postgres-breaker-open")
    delays = []
    for attempt in range(1, 4):
        clock.now += 10.0
        [entry] = await dlq.take_due(1)
        assert entry.attempts == attempt - 1
        assert await dlq.fail(entry_id, f"failure {attempt}") is False
        [waiting] = await dlq.peek()
        assert (waiting.attempts, waiting.error) == (attempt, f"failure {attempt}")
        delay = waiting.next_retry_at - clock.now
        full = min(5.0, 2.0**attempt)  # retry_base_s * 2**attempts, capped at retry_max_s
        assert full / 2 <= delay <= full
        delays.append(delay)
        assert await dlq.take_due(1) == [], "not due before its backoff"
    assert delays[0] < delays[1], "backoff grows"

    clock.now += 10.0
    await dlq.take_due(1)
    assert await dlq.fail(entry_id, "last straw") is True  # 4th failure = max_attempts
    assert await dlq.stats() == DlqStats(0, 0, 0, 1, 3, 40.0)
    clock.now += 1000.0
    assert await dlq.take_due(10) == [], "only an operator retries a parked entry"
    [parked] = await dlq.peek(parked=True)
    assert parked.parked and parked.attempts == 4 and parked.error == "last straw"
    assert parked.next_retry_at == clock.now - 1000.0  # when it was parked
    assert await dlq.fail(entry_id, "stale writer") is True, "parked stays parked"
    assert await dlq.fail("no-such-entry", "x") is False


async def test_push_with_spent_attempts_parks_at_once(dlq: DeadLetterQueue) -> None:
    await dlq.push(batch(1), error="constraint", source="rejected", attempts=dlq.max_attempts)
    assert (await dlq.stats()).parked == 1


async def test_expired_lease_makes_the_entry_due_again(
    dlq: DeadLetterQueue, clock: FakeClock
) -> None:
    entry_id = await dlq.push(batch(1), error="e", source="s")
    clock.now += 1.0
    [first] = await dlq.take_due(5)
    clock.now += 29.0
    assert await dlq.take_due(5) == [], "the lease still holds"
    assert (await dlq.stats()).leased == 1

    clock.now += 1.0  # lease_s has passed: the writer is presumed dead
    stats = await dlq.stats()
    assert (stats.ready, stats.leased) == (1, 0)
    [again] = await dlq.take_due(5)
    assert again.id == first.id == entry_id
    assert again.batch == first.batch
    assert again.attempts == 1, "an expired lease counts as an attempt"
    assert again.error.startswith("lease expired")

    # A batch that kills its writer every time is parked in the end, not retried for ever.
    for _ in range(3):
        clock.now += 31.0
        await dlq.take_due(5)
    assert await dlq.stats() == DlqStats(0, 0, 0, 1, 3, clock.now - T0)


async def test_stats_peek_retry_now_clear(dlq: DeadLetterQueue, clock: FakeClock) -> None:
    ids = []
    for i in range(5):
        ids.append(await dlq.push(batch(i, rows=i + 1), error=f"e{i}", source="s"))
        clock.now += 0.25
    clock.now = T0 + 2.0  # every push waits at most retry_base_s: all are due
    [taken] = await dlq.take_due(1)
    assert await dlq.fail(taken.id, "again") is False  # scheduled again, 1-2 s away
    assert await dlq.stats() == DlqStats(
        ready=4, scheduled=1, leased=0, parked=0, rows=15, oldest_age_s=2.0
    )

    peeked = await dlq.peek(3)
    assert [e.id for e in peeked] == sorted(ids)[:3] == ids[:3], "oldest first"
    assert [e.batch.batch_id for e in peeked] == [0, 1, 2]
    assert all(isinstance(e, DlqEntry) and not e.parked for e in peeked)
    assert (await dlq.stats()).leased == 0, "peek does not lease"
    assert await dlq.take_due(0) == []

    assert await dlq.retry_now(taken.id) == 1
    assert await dlq.retry_now(taken.id) == 0, "already due"
    assert await dlq.retry_now("unknown") == 0
    assert (await dlq.stats()).ready == 5

    # Lease two, park two, leave one ready.
    leased = await dlq.take_due(2)
    doomed = await dlq.take_due(2)
    for entry in doomed:
        while not await dlq.fail(entry.id, "keeps failing"):
            pass
    assert await dlq.stats() == DlqStats(1, 0, 2, 2, 15, 2.0)
    parked = await dlq.peek(10, parked=True)
    assert {e.id for e in parked} == {e.id for e in doomed}
    assert all(e.parked and e.attempts == dlq.max_attempts for e in parked)
    assert await dlq.peek(0) == []

    assert await dlq.retry_now() == 2, "the parked ones; ready and leased ones untouched"
    assert await dlq.stats() == DlqStats(3, 0, 2, 0, 15, 2.0)
    retried = await dlq.take_due(10)
    assert len(retried) == 3
    for entry in retried:
        # A retried parked entry kept its attempts: one more failure parks it again.
        assert await dlq.fail(entry.id, "still failing") is (entry.id in {e.id for e in doomed})
    assert await dlq.clear(parked_only=True) == 2
    doomed_rows = sum(len(e.batch.positions) for e in doomed)
    assert await dlq.stats() == DlqStats(0, 1, 2, 0, 15 - doomed_rows, 2.0)
    assert await dlq.clear() == 3
    assert await dlq.stats() == DlqStats(0, 0, 0, 0, 0, None)
    for entry in leased:  # their writer comes back late: ignored
        await dlq.ack(entry.id)
        assert await dlq.fail(entry.id, "late") is False
    assert await dlq.stats() == DlqStats(0, 0, 0, 0, 0, None)


async def test_prefixes_keep_environments_apart(
    servers: Any, dlq: DeadLetterQueue, clock: FakeClock
) -> None:
    staging_store = RedisStore(servers.redis_url, unique_name("staging") + ":")
    await staging_store.connect()
    try:
        staging = DeadLetterQueue(staging_store, clock=clock)
        await dlq.push(batch(1), error="e", source="s")
        await staging.push(batch(2, rows=7), error="e", source="s")
        await staging.push(batch(3, rows=1), error="e", source="s")
        assert ((await dlq.stats()).rows, (await staging.stats()).rows) == (3, 8)
        clock.now += 5.0
        assert [e.batch.batch_id for e in await dlq.take_due(10)] == [1]
        assert await staging.clear() == 2
        assert (await dlq.stats()).leased == 1
        assert [
            k async for k in staging_store.client.scan_iter(match=staging_store.prefix + "*")
        ] == []
        prefix = dlq._store.prefix
        keys = {k.decode() async for k in dlq._store.client.scan_iter(match=prefix + "*")}
        # Every key carries the prefix and the {dlq} hash tag (one cluster slot per queue).
        assert keys == {
            prefix + "{dlq}:" + name
            for name in ("leased", "age", "entry", "attempts", "error", "rowcount", "rows")
        }
    finally:
        await staging_store.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_down_is_transient() -> None:
    store = RedisStore(f"redis://127.0.0.1:{closed_port()}/0", unique_name("down") + ":")
    dlq = DeadLetterQueue(store)
    with pytest.raises(TransientStorageError):
        await dlq.stats()  # never connected
    with pytest.raises(TransientStorageError):
        await store.connect()
    try:
        # The store now holds a client for the closed port: every operation is transient.
        with pytest.raises(TransientStorageError):
            await dlq.push(batch(1), error="e", source="s")
        with pytest.raises(TransientStorageError):
            await dlq.take_due(1)
        with pytest.raises(TransientStorageError):
            await dlq.stats()
        with pytest.raises(TransientStorageError):
            await dlq.peek()
    finally:
        await store.close()
