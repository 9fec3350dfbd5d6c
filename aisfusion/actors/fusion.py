"""Pure fusion rules: geometry, the plausibility gate, clocks, scores and agreement.

Everything here is a function of its arguments (no state, no clock), so every rule can be
property-tested on its own; `actors/vessel.py` applies them in order and `actors/sources.py`
keeps the per-source averages they feed.

Units: distances in metres, speeds in knots (AIS units), times in UNIX seconds.
"""

from __future__ import annotations

import math
from typing import Final

from aisfusion.config import FusionConfig

EARTH_RADIUS_M: Final = 6_371_000.0
KNOT_MPS: Final = 1852.0 / 3600.0
# SAR aircraft report speed up to 1022 kn; their gate is never below 102.2 kn (the largest
# ship speed AIS can encode), whatever is configured.
SAR_MIN_LIMIT_KN: Final = 102.2
# Dead reckoning over longer gaps drifts (turns, speed changes): the agreement tolerance
# grows by this much per second between the reference and the observation.
AGREE_GROWTH_MPS: Final = 2.0
# The UTC second field: 60 means "not available", 61-63 are positioning-system states.
SECOND_NA: Final = 60


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def dead_reckon(
    lat: float, lon: float, sog_kn: float | None, cog_deg: float | None, dt_s: float
) -> tuple[float, float]:
    """Where a vessel at (lat, lon) is `dt_s` later (or earlier, if negative) at constant
    speed and course; without both, it is assumed to stay put."""
    if sog_kn is None or cog_deg is None or sog_kn <= 0.0 or dt_s == 0.0:
        return lat, lon
    dist = sog_kn * KNOT_MPS * dt_s
    c = math.radians(cog_deg)
    dlat = dist * math.cos(c) / EARTH_RADIUS_M
    coslat = max(1e-6, math.cos(math.radians(lat) + dlat / 2))
    dlon = dist * math.sin(c) / (EARTH_RADIUS_M * coslat)
    new_lon = (lon + math.degrees(dlon) + 180.0) % 360.0 - 180.0
    return max(-90.0, min(90.0, lat + math.degrees(dlat))), new_lon


def implied_speed_kn(dist_m: float, dt_s: float, allowance_m: float) -> float:
    """Speed needed to cover `dist_m` in `dt_s`, after forgiving `allowance_m` of position
    noise; gaps under a second count as a second (tag-block times are whole seconds)."""
    return max(0.0, dist_m - allowance_m) / max(abs(dt_s), 1.0) / KNOT_MPS


def is_high_speed_craft(ship_type: int | None) -> bool:
    """Wing-in-ground (20-29) and high-speed craft (40-49) ship types."""
    return ship_type is not None and (20 <= ship_type <= 29 or 40 <= ship_type <= 49)


def speed_limit_kn(
    msg_type: int, ship_type: int | None, reference_sog: float | None, cfg: FusionConfig
) -> float:
    """The fastest plausible speed for this vessel: by class (SAR aircraft, high-speed craft,
    other ships), and never below half again what the vessel itself last reported."""
    if msg_type == 9:
        limit = max(cfg.sar_max_speed_kn, SAR_MIN_LIMIT_KN)
    elif is_high_speed_craft(ship_type):
        limit = cfg.hsc_max_speed_kn
    else:
        limit = cfg.ship_max_speed_kn
    if reference_sog is not None:
        limit = max(limit, 1.5 * reference_sog)
    return limit


def report_interval_s(msg_type: int, sog: float | None, nav_status: int | None) -> float:
    """Nominal reporting interval (ITU-R M.1371) of a vessel from its last position report."""
    if msg_type == 9:
        return 10.0
    if msg_type == 27:
        return 180.0
    if msg_type in (18, 19):
        return 30.0 if sog is not None and sog > 2.0 else 180.0
    if sog is None or (nav_status in (1, 5) and sog <= 3.0) or sog <= 0.1:
        return 180.0
    if sog <= 14.0:
        return 10.0
    if sog <= 23.0:
        return 6.0
    return 2.0


def track_timeout_s(interval_s: float, cfg: FusionConfig) -> float:
    """How long a live position gates new ones: three missed reports, at least the setting."""
    return max(cfg.track_timeout_s, 3.0 * interval_s)


def clock_offset_s(ts: float, second: int) -> float | None:
    """Receive time minus the time the message's own UTC second field implies, wrapped into
    [-30, 30) s; None when the message carries no usable second (60-63)."""
    if not 0 <= second < SECOND_NA or not math.isfinite(ts):
        return None
    return (ts - second + 30.0) % 60.0 - 30.0


def freshness(age_s: float, tau_s: float) -> float:
    """Weight of an observation `age_s` older than the newest candidate: 1 when fresh."""
    return math.exp(-max(0.0, age_s) / tau_s)


def corroboration(witnesses: int, bonus: float) -> float:
    """Score factor from independent sources vouching for one observation."""
    return 1.0 + bonus * max(0, witnesses - 1)


def score(weight: float, witnesses: int, age_s: float, cfg: FusionConfig) -> float:
    """Source weight (base weight x current quality) x freshness x corroboration (the two
    functions above, inlined: this runs for every candidate of every decision)."""
    fresh = math.exp(-age_s / cfg.freshness_s) if age_s > 0.0 else 1.0
    return weight * fresh * (1.0 + cfg.corroboration_bonus * max(0, witnesses - 1))


def agreement(residual_m: float, dt_s: float, cfg: FusionConfig) -> float:
    """How well an observation agrees with the live decision dead-reckoned to its time, in
    [0, 1]: 1 within the tolerance, falling as tolerance / residual beyond it."""
    tolerance = cfg.agree_m + AGREE_GROWTH_MPS * abs(dt_s)
    if residual_m <= tolerance:
        return 1.0
    return tolerance / residual_m


def ewma(value: float, mean: float, alpha: float, n: int) -> float:
    """`n` exponentially weighted updates towards `mean` in one step (exact when the `n`
    samples are equal, and always between `value` and `mean`)."""
    keep = (1.0 - alpha) ** n
    return keep * value + (1.0 - keep) * mean
