"""AIS sentences out: ``!AIVDM`` lines from pyais field dictionaries, and NMEA 4.10 tag blocks.

What the simulator transmits and the tests and benchmarks feed in. Position reports take a
hand-written path (the bulk of any traffic); everything else goes through pyais.
"""

from __future__ import annotations

import math
from functools import reduce
from operator import xor
from typing import Final

from pyais.encode import encode_dict

FieldValue = int | float | str | bool
Fields = dict[str, FieldValue]

_ARMOR: Final = "".join(chr(v + 48 if v < 40 else v + 56) for v in range(64))


def _checksum(body: str) -> int:
    return reduce(xor, body.encode("ascii"), 0)


def _pack_position(fields: Fields) -> int:
    """Bits of a type 1/2/3 or 18 message, converting values exactly as pyais does."""
    msg_type = int(fields["type"])
    lon = round(float(fields["lon"]) * 600000.0) & 0xFFFFFFF
    lat = round(float(fields["lat"]) * 600000.0) & 0x7FFFFFF
    speed = int(float(fields["speed"]) * 10.0) & 0x3FF
    course = int(float(fields["course"]) * 10.0) & 0xFFF
    v = (msg_type << 2 | int(fields.get("repeat", 0))) << 30 | int(fields["mmsi"])
    if msg_type == 18:
        v = (v << 8) << 10 | speed  # 8 reserved bits, then speed
        v = ((v << 1 | bool(fields["accuracy"])) << 28 | lon) << 27 | lat
        v = ((v << 12 | course) << 9 | int(fields["heading"])) << 6 | int(fields["second"])
        v <<= 2  # reserved
        for flag in ("cs", "display", "dsc", "band", "msg22", "assigned", "raim"):
            v = v << 1 | bool(fields[flag])
        return v << 20 | int(fields["radio"])
    turn = float(fields["turn"])
    rot = int(math.copysign(round(4.733 * math.sqrt(abs(turn))), turn)) if turn else 0
    v = (v << 4 | int(fields["status"])) << 8 | (rot & 0xFF)
    v = ((v << 10 | speed) << 1 | bool(fields["accuracy"])) << 28 | lon
    v = ((v << 27 | lat) << 12 | course) << 9 | int(fields["heading"])
    v = ((v << 6 | int(fields["second"])) << 2 | int(fields["maneuver"])) << 3
    return (v << 1 | bool(fields["raim"])) << 19 | int(fields["radio"])


def encode(fields: Fields, *, channel: str = "A", seq_id: int | None = None) -> list[str]:
    """Encode a message's fields (pyais names) as ``!AIVDM`` sentences.

    Position reports (types 1, 2, 3 and 18) take a hand-written path, several times faster than
    pyais's generic encoder and cross-checked against it in the tests; they need every field the
    simulator sets. Everything else goes through pyais.
    """
    if fields.get("type") in (1, 2, 3, 18):
        bits = _pack_position(fields)
        payload = "".join([_ARMOR[(bits >> shift) & 63] for shift in range(162, -1, -6)])
        body = f"AIVDM,1,1,,{channel},{payload},0"
        return [f"!{body}*{_checksum(body):02X}"]
    # pyais takes the type from "type" but fills the payload's own type field from "msg_type",
    # whose default is 1 for types 2 and 3 (pyais 3.3); give both.
    data: dict[str, str | int | float | bytes | bool] = {**fields, "msg_type": fields["type"]}
    sentences: list[str] = encode_dict(
        data, talker_id="AI", sentence_type="VDM", radio_channel=channel, seq_id=seq_id
    )
    return sentences


def tag_block(sentence: str, *, station: str | None, t: float | None) -> str:
    """Prefix an NMEA 4.10 tag block ``\\s:station,c:unix_seconds*hh\\``; no-op if both are None."""
    parts = []
    if station is not None:
        if not station or any(ch in station for ch in ",*\\!$\r\n"):
            raise ValueError(f"station {station!r} cannot be carried in a tag block")
        parts.append(f"s:{station}")
    if t is not None:
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"tag-block time must be a finite UNIX time, got {t!r}")
        parts.append(f"c:{math.floor(t)}")
    if not parts:
        return sentence
    body = ",".join(parts)
    return f"\\{body}*{_checksum(body):02X}\\{sentence}"
