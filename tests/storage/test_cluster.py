"""The live store and the dead-letter queue on a real Redis Cluster: three Valkey primaries
started here, every slot served.

Keys hash on their own names (vessel records and geo cells spread over the nodes); only the
dead-letter queue's keys share the ``{dlq}`` hash tag, because its scripts and transactions
touch several of them at once.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from aisfusion.messages import HistoryBatch, Position
from aisfusion.storage.dlq import DeadLetterQueue
from aisfusion.storage.redis import RedisStore
from tests.dbs import unique_name
from tests.storage import servers as extra

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    ports, procs = extra.valkey_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield ports
    finally:
        extra.stop(procs)


@pytest.fixture
async def store(cluster_ports: list[int]) -> AsyncIterator[RedisStore]:
    # The URL scheme alone selects cluster mode (redis.cluster = true does the same).
    s = RedisStore(
        f"redis+cluster://{extra.HOST}:{cluster_ports[1]}",
        unique_name("cl") + ":",
        geo_cell_deg=30,
    )
    await s.connect()
    yield s
    await s.close()


def keys_per_node(ports: list[int], prefix: str) -> list[list[str]]:
    out = []
    for port in ports:
        with redis.Redis(host=extra.HOST, port=port) as node:
            out.append(sorted(k.decode() for k in node.scan_iter(match=prefix + "*")))
    return out


def position(mmsi: int, lat: float, lon: float, ts: float = T0) -> Position:
    return Position(mmsi, ts, lat, lon, 10.0, 90.0, 90, 0, 1, "feed", "rx", ts)


async def test_live_state_spreads_over_the_nodes(
    store: RedisStore, cluster_ports: list[int]
) -> None:
    rng = random.Random(5)
    fleet = [
        position(100_000 + i, rng.uniform(-80, 80), rng.uniform(-180, 180), T0 + i)
        for i in range(300)
    ]
    fleet.append(position(1, 55.0, 10.0, T0 + 1000))
    fleet.append(position(2, 55.01, 10.01, T0 + 1000))
    await store.write_live(fleet)
    assert store.status()["cluster"] is True
    assert await store.live_count() == 302
    assert await store.geo_count() == 302
    per_node = keys_per_node(cluster_ports, store.prefix)
    assert all(len(keys) > 50 for keys in per_node), [len(k) for k in per_node]
    geo_nodes = [any(":geo:" in k for k in keys) for keys in per_node]
    assert sum(geo_nodes) >= 2  # the geo cells are spread too
    everything = [k for keys in per_node for k in keys]
    assert not [k for k in everything if "{" in k]  # no hash tags outside the DLQ
    # Reads across slots and nodes.
    hits = await store.near(55.0, 10.0, 5, 10)
    assert [m for m, _, _ in hits][:2] == [1, 2]
    records = await store.live_records([1, 2, 100_000, 999])
    assert sorted(records) == [1, 2, 100_000]
    assert len(await store.live_mmsis()) == 302
    used, _ = await store.memory()
    with redis.Redis(host=extra.HOST, port=cluster_ports[0]) as node:
        one = int(node.info("memory")["used_memory"])
    assert used > 2 * one  # the sum over three primaries
    # Removing inactive vessels deletes records, geo and activity entries on every node.
    assert await store.evict_inactive(T0 + 150) == 150
    assert await store.live_count() == 152
    assert await store.geo_count() == 152
    assert await store.live_records([100_000, 100_149, 100_150]) == {
        100_150: await store.live(100_150)
    }


async def test_dead_letter_queue_keeps_its_keys_in_one_slot(
    store: RedisStore, cluster_ports: list[int]
) -> None:
    now = [T0]
    dlq = DeadLetterQueue(store, max_attempts=2, retry_base_s=1.0, clock=lambda: now[0])
    batch = HistoryBatch(7, [position(5, 1.0, 1.0)], [])
    first = await dlq.push(batch, error="down", source="test")
    second = await dlq.push(batch, error="down", source="test")
    now[0] += 10
    taken = await dlq.take_due(10)
    assert sorted(e.id for e in taken) == sorted([first, second])
    await dlq.ack(first)
    assert await dlq.fail(second, "still down") is False
    now[0] += 10
    [again] = await dlq.take_due(10)
    assert await dlq.fail(again.id, "down for good") is True  # parked after 2 attempts
    stats = await dlq.stats()
    assert (stats.parked, stats.rows) == (1, 1)
    assert await dlq.retry_now() == 1
    assert await dlq.clear() == 1
    # Every {dlq} key sits on one node (one slot).
    await dlq.push(batch, error="down", source="test")
    per_node = keys_per_node(cluster_ports, store.prefix + "{dlq}")
    assert sorted(len(keys) > 0 for keys in per_node) == [False, False, True]


async def test_cluster_mode_from_the_setting(cluster_ports: list[int]) -> None:
    store = RedisStore(f"redis://{extra.HOST}:{cluster_ports[2]}/0", "s:", cluster=True)
    await store.connect()
    try:
        assert store.cluster and store.layout.name == "compact"
        await store.write_live([position(9, 1.0, 2.0)])
        assert (await store.live(9))["lon"] == "2.0"
    finally:
        await store.close()
