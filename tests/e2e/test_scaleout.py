"""Scale-out by MMSI: two instances fed the same feed together store what one instance stores.

One instance on its own database and key prefix; two instances (`actors.instance` 0 and 1 of
`actors.instances = 2`) sharing another database and prefix, as two machines would share the
stores. All three are sent the same bytes. What makes "exactly the same" possible: each vessel
is decided by one instance only, from the same messages in the same order (one connection, so
the two receivers' lines interleave identically everywhere), the feed carries tag-block times,
so stored times do not depend on when a line happened to be read, and the sources' weights are
the same in every instance (see `settings`): the history in PostgreSQL depends on nothing else,
the live records in Redis on the weights too.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from aisfusion.actors.shard import ShardStats
from aisfusion.app import Service
from aisfusion.config import Config, load
from aisfusion.errors import ConfigError
from aisfusion.nmea_out import tag_block
from aisfusion.simulator import Fleet
from tests.dbs import fresh_database, unique_name


def feed(lines: int, vessels: int, seed: int = 11) -> bytes:
    """Two receivers on one connection: rx-b hears about half of rx-a's traffic 1 s later."""
    fleet = Fleet(vessels, seed=seed, start_time=time.time() - 900)
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < lines:
        for report in fleet.step(1.0):
            out.extend(tag_block(s, station="rx-a", t=report.t) for s in report.sentences)
            if rng.random() < 0.5:
                out.extend(tag_block(s, station="rx-b", t=report.t + 1) for s in report.sentences)
    return ("\r\n".join(out) + "\r\n").encode()


def settings(
    tmp: Path, name: str, pg_url: str, redis_url: str, prefix: str, **actors: Any
) -> Config:
    raw = msgspec.to_builtins(Config())
    raw["feed"].update(host="127.0.0.1", port=0)
    raw["metrics"]["port"] = 0
    raw["control"]["socket"] = ""
    raw["spool"]["dir"] = str(tmp / name / "spool")
    raw["postgres"]["url"] = pg_url
    raw["redis"].update(url=redis_url, key_prefix=prefix)
    raw["actors"].update(shards=3, **actors)
    # Source quality is estimated per instance, from the outcomes of the vessels it owns, and
    # the live decision weighs sources by it: equal live state needs equal weights. Honest
    # receivers keep a quality of 1.0 when they start there (every graded outcome is 1.0);
    # from 0.8 each instance would climb at its own pace (DESIGN.md, "Scale-out").
    raw["sources"]["initial_quality"] = 1.0
    return msgspec.convert(raw, Config)


@pytest.fixture
async def services(servers: Any, tmp_path: Path) -> AsyncIterator[list[Service]]:
    solo_db = await fresh_database(servers.postgres_url)
    pair_db = await fresh_database(servers.postgres_url)
    solo_prefix, pair_prefix = unique_name("solo") + ":", unique_name("pair") + ":"
    configs = [
        settings(tmp_path, "solo", solo_db, servers.redis_url, solo_prefix),
        settings(tmp_path, "i0", pair_db, servers.redis_url, pair_prefix, instance=0, instances=2),
        settings(tmp_path, "i1", pair_db, servers.redis_url, pair_prefix, instance=1, instances=2),
    ]
    started: list[Service] = []
    try:
        for config in configs:  # one after the other: the pair migrates one database
            service = Service(config)
            await service.start()
            started.append(service)
        yield started
    finally:
        for service in reversed(started):
            await service.stop()


def test_instance_must_be_below_instances() -> None:
    with pytest.raises(ConfigError, match=r"actors\.instance: 2 must be below actors\.instances 2"):
        load(None, environ={"AISFUSION_ACTORS__INSTANCE": "2", "AISFUSION_ACTORS__INSTANCES": "2"})
    assert load(None, environ={"AISFUSION_ACTORS__INSTANCES": "2"}).actors.instance == 0


def lines_read(service: Service) -> float:
    value = service.metrics.registry.get_sample_value(
        "aisfusion_feed_lines_total", {"source": service.config.feed.source}
    )
    return value or 0.0


async def send(service: Service, data: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def postgres_rows(url: str) -> tuple[list[Any], list[Any]]:
    conn = await asyncpg.connect(url)
    try:
        positions = await conn.fetch("SELECT * FROM positions ORDER BY mmsi, ts")
        vessels = await conn.fetch("SELECT * FROM vessels ORDER BY mmsi")
    finally:
        await conn.close()
    return [tuple(r) for r in positions], [tuple(r) for r in vessels]


async def redis_state(url: str, prefix: str) -> dict[bytes, Any]:
    """Every key under `prefix` (prefix removed) with its value, whatever its type (raw bytes:
    the live records need not be text)."""
    client = aioredis.Redis.from_url(url)
    state: dict[bytes, Any] = {}
    start = len(prefix.encode())
    try:
        async for key in client.scan_iter(match=prefix.encode() + b"*", count=1000):
            kind = (await client.type(key)).decode()
            name = key[start:]
            if kind == "hash":
                state[name] = await client.hgetall(key)
            elif kind == "zset":
                state[name] = await client.zrange(key, 0, -1, withscores=True)
            elif kind == "string":
                state[name] = await client.get(key)
            elif kind == "set":
                state[name] = await client.smembers(key)
            else:
                state[name] = kind
    finally:
        await client.aclose()
    return state


async def test_two_instances_together_store_what_one_stores(services: list[Service]) -> None:
    solo, first, second = services
    data = feed(12_000, 800)
    lines = data.count(b"\n")
    await asyncio.gather(*(send(s, data) for s in services))
    deadline = time.monotonic() + 60
    while any(lines_read(s) < lines for s in services):
        assert time.monotonic() < deadline, [lines_read(s) for s in services]
        await asyncio.sleep(0.05)
    for service in services:
        assert await service.drain()

    assert solo.postgres is not None and first.postgres is not None
    solo_positions, solo_vessels = await postgres_rows(solo.postgres._url)
    pair_positions, pair_vessels = await postgres_rows(first.postgres._url)
    assert len(solo_positions) > 5_000  # not vacuous
    assert pair_positions == solo_positions
    assert pair_vessels == solo_vessels

    assert solo.redis is not None and first.redis is not None
    url = solo.config.redis.url
    solo_live = await redis_state(url, solo.redis.prefix)
    pair_live = await redis_state(url, first.redis.prefix)
    # Not vacuous: hundreds of vessels' live state, whatever its layout in keys.
    assert sum(len(v) if isinstance(v, dict | list | set) else 1 for v in solo_live.values()) > 500
    assert pair_live == solo_live

    # Each instance decided only its own MMSIs and counted the rest as skipped, not rejected.
    loop = asyncio.get_running_loop()
    for index, service in enumerate((first, second)):
        stats = [
            await loop.run_in_executor(None, shard.ask, ShardStats()) for shard in service.shards
        ]
        processed = sum(s["processed"] for s in stats)
        skipped = sum(s.get("skipped", 0) for s in stats)
        messages = service.metrics.registry.get_sample_value(
            "aisfusion_feed_messages_total", {"source": service.config.feed.source}
        )
        assert processed + skipped == messages
        assert 0 < skipped < messages
        # No vessel actor of the other instance's MMSIs was ever created here.
        others = sorted({row[0] for row in pair_positions if row[0] % 2 != index})[:20]
        assert others
        for mmsi in others:
            assert await loop.run_in_executor(None, service.vessel, mmsi) is None
        decisions = service.metrics.registry.get_sample_value("aisfusion_decisions_total")
        assert decisions == sum(1 for row in pair_positions if row[0] % 2 == index)
