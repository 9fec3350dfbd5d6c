"""Redis live state (redis-py asyncio with hiredis): one record per vessel, a geo index and an
activity index, every key under the configured environment prefix.

Keys::

    {prefix}vessel:{mmsi}   hash   lat lon sog cog hdg nav ts src stn
    {prefix}geo             geo    member = mmsi
    {prefix}seen            zset   member = mmsi, score = last position time (UNIX s)
"""

from __future__ import annotations

import logging
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from aisfusion.errors import PermanentStorageError, TransientStorageError
from aisfusion.messages import Position

log = logging.getLogger(__name__)

# GEOADD rejects latitudes outside the Web-Mercator range; such vessels keep their record
# and activity entry but cannot be in the geo index.
GEO_LAT_LIMIT = 85.05112878


def _wrap(exc: RedisError, what: str) -> Exception:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return TransientStorageError(f"{what}: {exc!r}")
    return PermanentStorageError(f"{what}: {exc!r}")


def live_record(p: Position) -> dict[FieldT, EncodableT]:
    """The hash fields of one vessel's live record; absent values are left out."""
    record: dict[FieldT, EncodableT] = {
        "lat": repr(p.lat),
        "lon": repr(p.lon),
        "ts": f"{p.ts:.6f}",
        "src": p.source,
    }
    if p.sog is not None:
        record["sog"] = repr(p.sog)
    if p.cog is not None:
        record["cog"] = repr(p.cog)
    if p.heading is not None:
        record["hdg"] = str(p.heading)
    if p.nav_status is not None:
        record["nav"] = str(p.nav_status)
    if p.station is not None:
        record["stn"] = p.station
    return record


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """Live state in Redis; every method runs on the storage event loop."""

    def __init__(self, url: str, prefix: str) -> None:
        self._url = url
        self.prefix = prefix
        self._client: aioredis.Redis | None = None

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise TransientStorageError("redis store is not connected")
        return self._client

    async def connect(self) -> None:
        # socket_timeout=None: redis-py arms a timer per reply otherwise, which halves throughput.
        self._client = aioredis.Redis.from_url(self._url, socket_timeout=None)
        try:
            await self._client.ping()
        except RedisError as exc:
            raise _wrap(exc, "connect to redis") from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def write_live(self, positions: list[Position]) -> None:
        """Write the latest position of each vessel (the caller conflates)."""
        if not positions:
            return
        geo_key, seen_key = self.key("geo"), self.key("seen")
        pipe = self.client.pipeline(transaction=False)
        geo: list[Any] = []
        seen: dict[str, float] = {}
        for p in positions:
            pipe.hset(self.key("vessel", p.mmsi), mapping=live_record(p))
            if -GEO_LAT_LIMIT <= p.lat <= GEO_LAT_LIMIT:
                geo.extend((p.lon, p.lat, p.mmsi))
            seen[str(p.mmsi)] = p.ts
        if geo:
            pipe.geoadd(geo_key, geo)
        pipe.zadd(seen_key, seen)
        try:
            await pipe.execute()
        except RedisError as exc:
            raise _wrap(exc, f"write {len(positions)} live records") from exc

    async def live(self, mmsi: int) -> dict[str, str]:
        raw = await self.client.hgetall(self.key("vessel", mmsi))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def live_count(self) -> int:
        return int(await self.client.zcard(self.key("seen")))

    async def geo_count(self) -> int:
        return int(await self.client.zcard(self.key("geo")))

    async def live_records(self, mmsis: list[int]) -> dict[int, dict[str, str]]:
        """The live records of `mmsis` that exist (rehydration of passivated vessels)."""
        if not mmsis:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for mmsi in mmsis:
            pipe.hgetall(self.key("vessel", mmsi))
        try:
            replies = await pipe.execute()
        except RedisError as exc:
            raise _wrap(exc, f"read {len(mmsis)} live records") from exc
        return {
            mmsi: {_text(k): _text(v) for k, v in raw.items()}
            for mmsi, raw in zip(mmsis, replies, strict=True)
            if raw
        }

    async def live_mmsis(self) -> list[int]:
        """Every vessel in the activity index (the vessels that have a live record)."""
        try:
            members = await self.client.zrange(self.key("seen"), 0, -1)
        except RedisError as exc:
            raise _wrap(exc, "read the activity index") from exc
        return [int(m) for m in members if isinstance(m, bytes | str)]

    async def near(
        self, lat: float, lon: float, km: float, limit: int
    ) -> list[tuple[int, float, dict[str, str]]]:
        """Up to `limit` vessels of the geo index within `km` of (lat, lon), nearest first:
        (mmsi, distance in km, live record). For operators (the shell's `near`)."""
        try:
            hits = await self.client.geosearch(
                self.key("geo"),
                longitude=lon,
                latitude=lat,
                radius=km,
                unit="km",
                sort="ASC",
                count=limit,
                withdist=True,
            )
            found = [(int(_text(member)), float(dist)) for member, dist in cast(Any, hits)]
            pipe = self.client.pipeline(transaction=False)
            for mmsi, _ in found:
                pipe.hgetall(self.key("vessel", mmsi))
            records = await pipe.execute() if found else []
        except RedisError as exc:
            raise _wrap(exc, f"search vessels within {km:g} km") from exc
        return [
            (mmsi, dist, {_text(k): _text(v) for k, v in raw.items()})
            for (mmsi, dist), raw in zip(found, records, strict=True)
        ]

    async def memory(self) -> tuple[int, int]:
        """The server's (used_memory, maxmemory) in bytes; maxmemory 0 means no limit."""
        try:
            info = await self.client.info("memory")
        except RedisError as exc:
            raise _wrap(exc, "read memory info") from exc
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
