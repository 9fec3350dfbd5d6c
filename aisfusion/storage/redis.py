"""Redis live state (redis-py asyncio with hiredis): one record per vessel, a geo index and an
activity index, every key under the configured environment prefix.

Keys, under the prefix ``P`` (``prod:``, ``staging:`` …: environments share a server safely)::

    P vessel:{mmsi}      the live record: compact string or JSON document (storage/redis_layout)
    P geo                geo index, member = mmsi (with redis.geo_cell_deg: P geo:{lat0}:{lon0})
    P seen               activity index: zset, member = mmsi, score = last position time (UNIX s)
    P layout             the record layout in use under this prefix, pinned at first use
    P {dlq}:…            the dead-letter queue (storage/dlq.py)

Redis Cluster: every key hashes on its own name, so records spread over all slots; the only hash
tag is the dead-letter queue's ``{dlq}``, whose scripts touch several keys at once. Nothing else
needs cross-key atomicity: a vessel's record, geo entry and activity entry are written by one
pipeline and each converges on the latest write. The geo index can be split into cells
(`storage/geocells.py`) so that it, and the searches on it, spread over the nodes too; the
activity index stays one key (one ZADD per flush, not per vessel).

Layout: ``redis.layout = "auto"`` takes ``json`` when the server has the JSON module (``COMMAND
INFO JSON.SET``), else ``compact``; the choice is pinned in ``P layout`` so a server that gains
the module later (an upgrade to Redis 8) keeps reading what it wrote. An explicit layout that
differs from the pinned one stops the start with an error that says what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aisfusion.errors import PermanentStorageError, TransientStorageError
from aisfusion.messages import Position
from aisfusion.storage import geocells, resp
from aisfusion.storage.geocells import GEO_LAT_LIMIT
from aisfusion.storage.redis_layout import LAYOUTS, Layout, layout
from aisfusion.storage.resp import Arg, Command

__all__ = ["GEO_LAT_LIMIT", "NEAR_MAX_KM", "RedisStore", "cluster_url"]

log = logging.getLogger(__name__)

_CLUSTER_SCHEMES = {"redis+cluster://": "redis://", "rediss+cluster://": "rediss://"}
_EVICT_CHUNK = 1000
_UNKNOWN = "?"  # a vessel whose geo cell this process has not seen yet
NEAR_MAX_KM = 500.0  # the widest `near`: a dense 50 km GEOSEARCH already blocks Redis for ms


def _wrap(exc: RedisError, what: str) -> Exception:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return TransientStorageError(f"{what}: {exc!r}")
    return PermanentStorageError(f"{what}: {exc!r}")


def cluster_url(url: str, cluster: bool) -> tuple[str, bool]:
    """The URL redis-py takes and whether it names a cluster (``redis+cluster://``)."""
    for scheme, plain in _CLUSTER_SCHEMES.items():
        if url.startswith(scheme):
            return plain + url[len(scheme) :], True
    return url, cluster


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """Live state in Redis; every method runs on the storage event loop."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        layout: str = "auto",
        cluster: bool = False,
        geo_cell_deg: int = 0,
        newer_only: bool = False,
    ) -> None:
        if layout != "auto" and layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}")
        self._url, self.cluster = cluster_url(url, cluster)
        self.prefix = prefix
        self.wanted_layout = layout
        self.geo_cell_deg = geo_cell_deg
        # Write a live record only over an older one (`aisfusion import`: its vessels do not
        # know the live picture, and an archive must not move it back in time).
        self.newer_only = newer_only
        self._client: aioredis.Redis | None = None
        self._layout: Layout | None = None
        self.json_module: bool | None = None  # known once connected
        # The geo cell each vessel was last indexed in (only with cells): a vessel that moves
        # to another cell leaves the old one.
        self._cells: dict[int, str | None] = {}
        self._pinned = False

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise TransientStorageError("redis store is not connected")
        return self._client

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            raise TransientStorageError("redis store is not connected")
        return self._layout

    async def connect(self) -> None:
        # socket_timeout=None: redis-py arms a timer per reply otherwise, which halves throughput.
        # One immediate retry on a connection error: after Redis restarts, a pooled connection
        # is dead until used (redis-py's from_url retries nothing). A second failure is a real
        # outage, raised at once so the breaker sees it.
        try:
            if self.cluster:
                cluster = RedisCluster.from_url(self._url, socket_timeout=None)
                await cluster.initialize()
                # The same command API as a single server; only `memory` asks every node.
                self._client = cast(aioredis.Redis, cluster)
            else:
                self._client = aioredis.Redis.from_url(
                    self._url, socket_timeout=None, retry=Retry(NoBackoff(), 1)
                )
                await self._client.ping()
            self.json_module = await self._has_json()
            self._layout = layout(await self._pin_layout())
        except RedisError as exc:
            raise _wrap(exc, "connect to redis") from exc
        log.info(
            "redis: layout %s (JSON module %s)%s, prefix %r",
            self._layout.name,
            "present" if self.json_module else "absent",
            ", cluster" if self.cluster else "",
            self.prefix,
        )

    async def _has_json(self) -> bool:
        """Whether the server has the JSON module (RedisJSON, valkey-json, Redis 8).

        Asked with a harmless JSON command on a key that does not exist: MODULE LIST is often
        disabled on managed servers, and Redis 8 has JSON built in.
        """
        try:
            client = cast(Any, self.client)  # execute_command is untyped in redis-py
            await client.execute_command("JSON.TYPE", self.key("json-probe"))
        except (RedisConnectionError, RedisTimeoutError):
            raise
        except RedisError:  # unknown command or not allowed (a cluster client says so itself)
            return False
        return True

    async def _pin_layout(self, *, write: bool = False) -> str:
        """The layout to use: the pinned one, else the one asked for or detected. With
        `write`, pins it (at the first write, so a store that only reads leaves no key)."""
        pin = self.key("layout")
        raw = await self.client.get(pin)
        pinned = _text(raw) if raw is not None else None
        self._pinned = pinned is not None
        if self.wanted_layout == "auto":
            chosen = pinned or ("json" if self.json_module else "compact")
        else:
            chosen = self.wanted_layout
        if pinned is not None and pinned != chosen:
            raise PermanentStorageError(
                f"redis.layout: {chosen!r} asked, but the live records under prefix "
                f"{self.prefix!r} are {pinned!r} (key {pin}); set redis.layout to {pinned!r} or "
                "'auto', or delete that prefix's live state (keys vessel:*, geo*, seen and "
                "layout under it; it is rebuilt from the next reports)"
            )
        if chosen == "json" and not self.json_module:
            raise PermanentStorageError(
                "redis.layout: 'json' needs the JSON module, which this server lacks; use "
                "'compact' or 'auto'"
            )
        if write and pinned is None:
            if not await self.client.set(pin, chosen, nx=True):
                return await self._pin_layout()  # another instance pinned first: agree or fail
            self._pinned = True
        return chosen

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _execute(self, commands: list[Command]) -> list[Any]:
        """Replies to `commands` in order, error replies in place: hand-packed on one
        connection to a single server, through redis-py's pipeline (routing by slot) to a
        cluster."""
        if not self.cluster:
            return await resp.execute(self.client, commands)
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)

    def status(self) -> dict[str, Any]:
        """What the store runs on, for /status."""
        return {
            "layout": None if self._layout is None else self._layout.name,
            "layout_setting": self.wanted_layout,
            "json_module": self.json_module,
            "cluster": self.cluster,
            "geo_cell_deg": self.geo_cell_deg,
            "prefix": self.prefix,
        }

    # -- writes -----------------------------------------------------------------------------

    async def write_live(self, positions: list[Position]) -> None:
        """Write the latest position of each vessel (the caller conflates)."""
        if not positions:
            return
        layout, deg = self.layout, self.geo_cell_deg
        try:
            if self.newer_only:
                # Read, then write: a live report written in between is overwritten until
                # that vessel's next one (an import beside the running service).
                held = await self.live_records([p.mmsi for p in positions])
                positions = [
                    p for p in positions if p.mmsi not in held or p.ts > float(held[p.mmsi]["ts"])
                ]
                if not positions:
                    return
            if not self._pinned:
                await self._pin_layout(write=True)
            if deg:
                await self._learn_cells([p.mmsi for p in positions if p.mmsi not in self._cells])
            geo: dict[str, list[Arg]] = {}
            gone: dict[str, list[int]] = {}
            seen: list[Arg] = ["ZADD", self.key("seen")]
            moved: dict[int, str | None] = {}  # the cells, remembered once written
            for p in positions:
                where = geocells.cell(p.lat, p.lon, deg)
                if where is not None:
                    geo.setdefault(where, []).extend((p.lon, p.lat, p.mmsi))
                if deg:
                    old = self._cells.get(p.mmsi)
                    if old is not None and old != where:
                        gone.setdefault(old, []).append(p.mmsi)
                    moved[p.mmsi] = where
                elif where is None:
                    gone.setdefault("geo", []).append(p.mmsi)
                seen += (p.ts, p.mmsi)
            record = self.key("vessel", "")
            commands = layout.writes(
                [(f"{record}{p.mmsi}", p) for p in positions], cluster=self.cluster
            )
            commands += [("ZREM", self.key(where), *members) for where, members in gone.items()]
            commands += [("GEOADD", self.key(where), *values) for where, values in geo.items()]
            commands.append(seen)
            resp.raise_errors(await self._execute(commands))
            self._cells.update(moved)
        except RedisError as exc:
            raise _wrap(exc, f"write {len(positions)} live records") from exc

    async def _learn_cells(self, mmsis: list[int]) -> None:
        """Read the geo cell of vessels this process has not written yet (after a restart)."""
        if not mmsis:
            return
        records = await self.live_records(mmsis)
        for mmsi in mmsis:
            self._cells[mmsi] = self._cell_of(records.get(mmsi))

    def _cell_of(self, record: dict[str, str] | None) -> str | None:
        """The geo cell a record's position is indexed in; None if none."""
        if record is None:
            return None
        try:
            return geocells.cell(float(record["lat"]), float(record["lon"]), self.geo_cell_deg)
        except (KeyError, ValueError):
            return None

    async def evict_inactive(self, before: float, chunk: int = _EVICT_CHUNK) -> int:
        """Remove vessels whose last position is older than `before` (UNIX s) from the live
        picture: geo index, activity index and record. Returns how many.

        Geo members have no TTL, so this is how a vessel that left leaves the map. A vessel
        whose record turns out newer (it reported meanwhile) is kept; one removed in the
        instant between that check and the removal comes back with its next report.
        """
        removed = kept = 0
        seen = self.key("seen")
        try:
            while True:
                # Kept vessels stay at the front of the range: skip past them.
                members = await self.client.zrangebyscore(seen, "-inf", f"({before!r}", kept, chunk)
                mmsis = [int(_text(m)) for m in cast(list[bytes], members)]
                records = await self.live_records(mmsis)
                doomed = [m for m in mmsis if m not in records or float(records[m]["ts"]) < before]
                if doomed:
                    await self._remove(doomed, records)
                    removed += len(doomed)
                kept += len(mmsis) - len(doomed)
                if len(mmsis) < chunk:
                    return removed
        except RedisError as exc:
            raise _wrap(exc, "remove inactive vessels") from exc

    async def _remove(self, mmsis: list[int], records: dict[int, dict[str, str]]) -> None:
        by_cell: dict[str, list[int]] = {}
        # One DEL per key: in a cluster the records live in different slots.
        commands: list[Command] = [("DEL", self.key("vessel", mmsi)) for mmsi in mmsis]
        for mmsi in mmsis:
            where = self._cells.pop(mmsi, _UNKNOWN) if self.geo_cell_deg else "geo"
            if where == _UNKNOWN:
                where = self._cell_of(records.get(mmsi))
            if where is not None:
                by_cell.setdefault(where, []).append(mmsi)
        commands += [("ZREM", self.key(where), *members) for where, members in by_cell.items()]
        commands.append(("ZREM", self.key("seen"), *mmsis))
        resp.raise_errors(await self._execute(commands))

    # -- reads ------------------------------------------------------------------------------

    async def live(self, mmsi: int) -> dict[str, str]:
        """One vessel's live record as fields (lat lon ts src sog cog hdg nav stn); {} if none."""
        return (await self.live_records([mmsi])).get(mmsi, {})

    async def live_count(self) -> int:
        return int(await self.client.zcard(self.key("seen")))

    async def geo_keys(self) -> list[str]:
        """The geo index keys that exist (one, or one per occupied cell)."""
        if not self.geo_cell_deg:
            return [self.key("geo")]
        found = {_text(k) async for k in self.client.scan_iter(match=self.key("geo:*"), count=1000)}
        return sorted(found)

    async def geo_count(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in await self.geo_keys():
            pipe.zcard(key)
        return sum(int(n) for n in await pipe.execute())

    async def _read(self, keys: Iterable[str]) -> list[dict[str, str] | None]:
        """Records at `keys` in order; None where missing or not a record of this layout."""
        layout = self.layout
        out: list[dict[str, str] | None] = []
        for reply in await self._execute([layout.read(key) for key in keys]):
            # A key of another type (WRONGTYPE) reads as missing rather than failing the lot.
            out.append(None if isinstance(reply, ResponseError) else layout.decode(reply))
        return out

    async def live_records(self, mmsis: list[int]) -> dict[int, dict[str, str]]:
        """The live records of `mmsis` that exist (rehydration of passivated vessels)."""
        if not mmsis:
            return {}
        try:
            records = await self._read(self.key("vessel", m) for m in mmsis)
        except RedisError as exc:
            raise _wrap(exc, f"read {len(mmsis)} live records") from exc
        return {
            mmsi: record for mmsi, record in zip(mmsis, records, strict=True) if record is not None
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
            pipe = self.client.pipeline(transaction=False)
            for where in geocells.cells_near(lat, lon, km, self.geo_cell_deg):
                pipe.geosearch(
                    self.key(where),
                    longitude=lon,
                    latitude=lat,
                    radius=km,
                    unit="km",
                    sort="ASC",
                    count=limit,
                    withdist=True,
                )
            hits = [
                (int(_text(member)), float(dist))
                for reply in await pipe.execute()
                for member, dist in cast(Any, reply)
            ]
            found = sorted(hits, key=lambda hit: hit[1])[:limit]
            records = await self._read(self.key("vessel", mmsi) for mmsi, _ in found)
        except RedisError as exc:
            raise _wrap(exc, f"search vessels within {km:g} km") from exc
        return [
            (mmsi, dist, record or {}) for (mmsi, dist), record in zip(found, records, strict=True)
        ]

    async def memory(self) -> tuple[int, int]:
        """The server's (used_memory, maxmemory) in bytes; maxmemory 0 means no limit.
        A cluster's is the sum over its primaries."""
        try:
            if self.cluster:
                cluster = cast(RedisCluster, self.client)
                per_node = await cluster.info("memory", target_nodes=RedisCluster.PRIMARIES)
                infos = list(per_node.values()) if _per_node(per_node) else [per_node]
            else:
                infos = [await self.client.info("memory")]
        except RedisError as exc:
            raise _wrap(exc, "read memory info") from exc
        used = sum(int(i.get("used_memory", 0)) for i in infos)
        limit = sum(int(i.get("maxmemory", 0)) for i in infos)
        return used, limit


def _per_node(info: dict[str, Any]) -> bool:
    """Whether a cluster INFO reply is keyed by node (several) or is one node's INFO."""
    return "used_memory" not in info and all(isinstance(v, dict) for v in info.values())
