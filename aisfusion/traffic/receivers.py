"""Simulated receivers watching one simulated fleet: the input of fusion, with ground truth.

Every transmission of a :class:`~aisfusion.traffic.simulator.Fleet` is heard (or lost) by each
:class:`Receiver` independently. A receiver stamps what it hears with its own clock in an NMEA
4.10 tag block (``s:`` its name, ``c:`` its receive time), may add position noise (it re-encodes
the payload, as aggregators and some satellite feeds do), delivers after its own delay, and
sometimes delivers a line twice. At most one receiver misbehaves on purpose (`Receiver.fault`):

- ``offset``: every position it passes on is displaced by ``fault_offset_m`` (one bearing);
- ``clock``:  its clock is ``fault_skew_s`` off (on top of ``skew_s``);
- ``jumps``:  a fraction ``fault_jump_rate`` of its positions is spoofed 5-50 km away.

:class:`Network` advances the fleet and returns :class:`Delivery`s in arrival order, each with
the truth it was made from, so fusion can be scored against where the vessels really were. Like
the fleet, everything is a function of the seed, never of how callers slice time.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Final, Literal

import msgspec

from aisfusion.traffic.motion import EARTH_RADIUS_M
from aisfusion.traffic.nmea_out import Fields, encode, tag_block
from aisfusion.traffic.simulator import Fleet, SimReport

Fault = Literal["offset", "clock", "jumps"]
FAULTS: Final = ("offset", "clock", "jumps")
_DUPLICATE_GAP_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class Receiver:
    """One simulated receiver (a tag-block station) and how it hears the fleet."""

    name: str
    loss: float = 0.0  # probability a transmission is not heard
    noise_m: float = 0.0  # standard deviation of the position noise it adds (metres)
    delay_s: float = 0.0  # mean delivery delay (exponentially distributed)
    duplicates: float = 0.0  # probability a heard message is delivered twice
    skew_s: float = 0.0  # offset of its clock
    fault: Fault | None = None
    fault_offset_m: float = 1500.0
    fault_skew_s: float = 20.0
    fault_jump_rate: float = 0.5

    def __post_init__(self) -> None:
        if not self.name or any(ch in self.name for ch in ",*\\!$\r\n/"):
            raise ValueError(f"receiver name {self.name!r} cannot be a tag-block station")
        for name in ("loss", "duplicates", "fault_jump_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"receiver {self.name}: {name} must be within 0..1")
        for name in ("noise_m", "delay_s", "fault_offset_m"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"receiver {self.name}: {name} must be >= 0")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"receiver {self.name}: fault must be one of {FAULTS}")

    @property
    def clock_s(self) -> float:
        """Total offset of this receiver's clock."""
        return self.skew_s + (self.fault_skew_s if self.fault == "clock" else 0.0)


def receivers(
    n: int = 3,
    *,
    fault: Fault | None = None,
    loss: float = 0.2,
    noise_m: float = 0.0,
    delay_s: float = 0.5,
    duplicates: float = 0.02,
    skew_s: float = 0.0,
    prefix: str = "rx",
) -> list[Receiver]:
    """`n` honest receivers ``{prefix}-1..n`` around the given figures (the k-th loses and
    lags a little more than the one before, clocks alternate around `skew_s`), plus
    ``{prefix}-bad`` with `fault` when one is asked for."""
    if n < 0:
        raise ValueError(f"receiver count must be >= 0, got {n}")
    out = [
        Receiver(
            f"{prefix}-{k + 1}",
            loss=min(0.95, loss * (0.5 + k / max(1, n - 1))) if n > 1 else loss,
            noise_m=noise_m,
            delay_s=delay_s * (1 + k),
            duplicates=duplicates,
            skew_s=skew_s if k % 2 == 0 else -skew_s,
        )
        for k in range(n)
    ]
    if fault is not None:
        out.append(
            Receiver(
                f"{prefix}-bad",
                loss=loss,
                noise_m=noise_m,
                delay_s=delay_s,
                duplicates=duplicates,
                skew_s=skew_s,
                fault=fault,
            )
        )
    return out


class Delivery(msgspec.Struct, frozen=True):
    """What one receiver passes on of one transmission, and the truth behind it."""

    arrival: float  # simulated time the lines reach the service
    station: str
    t_tag: float  # the receiver's receive time (its clock), as in the tag block
    lines: list[str]  # tag-blocked sentences
    report: SimReport  # the transmission: true time and, for positions, true lat/lon
    lat: float | None  # the position as delivered (after noise or a fault)
    lon: float | None
    tampered: bool = False  # displaced on purpose by a faulty receiver


