"""The read API over the stores, for the operations surfaces: live records and the geo index
in Redis, static data and stored tracks in PostgreSQL.

Every method blocks: it runs its query on the storage loop (`bridge`) and waits, so call it
from a surface's own thread, never from the feed loop or the storage loop itself.
"""

from __future__ import annotations

from typing import Any

from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import NEAR_MAX_KM, RedisStore

_FLOAT_FIELDS = frozenset({"lat", "lon", "sog", "cog", "ts"})
_STATIC_TIMEOUT_S = 3.0


def _typed(record: dict[str, str]) -> dict[str, Any]:
    """A live record's fields with the numeric ones as floats (a malformed one stays text)."""
    typed: dict[str, Any] = {}
    for key, value in record.items():
        try:
            typed[key] = float(value) if key in _FLOAT_FIELDS else value
        except ValueError:
            typed[key] = value
    return typed


class StoreReads:
    def __init__(self, bridge: AsyncBridge, redis: RedisStore, postgres: PostgresStore) -> None:
        self._bridge = bridge
        self._redis = redis
        self._postgres = postgres

    def live_record(self, mmsi: int, timeout: float = 5.0) -> dict[str, str] | None:
        """One vessel's live record as Redis holds it."""
        return self._bridge.run(self._redis.live(mmsi), timeout) or None

    def near(self, lat: float, lon: float, km: float, limit: int = 20) -> list[dict[str, Any]]:
        """Live vessels within `km` of (lat, lon), nearest first."""
        if not 0 < km <= NEAR_MAX_KM:
            raise ValueError(f"radius must be within 0..{NEAR_MAX_KM:g} km, got {km:g}")
        hits = self._bridge.run(self._redis.near(lat, lon, km, limit), 5.0)
        return [
            {"mmsi": mmsi, "distance_km": round(dist, 3), **_typed(record)}
            for mmsi, dist, record in hits
        ]

    def vessel_info(self, mmsi: int, *, include_deleted: bool = False) -> dict[str, Any] | None:
        """One vessel's live record (Redis) and static data (PostgreSQL); None when neither
        has it. A soft-deleted vessel's static data only with `include_deleted`."""
        record = self._bridge.run(self._redis.live(mmsi), 5.0)
        static = self._bridge.run(
            self._postgres.vessel(mmsi, include_deleted=include_deleted), _STATIC_TIMEOUT_S
        )
        if not record and static is None:
            return None
        return {"mmsi": mmsi, "live": _typed(record) if record else None, "static": static}

    def track(
        self, mmsi: int, start: float, end: float, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """A vessel's stored positions with start <= ts < end, oldest first."""
        if not start < end:
            raise ValueError(f"the track's start must be before its end ({start:g}, {end:g})")
        return self._bridge.run(self._postgres.track(mmsi, start, end, limit), 30.0)
