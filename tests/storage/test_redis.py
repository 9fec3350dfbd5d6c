"""Redis live store against a real Valkey: record layout, geo and activity index, prefixes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aisfusion.messages import Position
from aisfusion.storage.redis import RedisStore
from tests.dbs import unique_name

T0 = 1_700_000_000.0


def position(mmsi: int, lat: float, lon: float, ts: float = T0) -> Position:
    return Position(mmsi, ts, lat, lon, None, 123.4, None, 5, 18, "feed", None, ts)


@pytest.fixture
async def store(servers: Any) -> AsyncIterator[RedisStore]:
    s = RedisStore(servers.redis_url, unique_name("test") + ":")
    await s.connect()
    yield s
    await s.close()


async def test_live_record_geo_and_activity(store: RedisStore) -> None:
    await store.write_live([position(1, 55.5, 10.5), position(2, 89.0, 0.0, T0 + 1)])
    assert await store.live(1) == {
        "lat": "55.5",
        "lon": "10.5",
        "ts": f"{T0:.6f}",
        "src": "feed",
        "cog": "123.4",
        "nav": "5",
    }
    assert await store.live_count() == 2
    # Latitude 89 is outside the geo index's range: recorded, not indexed.
    assert await store.geo_count() == 1
    near = await store.client.geosearch(
        store.key("geo"), longitude=10.5, latitude=55.5, radius=1, unit="km"
    )
    assert near == [b"1"]
    assert await store.client.zscore(store.key("seen"), "2") == T0 + 1


async def test_prefixes_keep_environments_apart(servers: Any, store: RedisStore) -> None:
    other = RedisStore(servers.redis_url, unique_name("other") + ":")
    await other.connect()
    try:
        await store.write_live([position(1, 55.0, 10.0)])
        await other.write_live([position(1, 56.0, 11.0), position(3, 1.0, 1.0)])
        assert (await store.live(1))["lat"] == "55.0"
        assert (await other.live(1))["lat"] == "56.0"
        assert (await store.live_count(), await other.live_count()) == (1, 2)
        keys = [k.decode() async for k in store.client.scan_iter(match=store.prefix + "*")]
        assert keys and all(k.startswith(store.prefix) for k in keys)
    finally:
        await other.close()
