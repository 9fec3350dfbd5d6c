"""AIS traffic simulator: a fleet that knows every vessel's true track and emits valid NMEA.

Time is simulated: :meth:`Fleet.step` advances the fleet and returns the reports that fell due,
each stamped with its simulated UNIX time and the true position it encodes, so fusion quality can
be measured against truth (see DESIGN.md, "Fusion"). Nothing here sleeps or touches the network;
:mod:`aisfusion.traffic.replay` maps simulated time to the wall clock.

Motion (`aisfusion.traffic.motion`) depends only on the seed, never on how callers slice time
into steps.

Each :class:`SimReport` keeps the field dictionary it was encoded from, so later stages can
perturb fields and re-encode with :func:`aisfusion.traffic.nmea_out.encode`:
:mod:`aisfusion.traffic.receivers` has several receivers hear the fleet, each with its own
loss, noise, delay, duplicates, clock skew, and one misbehaving on purpose, with the truth kept
beside every delivery.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from aisfusion.traffic.motion import Track
from aisfusion.traffic.nmea_out import Fields, encode, tag_block

logger = logging.getLogger(__name__)

STATIC_INTERVAL_S: Final = 360.0
# Class A reports faster while turning; ITU-R M.1371 treats roughly this rate as "changing course".
_TURNING_RAD_S: Final = math.radians(0.1)

# Realistic maritime identification digits: North Sea flags and common flags of convenience,
# with a call-sign prefix of the same administration so static data looks plausible.
# fmt: off
_MIDS_A: Final = {
    211: "D", 219: "OU", 220: "OZ", 244: "PD", 257: "LA", 265: "SE", 230: "OH", 235: "M",
    227: "F", 636: "A8", 538: "V7", 477: "VR", 563: "9V", 371: "3E", 248: "9H", 209: "5B",
    305: "V2", 311: "C6", 413: "BO", 440: "D7", 366: "W",
}
_MIDS_B: Final = {211: "D", 219: "OU", 244: "PD", 257: "LA", 265: "SE", 235: "M"}
_NAME_A_FIRST: Final = ("NORDIC", "BALTIC", "ATLANTIC", "ARCTIC", "CELTIC", "HANSA", "POLAR",
                        "NORTH", "OCEAN", "STENA", "JUTLAND", "FRISIAN")
_NAME_A_SECOND: Final = ("STAR", "SPIRIT", "EXPLORER", "TRADER", "PIONEER", "CARRIER", "WIND",
                         "QUEEN", "HUNTER", "VOYAGER", "SWAN", "GLORY")
_NAME_B: Final = ("ALBATROS", "SEAGULL", "FREJA", "ODIN", "NAJA", "MOLLY", "SIRIUS", "HAVET",
                  "LILLE MY", "KESTREL", "BLUE MOON", "TERN", "SKARV")
_PORTS: Final = ("HAMBURG", "ROTTERDAM", "BREMERHAVEN", "ESBJERG", "AARHUS", "GOTHENBURG", "OSLO",
                 "ANTWERP", "FELIXSTOWE", "SKAGEN", "KIEL", "AMSTERDAM", "HELSINKI", "GDANSK")
# fmt: on


@dataclass(frozen=True, slots=True)
class SimVessel:
    """A simulated vessel's identity and static data; its motion lives in the fleet."""

    mmsi: int
    klass: Literal["A", "B"]
    name: str
    callsign: str
    imo: int  # 0 for Class B, which does not report one
    ship_type: int
    speed_kn: float  # constant speed over ground; 0 for anchored or moored vessels
    status: int  # navigational status (Class A only)
    to_bow: int
    to_stern: int
    to_port: int
    to_starboard: int
    draught: float
    destination: str
    eta: float  # UNIX time, reported as month/day/hour/minute in type 5


