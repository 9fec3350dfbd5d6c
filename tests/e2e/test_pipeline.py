"""The whole tree on real servers: a recorded file over TCP → shards → PostgreSQL and Valkey.

The expected rows are computed here from the file with pyais and a framing written for the test,
independently of the service's feed code.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from collections import Counter, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pyais
import pytest
import redis.asyncio as aioredis

from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.storage.redis import RedisStore
from tests.dbs import fresh_database, unique_name

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ais"
POSITION_TYPES = {1, 2, 3, 9, 18, 19, 27}
WINDOW = 16


def _checksum_ok(sentence: str) -> bool:
    body, star, cs = sentence.partition("*")
    if not star or len(cs) < 2:
        return False
    x = 0
    for ch in body[1:]:
        x ^= ord(ch)
    return f"{x:02X}" == cs[:2].upper()


def complete_messages(path: Path) -> list[Any]:
    """Decoded messages of a file without tag blocks, fragments joined by (channel, seq id)."""
    out: list[Any] = []
    partial: dict[tuple[str, str], list[str]] = {}
    for line in path.read_text("latin-1").splitlines():
        if not line.startswith("!") or not _checksum_ok(line):
            continue
        f = line.split(",")
        count, num, seq, chan = int(f[1]), int(f[2]), f[3], f[4]
        if count == 1:
            group = [line]
        else:
            key = (chan, seq)
            if num == 1:
                partial[key] = [line]
                continue
            if key not in partial or len(partial[key]) != num - 1:
                partial.pop(key, None)
                continue
            partial[key].append(line)
            if num < count:
                continue
            group = partial.pop(key)
        try:
            nmea = [pyais.NMEAMessage(s.encode()) for s in group]
            out.append(pyais.NMEAMessage.assemble_from_iterable(nmea))
        except Exception:
            continue
    return out


def expected_positions(
    messages: list[Any],
) -> tuple[Counter[tuple[int, float, float]], dict[int, tuple[float, float]]]:
    """Rows the service must store, and the live position of each vessel (file order)."""
    rows: Counter[tuple[int, float, float]] = Counter()
    live: dict[int, tuple[float, float]] = {}
    recent: dict[int, deque[bytes]] = {}
    for nmea in messages:
        try:
            d = nmea.decode().asdict()
        except Exception:
            continue
        mmsi = d.get("mmsi")
        if mmsi is None:
            continue
        window = recent.setdefault(mmsi, deque(maxlen=WINDOW))
        if nmea.payload in window:
            continue
        window.append(nmea.payload)
        if d["msg_type"] not in POSITION_TYPES:
            continue
        lat, lon = d.get("lat"), d.get("lon")
        if lat is None or lon is None or lat == 91.0 or lon == 181.0:
            continue
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            continue
        rows[(mmsi, round(lat, 5), round(lon, 5))] += 1
        live[mmsi] = (lat, lon)
    return rows, live


@pytest.fixture
async def service(servers: Any, tmp_path: Path) -> AsyncIterator[Service]:
    pg_url = await fresh_database(servers.postgres_url)
    raw = msgspec.to_builtins(Config())
    raw["feed"].update(host="127.0.0.1", port=0, source="recorded")
    raw["metrics"]["port"] = 0
    raw["spool"]["dir"] = str(tmp_path / "spool")
    raw["postgres"]["url"] = pg_url
    raw["redis"].update(url=servers.redis_url, key_prefix=unique_name("e2e") + ":")
    # A recorded file replays in seconds: dedup over the whole replay, bounded by the window.
    raw["actors"].update(shards=3, dedup_window_s=3600.0, window_size=WINDOW)
    svc = Service(msgspec.convert(raw, Config))
    await svc.start()
    yield svc
    await svc.stop()


def lines_read(service: Service) -> float:
    source = service.config.feed.source
    value = service.metrics.registry.get_sample_value(
        "aisfusion_feed_lines_total", {"source": source}
    )
    return value or 0.0


async def replay(service: Service, path: Path) -> int:
    """Send a file over one connection, wait until every line is read, then drain."""
    data = path.read_bytes()
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    target = lines_read(service) + lines
    _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    deadline = time.monotonic() + 60
    while lines_read(service) < target:
        if time.monotonic() > deadline:
            pytest.fail(f"service read {lines_read(service)} of {target} lines")
        await asyncio.sleep(0.05)
    assert lines_read(service) == target
    await service.drain()
    return lines


async def test_recorded_feed_reaches_postgres_and_redis(service: Service) -> None:
    path = DATA / "aishub-2015.nmea"
    await replay(service, path)
    rows, live = expected_positions(complete_messages(path))
    assert sum(rows.values()) > 50_000  # the file is mostly positions: the check is not vacuous

    conn = await asyncpg.connect(service.postgres._url)  # type: ignore[union-attr]
    try:
        stored = Counter(
            (r["mmsi"], round(r["lat"], 5), round(r["lon"], 5))
            for r in await conn.fetch("SELECT mmsi, lat, lon FROM positions")
        )
        newest = {
            r["mmsi"]: (r["lat"], r["lon"])
            for r in await conn.fetch(
                "SELECT DISTINCT ON (mmsi) mmsi, lat, lon FROM positions ORDER BY mmsi, ts DESC"
            )
        }
        vessels = await conn.fetchval("SELECT count(*) FROM vessels")
        named = await conn.fetchval("SELECT count(*) FROM vessels WHERE name IS NOT NULL")
    finally:
        await conn.close()
    # History keeps every accepted observation. Fusion does not accept a jump (a position
    # implying an impossible speed from the vessel's live position) unless another source
    # corroborates it; this file has one source, no tag-block times and is replayed in about a
    # second, so shared MMSIs, bad fixes and the compressed time make a few percent jumps.
    # Everything else valid and not a duplicate is stored, exactly once.
    reg = service.metrics.registry
    jumps = reg.get_sample_value("aisfusion_vessel_rejected_total", {"reason": "jump"}) or 0.0
    released = reg.get_sample_value("aisfusion_fusion_corroborated_total") or 0.0
    assert not stored - rows
    assert sum((rows - stored).values()) == jumps - released
    assert 0 < jumps - released < 0.1 * sum(rows.values())
    assert vessels >= len(live)
    assert named > 0

    redis_store = service.redis
    assert redis_store is not None
    client = aioredis.Redis.from_url(service.config.redis.url)
    # The records are read back through a store of their own (the layout decides the encoding).
    reader = RedisStore(service.config.redis.url, redis_store.prefix)
    await reader.connect()
    try:
        prefix = redis_store.prefix
        assert await client.zcard(prefix + "seen") == len(live)
        # One source, one weight: the live position is the newest accepted one.
        assert set(newest) == set(live)
        for mmsi, (lat, lon) in list(newest.items())[:: max(1, len(newest) // 300)]:
            record = await reader.live(mmsi)
            assert math.isclose(float(record["lat"]), lat, abs_tol=1e-6)
            assert math.isclose(float(record["lon"]), lon, abs_tol=1e-6)
    finally:
        await client.aclose()
        await reader.close()

    decisions = service.metrics.registry.get_sample_value("aisfusion_decisions_total")
    assert decisions == sum(stored.values())


ROBUSTNESS = [
    "gfw-tools-errors.nmea",
    "gfw-tools-bad-type5.nmea",
    "gfw-tools-bad-tagblock-group.nmea",
    "gfw-tools-spire-test.nmea",
    "gfw-tools-type1-bad-bitcount.nmea",
    "gfw-tools-single-message-type-5.nmea",
    "gfw-tools-multi-part.nmea",
    "gfw-tools-mixed_types.nmea",
    "maritime-segfaults.nmea",
    "pyais-nmea_data_sample.nmea",
    "maritime-20181101.log",
]


async def test_hostile_files_are_survived_and_counted(service: Service) -> None:
    total_lines = 0
    for name in ROBUSTNESS:
        total_lines += await replay(service, DATA / name)
    reg = service.metrics.registry
    rejected = {
        s.labels["reason"]: s.value
        for fam in reg.collect()
        if fam.name == "aisfusion_feed_rejected"
        for s in fam.samples
        if s.name.endswith("_total")
    }
    # gfw-tools-errors (2), single-message-type-5 (1), maritime-20181101 (1): bad checksums.
    assert rejected.get("bad_checksum", 0) >= 4
    assert sum(rejected.values()) > 0
    assert service.ready
    # The service still works after all of it: one clean sentence is stored.
    good = b"!AIVDM,1,1,,A,13HOI:0P0000VOHLCnHQKwvL05Ip,0*23\n"
    _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
    writer.write(good)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    deadline = time.monotonic() + 10
    while lines_read(service) != total_lines + 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await service.drain()
    vessel = await asyncio.get_running_loop().run_in_executor(None, service.vessel, 227006760)
    assert vessel is not None and vessel["last"] is not None


async def test_metrics_and_health_endpoints(service: Service) -> None:
    await replay(service, DATA / "gfw-tools-mixed_types.nmea")
    loop = asyncio.get_running_loop()
    base = f"http://127.0.0.1:{service.metrics_port}"

    def get(path: str) -> tuple[int, str]:
        with urllib.request.urlopen(base + path, timeout=5) as resp:
            return resp.status, resp.read().decode()

    status, body = await loop.run_in_executor(None, get, "/metrics")
    assert status == 200
    assert 'aisfusion_feed_lines_total{source="recorded"} 109.0' in body
    assert "aisfusion_decisions_total" in body
    assert 'aisfusion_batch_flushes_total{outcome="ok",store="postgres"}' in body
    assert "mmsi" not in body.lower()
    assert (await loop.run_in_executor(None, get, "/healthz"))[0] == 200
    assert (await loop.run_in_executor(None, get, "/readyz"))[0] == 200
