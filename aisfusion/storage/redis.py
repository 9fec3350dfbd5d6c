"""Redis live state (redis-py asyncio with hiredis): one record per vessel, a geo index and an
activity index, every key under the configured environment prefix.

Keys::

    {prefix}vessel:{mmsi}   hash   lat lon sog cog hdg nav ts src stn
    {prefix}geo             geo    member = mmsi
    {prefix}seen            zset   member = mmsi, score = last position time (UNIX s)
"""

from __future__ import annotations

import logging
from typing import Any

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
