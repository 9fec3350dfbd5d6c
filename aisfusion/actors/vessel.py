"""One vessel's entity: its dedup window, last decision and static data.

A vessel is a virtual actor: a plain object owned by exactly one shard thread, so every decision
about it is atomic without locks. For each raw message of its MMSI, in order: drop duplicates of
the same transmission (before paying for the decode), decode with pyais, validate time and
values, then decide. The decision here is the newest valid position; a late but valid position
goes to history only and never moves the live position backwards.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from enum import IntEnum
from time import perf_counter
from typing import Any

from pyais.bit_vector import bit_vector
from pyais.messages import MSG_CLASS

from aisfusion.messages import Position, RawMessage, StaticReport

POSITION_TYPES = frozenset({1, 2, 3, 9, 18, 19, 27})
STATIC_TYPES = frozenset({5, 19, 24})
# Arrival times of lines read in one socket chunk are equal; history is keyed by (mmsi, ts), so
# without a tag-block time two reports of one vessel in one chunk are spread by a microsecond.
_US = 1_000_000
# AIS "not available" sentinels: absent values, not measurements. SAR aircraft (type 9) report
# speed in whole knots and long-range reports (type 27) use coarser fields.
_SOG_NA = {9: 1023.0, 27: 63.0}
_COG_NA = {27: 511.0}
_SOG_NA_DEFAULT = 102.3
_COG_NA_DEFAULT = 360.0
_HEADING_NA = 511


class Outcome(IntEnum):
    LIVE = 0  # new newest position: live state and history
    HISTORY = 1  # valid but not newer than the live position: history only
    STATIC = 2  # static/voyage data updated
    REJECTED = 3


def _plain(value: Any) -> Any:
    """pyais enums to plain ints, bytes-free strings."""
    if isinstance(value, IntEnum):
        return int(value)
    if isinstance(value, str):
        return value.strip("@ ").strip() or None
    return value


class Vessel:
    """State of one MMSI, touched only by its shard's thread."""

    __slots__ = ("first_seen", "last", "last_seen", "mmsi", "recent", "static")

    def __init__(self, mmsi: int, window_size: int) -> None:
        self.mmsi = mmsi
        self.recent: deque[tuple[bytes, float]] = deque(maxlen=window_size)
        self.last: Position | None = None
        self.static: StaticReport | None = None
        self.first_seen = math.inf
        self.last_seen = -math.inf

    def ingest(
        self,
        msg: RawMessage,
        *,
        now: float,
        dedup_window_s: float,
        max_future_skew_s: float,
        max_lateness_s: float,
        rejects: Counter[str],
        stages: list[float] | None = None,
    ) -> tuple[Outcome, Position | StaticReport | None]:
        """Dedup, decode, validate and decide one message.

        `stages`, when given, accumulates seconds spent in [dedup, decode, decide].
        """
        started = perf_counter()
        ts = msg.received_at
        if not math.isfinite(ts):
            rejects["bad_time"] += 1
            return Outcome.REJECTED, None
        if ts > now + max_future_skew_s:
            rejects["future_time"] += 1
            return Outcome.REJECTED, None
        if ts < now - max_lateness_s:
            rejects["too_late"] += 1
            return Outcome.REJECTED, None
        for payload, seen_at in self.recent:
            if payload == msg.payload and abs(ts - seen_at) <= dedup_window_s:
                rejects["duplicate"] += 1
                return Outcome.REJECTED, None
        self.recent.append((msg.payload, ts))
        deduped = perf_counter()
        try:
            decoded = MSG_CLASS[msg.msg_type].from_vector(bit_vector(msg.payload, msg.fill_bits))
            fields = decoded.asdict()
        except Exception:  # any pyais failure is one counted bad message, never raised
            rejects["decode_error"] += 1
            return Outcome.REJECTED, None
        finally:
            if stages is not None:
                decoded_at = perf_counter()
                stages[0] += deduped - started
                stages[1] += decoded_at - deduped
        try:
            return self._decide(msg, fields, ts, rejects)
        finally:
            if stages is not None:
                stages[2] += perf_counter() - decoded_at

    def _decide(
        self, msg: RawMessage, fields: dict[str, Any], ts: float, rejects: Counter[str]
    ) -> tuple[Outcome, Position | StaticReport | None]:
        if fields.get("mmsi") != self.mmsi:
            # pyais decodes truncated payloads leniently into empty fields.
            rejects["decode_error"] += 1
            return Outcome.REJECTED, None
        self.first_seen = min(self.first_seen, ts)
        self.last_seen = max(self.last_seen, ts)
        if msg.msg_type in POSITION_TYPES:
            return self._position(msg, fields, ts, rejects)
        if msg.msg_type in STATIC_TYPES:
            return self._static(msg.msg_type, fields, ts, rejects)
        rejects["not_vessel_data"] += 1
        return Outcome.REJECTED, None

    def _position(
        self, msg: RawMessage, f: dict[str, Any], ts: float, rejects: Counter[str]
    ) -> tuple[Outcome, Position | StaticReport | None]:
        lat, lon = f.get("lat"), f.get("lon")
        if lat is None or lon is None:
            rejects["decode_error"] += 1
            return Outcome.REJECTED, None
        if lat == 91.0 or lon == 181.0:
            rejects["no_position"] += 1
            return Outcome.REJECTED, None
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            rejects["bad_position"] += 1
            return Outcome.REJECTED, None
        sog, cog, heading = f.get("speed"), f.get("course"), f.get("heading")
        sog_na = _SOG_NA.get(msg.msg_type, _SOG_NA_DEFAULT)
        cog_na = _COG_NA.get(msg.msg_type, _COG_NA_DEFAULT)
        last = self.last
        # History keeps microseconds: decide on that grid so distinct rows stay distinct.
        ts = round(ts * _US) / _US
        if last is not None and ts <= last.ts and not msg.has_tag_time:
            ts = (round(last.ts * _US) + 1) / _US
        position = Position(
            mmsi=self.mmsi,
            ts=ts,
            lat=lat,
            lon=lon,
            sog=None if sog is None or sog >= sog_na else float(sog),
            cog=None if cog is None or cog >= cog_na else float(cog),
            heading=None if heading is None or heading == _HEADING_NA else int(heading),
            nav_status=_plain(f["status"]) if "status" in f else None,
            msg_type=msg.msg_type,
            source=msg.source,
            station=msg.station,
            arrival=msg.arrival,
        )
        if last is not None and ts <= last.ts:
            return Outcome.HISTORY, position
        self.last = position
        return Outcome.LIVE, position

    def _static(
        self, msg_type: int, f: dict[str, Any], ts: float, rejects: Counter[str]
    ) -> tuple[Outcome, Position | StaticReport | None]:
        old = self.static or StaticReport(mmsi=self.mmsi, ts=ts)
        update: dict[str, Any] = {"ts": max(ts, old.ts)}
        if "shipname" in f:
            update["name"] = _plain(f["shipname"])
        if "callsign" in f:
            update["callsign"] = _plain(f["callsign"])
        if f.get("imo"):
            update["imo"] = int(f["imo"])
        if "ship_type" in f:
            update["ship_type"] = _plain(f["ship_type"])
        if msg_type == 5 and "destination" in f:
            update["destination"] = _plain(f["destination"])
        for key in ("to_bow", "to_stern", "to_port", "to_starboard"):
            if f.get(key) is not None:
                update[key] = int(f[key])
        changed = {k: v for k, v in update.items() if v is not None}
        if len(changed) == 1:  # only "ts": a truncated report carried no static field
            rejects["decode_error"] += 1
            return Outcome.REJECTED, None
        self.static = StaticReport(**{**_static_dict(old), **changed})
        return Outcome.STATIC, self.static


def _static_dict(s: StaticReport) -> dict[str, Any]:
    return {f: getattr(s, f) for f in s.__struct_fields__}