def _displace(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    dlat = math.degrees(north_m / EARTH_RADIUS_M)
    dlon = math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return max(-89.9, min(89.9, lat + dlat)), (lon + dlon + 180.0) % 360.0 - 180.0


class Network:
    """A fleet heard by several receivers; `step` returns deliveries in arrival order."""

    def __init__(
        self,
        fleet: Fleet,
        receivers: Sequence[Receiver],
        *,
        seed: int = 0,
        truth: IO[str] | None = None,
    ) -> None:
        names = [r.name for r in receivers]
        if len(set(names)) != len(names):
            raise ValueError(f"receiver names must be unique, got {names}")
        self.fleet = fleet
        self.receivers = list(receivers)
        self._rngs = [random.Random(f"aisfusion-rx:{seed}:{r.name}") for r in receivers]
        self._bearings = [rng.uniform(0, math.tau) for rng in self._rngs]
        self._queue: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._truth = csv.writer(truth) if truth is not None else None
        if self._truth is not None:
            self._truth.writerow(["t", "mmsi", "lat", "lon", "sog", "cog"])

    @property
    def now(self) -> float:
        return self.fleet.now

    @property
    def next_due(self) -> float:
        """Simulated time of the next transmission or arrival, whichever is first."""
        queued = self._queue[0][0] if self._queue else math.inf
        return min(self.fleet.next_due, queued)

    def step(self, dt: float) -> list[Delivery]:
        """Advance by `dt` simulated seconds; return what arrived meanwhile, oldest first."""
        for report in self.fleet.step(dt):
            if report.lat is not None and self._truth is not None:
                f = report.fields
                self._truth.writerow(
                    (
                        f"{report.t:.3f}",
                        report.mmsi,
                        f"{report.lat:.7f}",
                        f"{report.lon:.7f}",
                        f.get("speed", ""),
                        f.get("course", ""),
                    )
                )
            for i, receiver in enumerate(self.receivers):
                self._hear(i, receiver, report)
        out = []
        while self._queue and self._queue[0][0] <= self.fleet.now:
            out.append(heapq.heappop(self._queue)[2])
        return out

    def drain(self) -> list[Delivery]:
        """Everything still in flight, in arrival order (the end of a run)."""
        out = [item[2] for item in sorted(self._queue)]
        self._queue.clear()
        return out

    def _hear(self, i: int, rx: Receiver, report: SimReport) -> None:
        rng = self._rngs[i]
        # Draw every random number for every report, heard or not, so that one receiver's
        # settings never shift another's (or its own later) draws.
        lost = rng.random() < rx.loss
        delay = rng.expovariate(1.0 / rx.delay_s) if rx.delay_s > 0 else 0.0
        twice = rng.random() < rx.duplicates
        noise_n, noise_e = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
        spoof = rng.random() < rx.fault_jump_rate
        spoof_bearing, spoof_m = rng.uniform(0, math.tau), rng.uniform(5_000.0, 50_000.0)
        if lost:
            return
        lat, lon, sentences, tampered = report.lat, report.lon, report.sentences, False
        if lat is not None and lon is not None:
            north, east = noise_n * rx.noise_m, noise_e * rx.noise_m
            if rx.fault == "offset":
                b = self._bearings[i]
                north += rx.fault_offset_m * math.cos(b)
                east += rx.fault_offset_m * math.sin(b)
                tampered = True
            elif rx.fault == "jumps" and spoof:
                north += spoof_m * math.cos(spoof_bearing)
                east += spoof_m * math.sin(spoof_bearing)
                tampered = True
            if north or east:
                lat, lon = _displace(lat, lon, north, east)
                fields: Fields = {**report.fields, "lat": lat, "lon": lon}
                sentences = encode(fields, channel=report.channel)
        t_tag = report.t + rx.clock_s
        lines = [tag_block(s, station=rx.name, t=t_tag) for s in sentences]
        arrival = report.t + delay
        delivery = Delivery(arrival, rx.name, t_tag, lines, report, lat, lon, tampered)
        heapq.heappush(self._queue, (arrival, next(self._order), delivery))
        if twice:
            again = msgspec.structs.replace(delivery, arrival=arrival + _DUPLICATE_GAP_S)
            heapq.heappush(self._queue, (again.arrival, next(self._order), again))