class SimReport(msgspec.Struct, frozen=True):
    """One transmitted AIS message: when, who, what, the truth it encodes, and its sentences.

    ``fields`` is what was encoded; copy it before perturbing it for another receiver.
    """

    t: float
    mmsi: int
    msg_type: int
    lat: float | None
    lon: float | None
    sentences: list[str]
    channel: str = "A"
    fields: Fields = msgspec.field(default_factory=dict)


def _imo(rng: random.Random) -> int:
    digits = [9, *(rng.randrange(10) for _ in range(5))]
    check = sum(d * w for d, w in zip(digits, range(7, 1, -1), strict=True)) % 10
    return int("".join(map(str, digits))) * 10 + check


def _callsign(rng: random.Random, prefix: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return prefix + "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 7) - len(prefix)))


def _make_vessel(
    rng: random.Random, mmsi: int, klass: Literal["A", "B"], prefix: str, start_time: float
) -> SimVessel:
    role = rng.random()
    if klass == "B":
        speed = 0.0 if role < 0.15 else round(rng.uniform(3.0, 12.0), 1)
        length = rng.randint(6, 20)
        name = f"{rng.choice(_NAME_B)}" + (f" {rng.randint(2, 9)}" if rng.random() < 0.3 else "")
        ship_type, status, imo, draught = rng.choice((36, 37)), 15, 0, 0.0
    else:
        if role < 0.12:  # anchored or moored
            speed, status, ship_type = 0.0, rng.choice((1, 5)), rng.choice((70, 80))
        elif role < 0.18:
            speed, status, ship_type = round(rng.uniform(3.0, 6.0), 1), 7, 30
        elif role < 0.23:  # high-speed craft
            speed, status, ship_type = round(rng.uniform(25.0, 35.0), 1), 0, 40
        else:
            speed, status = round(rng.uniform(8.0, 22.0), 1), 0
            ship_type = rng.choice((60, 69, 70, 71, 79, 80, 84, 52))
        length = rng.randint(25, 80 if ship_type in (30, 52, 40) else 300)
        first, second = rng.choice(_NAME_A_FIRST), rng.choice(_NAME_A_SECOND)
        name = f"{first} {second}" + (f" {rng.randint(1, 9)}" if rng.random() < 0.4 else "")
        imo, draught = _imo(rng), round(min(25.5, length / 20 + rng.uniform(0.5, 3.0)), 1)
    beam = max(2, min(120, round(length / rng.uniform(5.5, 7.5))))
    to_bow = round(length * rng.uniform(0.75, 0.9))
    return SimVessel(
        mmsi=mmsi,
        klass=klass,
        name=name[:20],
        callsign=_callsign(rng, prefix),
        imo=imo,
        ship_type=ship_type,
        speed_kn=speed,
        status=status,
        to_bow=min(to_bow, 511),
        to_stern=min(length - to_bow, 511),
        to_port=min(beam // 2, 63),
        to_starboard=min(beam - beam // 2, 63),
        draught=draught,
        destination=rng.choice(_PORTS),
        eta=start_time + rng.uniform(6, 72) * 3600,
    )


class Fleet:
    """``n_vessels`` simulated vessels in ``bbox`` (lat_min, lon_min, lat_max, lon_max)."""

    def __init__(
        self,
        n_vessels: int,
        *,
        seed: int = 0,
        start_time: float = 1_700_000_000.0,
        bbox: tuple[float, float, float, float] = (54.0, 3.0, 58.0, 12.0),
    ) -> None:
        lat_min, lon_min, lat_max, lon_max = bbox
        if not (-85.0 <= lat_min < lat_max <= 85.0 and -180.0 <= lon_min < lon_max <= 180.0):
            raise ValueError(f"bbox {bbox!r} must be (lat_min, lon_min, lat_max, lon_max)")
        if n_vessels < 0:
            raise ValueError(f"n_vessels must be >= 0, got {n_vessels}")
        self.bbox = bbox
        self.now = start_time
        self.vessels: list[SimVessel] = []
        self._tracks: list[Track] = []
        self._rngs: list[random.Random] = []
        self._channels: list[str] = []
        self._events: list[tuple[float, int, int]] = []  # (due, vessel index, kind) min-heap
        self._index: dict[int, int] = {}
        self._seq = 0
        rng = random.Random(seed)
        for i in range(n_vessels):
            klass: Literal["A", "B"] = "B" if rng.random() < 0.3 else "A"
            mids = _MIDS_B if klass == "B" else _MIDS_A
            mid = rng.choice(list(mids))
            mmsi = mid * 1_000_000 + rng.randrange(1_000_000)
            while mmsi in self._index:
                mmsi = mid * 1_000_000 + rng.randrange(1_000_000)
            vessel = _make_vessel(rng, mmsi, klass, mids[mid], start_time)
            # Each vessel draws from its own generator: its track never depends on the others.
            own = random.Random(f"aisfusion-sim:{seed}:{i}")
            # Separate from the track's, so slicing time differently cannot reorder draws.
            self._rngs.append(random.Random(f"aisfusion-sim:{seed}:{i}:tx"))
            dlat, dlon = (lat_max - lat_min) * 0.05, (lon_max - lon_min) * 0.05
            lat = own.uniform(lat_min + dlat, lat_max - dlat)
            lon = own.uniform(lon_min + dlon, lon_max - dlon)
            rot_max = own.uniform(0.5, 1.0) if klass == "B" else own.uniform(0.2, 0.4)
            track = Track(
                own, bbox, start_time, lat, lon, own.uniform(0, math.tau), vessel.speed_kn, rot_max
            )
            self.vessels.append(vessel)
            self._tracks.append(track)
            self._channels.append("A")
            self._index[mmsi] = i
            self._events.append((start_time + own.uniform(0, self._interval(i)), i, 0))
            self._events.append((start_time + own.uniform(0, 10.0), i, 1))
        heapq.heapify(self._events)

    @property
    def next_due(self) -> float:
        """Simulated time of the next scheduled report (inf for an empty fleet)."""
        return self._events[0][0] if self._events else math.inf

    def vessel(self, mmsi: int) -> SimVessel:
        return self.vessels[self._index[mmsi]]

    def truth(self, mmsi: int) -> tuple[float, float]:
        """The vessel's true (lat, lon) at the fleet's current simulated time."""
        lat, lon, _ = self._tracks[self._index[mmsi]].state_at(self.now)
        return lat, lon

    def _interval(self, i: int) -> float:
        # ITU-R M.1371 reporting intervals (Class B "CS" for type 18).
        speed, track = self.vessels[i].speed_kn, self._tracks[i]
        if self.vessels[i].klass == "B":
            return 30.0 if speed > 2.0 else 180.0
        turning = abs(track.rot) > _TURNING_RAD_S
        if speed <= 0.0:
            return 180.0
        if speed <= 14.0:
            return 10.0 / 3.0 if turning else 10.0
        return 2.0 if turning or speed > 23.0 else 6.0

    def step(self, dt: float) -> list[SimReport]:
        """Advance simulated time by ``dt`` seconds; return the reports due, in time order."""
        if dt < 0 or not math.isfinite(dt):
            raise ValueError(f"dt must be finite and >= 0, got {dt!r}")
        end = self.now + dt
        reports: list[SimReport] = []
        events = self._events
        while events and events[0][0] <= end:
            t, i, kind = heapq.heappop(events)
            if kind == 0:
                reports.append(self._position(t, i))
                heapq.heappush(events, (t + self._interval(i), i, 0))
            else:
                reports.extend(self._static(t, i))
                heapq.heappush(events, (t + STATIC_INTERVAL_S, i, 1))
        self.now = end
        return reports

    def _channel(self, i: int) -> str:
        # Stations alternate AIS 1 and AIS 2 between transmissions.
        channel = self._channels[i]
        self._channels[i] = "B" if channel == "A" else "A"
        return channel

    def _position(self, t: float, i: int) -> SimReport:
        vessel, track = self.vessels[i], self._tracks[i]
        lat, lon, cog = track.state_at(t)
        course = round(math.degrees(cog) * 10) % 3600 / 10
        heading = round(math.degrees(cog)) % 360
        fields: Fields = {
            "type": 18,
            "mmsi": vessel.mmsi,
            "speed": vessel.speed_kn,
            "accuracy": False,
            "lon": lon,
            "lat": lat,
            "course": course,
            "heading": heading,
            "second": int(t) % 60,
            "raim": False,
            "radio": 0,
        }
        if vessel.klass == "B":
            fields.update(cs=True, display=False, dsc=True, band=True, msg22=True, assigned=False)
        else:
            draw = self._rngs[i].random()
            # Mostly scheduled reports; some answers to interrogation (3), rarely assigned (2).
            fields["type"] = 3 if draw < 0.08 else 2 if draw < 0.1 else 1
            turn = round(math.degrees(track.rot) * 60.0, 1)
            fields.update(status=vessel.status, turn=turn, maneuver=0)
        channel = self._channel(i)
        return SimReport(
            t=t,
            mmsi=vessel.mmsi,
            msg_type=int(fields["type"]),
            lat=lat,
            lon=lon,
            sentences=encode(fields, channel=channel),
            channel=channel,
            fields=fields,
        )

    def _static(self, t: float, i: int) -> list[SimReport]:
        v = self.vessels[i]
        dims: Fields = {
            "to_bow": v.to_bow,
            "to_stern": v.to_stern,
            "to_port": v.to_port,
            "to_starboard": v.to_starboard,
        }
        if v.klass == "A":
            eta = time.gmtime(v.eta)
            parts: list[Fields] = [
                {
                    "type": 5,
                    "mmsi": v.mmsi,
                    "ais_version": 0,
                    "imo": v.imo,
                    "callsign": v.callsign,
                    "shipname": v.name,
                    "ship_type": v.ship_type,
                    **dims,
                    "epfd": 1,
                    "month": eta.tm_mon,
                    "day": eta.tm_mday,
                    "hour": eta.tm_hour,
                    "minute": eta.tm_min,
                    "draught": v.draught,
                    "destination": v.destination,
                    "dte": False,
                }
            ]
        else:
            parts = [
                {"type": 24, "mmsi": v.mmsi, "partno": 0, "shipname": v.name},
                {
                    "type": 24,
                    "mmsi": v.mmsi,
                    "partno": 1,
                    "ship_type": v.ship_type,
                    "vendorid": "SIM",
                    "model": 1,
                    "serial": v.mmsi % 1_000_000,
                    "callsign": v.callsign,
                    **dims,
                },
            ]
        reports = []
        for fields in parts:
            channel = self._channel(i)
            sentences = encode(fields, channel=channel, seq_id=self._seq)
            if len(sentences) > 1:
                self._seq = (self._seq + 1) % 10
            reports.append(
                SimReport(
                    t=t,
                    mmsi=v.mmsi,
                    msg_type=int(fields["type"]),
                    lat=None,
                    lon=None,
                    sentences=sentences,
                    channel=channel,
                    fields=fields,
                )
            )
        return reports


def generate_lines(
    fleet: Fleet,
    *,
    duration_s: float,
    step_s: float = 1.0,
    station: str | None = None,
    tag_time: bool = True,
) -> Iterator[str]:
    """Every sentence the fleet transmits over ``duration_s``, tag-blocked as asked."""
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0, got {step_s!r}")
    steps = math.ceil(duration_s / step_s)
    done = 0.0
    for k in range(1, steps + 1):
        # Targets are computed from k, not accumulated, so long runs do not drift.
        target = min(k * step_s, duration_s)
        for report in fleet.step(target - done):
            t = report.t if tag_time else None
            for sentence in report.sentences:
                yield tag_block(sentence, station=station, t=t)
        done = target
