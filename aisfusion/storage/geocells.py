"""The geo index split into cells, so a Redis Cluster spreads it (and its searches) over nodes.

With ``redis.geo_cell_deg = D`` (a divisor of 180) a vessel at (lat, lon) is in the cell whose
south-west corner is (floor(lat / D) * D, floor(lon / D) * D), key suffix ``geo:{lat0}:{lon0}``
(``geo:50:10`` for D = 10). A radius search asks every cell its bounding box touches and merges
the answers by distance. D = 0 keeps one ``geo`` key.
"""

from __future__ import annotations

import math

# GEOADD rejects latitudes outside the Web-Mercator range; such vessels keep their record
# and activity entry but cannot be in the geo index.
GEO_LAT_LIMIT = 85.05112878
_KM_PER_DEG_LAT = 110.5  # the smallest (at the equator): over-covers, never under-covers
_KM_PER_DEG_LON_EQUATOR = 111.32


def indexable(lat: float) -> bool:
    return -GEO_LAT_LIMIT <= lat <= GEO_LAT_LIMIT


def cell(lat: float, lon: float, deg: int) -> str | None:
    """The geo key suffix of a position; None when it cannot be in the geo index."""
    if not indexable(lat):
        return None
    if not deg:
        return "geo"
    lat0 = math.floor(lat / deg) * deg
    lon0 = math.floor(lon / deg) * deg
    if lon0 >= 180:  # lon 180 is lon -180
        lon0 -= 360
    return f"geo:{lat0}:{lon0}"


def cells_near(lat: float, lon: float, km: float, deg: int) -> list[str]:
    """Every cell a circle of `km` around (lat, lon) can reach (its bounding box's cells)."""
    if not deg:
        return ["geo"]
    dlat = km / _KM_PER_DEG_LAT
    south = max(-GEO_LAT_LIMIT, lat - dlat)
    north = min(GEO_LAT_LIMIT, lat + dlat)
    if south > north:
        return []
    widest = max(abs(south), abs(north))
    cos = math.cos(math.radians(widest))
    columns = 360 // deg
    if cos <= 0 or km / (_KM_PER_DEG_LON_EQUATOR * cos) >= 180:
        cols = list(range(columns))
    else:
        dlon = km / (_KM_PER_DEG_LON_EQUATOR * cos)
        first = math.floor((lon - dlon + 180) / deg)
        last = math.floor((lon + dlon + 180) / deg)
        cols = sorted({c % columns for c in range(first, last + 1)})
    rows = range(math.floor(south / deg), math.floor(north / deg) + 1)
    return [f"geo:{r * deg}:{c * deg - 180}" for r in rows for c in cols]
