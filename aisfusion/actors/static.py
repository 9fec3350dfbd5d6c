"""Static and voyage data fusion (types 5, 24, and 19's static part), apart from positions.

Identity fields (name, call sign, IMO, ship type) change only when confirmed: a new value is
held as a vote and accepted when the next report of that field says the same; a report of the
current value in between cancels the vote. Voyage data (destination) and dimensions are taken
as reported. A pure function of the vessel's current data and the decoded fields.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from aisfusion.messages import StaticReport

IDENTITY = ("name", "callsign", "imo", "ship_type")
_DIMENSIONS = ("to_bow", "to_stern", "to_port", "to_starboard")


def plain(value: Any) -> Any:
    """pyais enums (int-valued, not always `IntEnum`) to plain ints; strings without AIS
    padding ("@", spaces), or None."""
    if isinstance(value, Enum):
        return int(value) if isinstance(value, int) else value.value
    if isinstance(value, str):
        return value.strip("@ ").strip() or None
    return value


def _reported(msg_type: int, f: dict[str, Any]) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if "shipname" in f:
        update["name"] = plain(f["shipname"])
    if "callsign" in f:
        update["callsign"] = plain(f["callsign"])
    if f.get("imo"):
        update["imo"] = int(f["imo"])
    if "ship_type" in f:
        update["ship_type"] = plain(f["ship_type"]) or None  # 0: not available
    if msg_type == 5 and "destination" in f:
        update["destination"] = plain(f["destination"])
    for key in _DIMENSIONS:
        if f.get(key) is not None:
            update[key] = int(f[key])
    return {k: v for k, v in update.items() if v is not None}


def fuse_static(
    mmsi: int,
    current: StaticReport | None,
    votes: dict[str, Any] | None,
    msg_type: int,
    fields: dict[str, Any],
    ts: float,
) -> tuple[StaticReport | None, dict[str, Any] | None]:
    """The vessel's static data after one decoded report, and the identity changes still
    waiting for confirmation. None for the data when the report carried no static field."""
    update = _reported(msg_type, fields)
    if not update:
        return None, votes
    merged: dict[str, Any] = (
        {} if current is None else {k: getattr(current, k) for k in current.__struct_fields__}
    )
    for name in IDENTITY:
        value = update.get(name)
        if value is None or merged.get(name) in (None, value):
            if votes:
                votes.pop(name, None)
            continue
        if votes is not None and votes.get(name) == value:
            del votes[name]  # confirmed: the second report in a row says the same
            continue
        if votes is None:
            votes = {}
        votes[name] = value
        del update[name]
    merged.update(update)
    merged["mmsi"] = mmsi
    merged["ts"] = max(ts, merged.get("ts", ts))
    return StaticReport(**merged), votes
