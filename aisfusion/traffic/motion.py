"""How a simulated vessel truly moves (`aisfusion.traffic.simulator` reports it).

Motion model: every vessel keeps a constant speed and steers, at a bounded rate of turn, towards
a random waypoint inside the bounding box; control is updated on a fixed grid of simulated time
and the track between grid points is a closed-form arc. The truth therefore depends only on the
seed, never on how callers slice time into steps.
"""

from __future__ import annotations

import math
import random
from typing import Final

EARTH_RADIUS_M: Final = 6_371_000.0
KNOT_MPS: Final = 1852.0 / 3600.0
CONTROL_PERIOD_S: Final = 10.0
_WANDER_RAD_S: Final = math.radians(0.005)


class Track:
    """A vessel's true motion: a closed-form arc between fixed control instants."""

    __slots__ = (
        "arrive_m",
        "bbox",
        "cog0",
        "inner",
        "lat0",
        "lon0",
        "rng",
        "rot",
        "rot_max",
        "sog",
        "t0",
        "t_end",
        "wp_deadline",
        "wp_lat",
        "wp_lon",
    )

    def __init__(
        self,
        rng: random.Random,
        bbox: tuple[float, float, float, float],
        t: float,
        lat: float,
        lon: float,
        cog: float,
        speed_kn: float,
        rot_max_deg_s: float,
    ) -> None:
        self.rng = rng
        self.bbox = bbox
        lat_min, lon_min, lat_max, lon_max = bbox
        dlat, dlon = (lat_max - lat_min) * 0.1, (lon_max - lon_min) * 0.1
        # Waypoints keep clear of the edges, so turning circles rarely meet the boundary.
        self.inner = (lat_min + dlat, lon_min + dlon, lat_max - dlat, lon_max - dlon)
        self.sog = speed_kn * KNOT_MPS
        self.rot_max = math.radians(rot_max_deg_s)
        self.t0, self.lat0, self.lon0, self.cog0, self.rot = t, lat, lon, cog, 0.0
        self.arrive_m = max(3.0 * self.sog / self.rot_max, 500.0)
        self.wp_lat, self.wp_lon, self.wp_deadline = lat, lon, t
        self.t_end = t + CONTROL_PERIOD_S if self.sog > 0 else math.inf
        if self.sog > 0:
            self._steer()

    def _evolve(self, tau: float) -> tuple[float, float, float]:
        c0, w, v = self.cog0, self.rot, self.sog
        if abs(w) < 1e-12:
            east, north = v * tau * math.sin(c0), v * tau * math.cos(c0)
        else:
            c1 = c0 + w * tau
            east = v / w * (math.cos(c0) - math.cos(c1))
            north = v / w * (math.sin(c1) - math.sin(c0))
        dlat = north / EARTH_RADIUS_M
        lat_mid = math.radians(self.lat0) + dlat / 2
        dlon = east / (EARTH_RADIUS_M * math.cos(lat_mid))
        # A great circle's bearing drifts by sin(lat) per radian of longitude.
        cog = (c0 + w * tau + dlon * math.sin(lat_mid)) % math.tau
        return self.lat0 + math.degrees(dlat), self.lon0 + math.degrees(dlon), cog

    def _inside(self, lat: float, lon: float) -> bool:
        # The margin covers the arc's bulge between the checked end points (well under 1 m).
        lat_min, lon_min, lat_max, lon_max = self.bbox
        eps = 1e-5
        return lat_min + eps <= lat <= lat_max - eps and lon_min + eps <= lon <= lon_max - eps

    def _steer(self) -> None:
        coslat = math.cos(math.radians(self.lat0))
        north = math.radians(self.wp_lat - self.lat0) * EARTH_RADIUS_M
        east = math.radians(self.wp_lon - self.lon0) * EARTH_RADIUS_M * coslat
        dist = math.hypot(north, east)
        if dist < self.arrive_m or self.t0 >= self.wp_deadline:
            lat_min, lon_min, lat_max, lon_max = self.inner
            self.wp_lat = self.rng.uniform(lat_min, lat_max)
            self.wp_lon = self.rng.uniform(lon_min, lon_max)
            north = math.radians(self.wp_lat - self.lat0) * EARTH_RADIUS_M
            east = math.radians(self.wp_lon - self.lon0) * EARTH_RADIUS_M * coslat
            dist = math.hypot(north, east)
            # A waypoint circled for too long is given up rather than orbited forever.
            self.wp_deadline = self.t0 + 3.0 * dist / self.sog + 600.0
        error = (math.atan2(east, north) - self.cog0 + math.pi) % math.tau - math.pi
        rot = error / CONTROL_PERIOD_S + self.rng.gauss(0.0, _WANDER_RAD_S)
        self.rot = max(-self.rot_max, min(self.rot_max, rot))
        lat1, lon1, _ = self._evolve(CONTROL_PERIOD_S)
        if not self._inside(lat1, lon1):
            # Hard guarantee for small boxes: head straight for the centre for this period.
            lat_min, lon_min, lat_max, lon_max = self.bbox
            north = math.radians((lat_min + lat_max) / 2 - self.lat0)
            east = math.radians((lon_min + lon_max) / 2 - self.lon0) * coslat
            self.cog0, self.rot = math.atan2(east, north) % math.tau, 0.0

    def state_at(self, t: float) -> tuple[float, float, float]:
        """True (lat, lon, course in radians) at ``t``; ``t`` never goes backwards."""
        while t > self.t_end:
            self.lat0, self.lon0, self.cog0 = self._evolve(self.t_end - self.t0)
            self.t0 = self.t_end
            self.t_end += CONTROL_PERIOD_S
            self._steer()
        return self._evolve(t - self.t0)
