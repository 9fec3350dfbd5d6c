"""Cheap routing fields from an armored AIS payload: message type and MMSI, no full decode.

The payload is ITU-R M.1371 bits armored six at a time into ASCII: a character ``c`` carries
``c - 48``, minus another 8 when that exceeds 40, so ``0``..``W`` and `````..``w`` are the only
valid characters. The type is bits 0..5 and the MMSI bits 8..37, so seven characters (42 bits)
are enough. Doing this by hand costs about a microsecond against ~30 µs for a pyais decode,
which is what lets the router shard raw sentences before anything is decoded.
"""

from __future__ import annotations

from base64 import b64decode
from typing import Any, Final

from aisfusion.feeds.nmea import Reject

#: Bits that carry the type, repeat indicator and MMSI: shorter payloads cannot be routed.
MIN_BITS: Final = 38

_VALID: Final = bytes(range(48, 88)) + bytes(range(96, 120))
# Maps every valid armoring character to its six-bit value. Invalid characters never reach
# the table: `invalid_chars` rejects them first.
_DEARMOR: Final = bytes(
    (c - 48 if c < 88 else c - 56) if (48 <= c < 88 or 96 <= c < 120) else 0 for c in range(256)
)


def invalid_chars(payload: bytes) -> bytes:
    """The characters of `payload` that are not valid six-bit armoring (empty when clean)."""
    return payload.translate(None, _VALID)


def routing_fields(payload: bytes) -> tuple[int, int]:
    """Return ``(msg_type, mmsi)`` from the first 38 bits of a valid armored payload.

    The caller has already checked the armoring (`invalid_chars`) and the length (`MIN_BITS`):
    this sits on the per-message hot path, so it does not check twice.
    """
    v = payload[:7].translate(_DEARMOR)
    mmsi = (
        ((v[1] & 0x0F) << 26)
        | (v[2] << 20)
        | (v[3] << 14)
        | (v[4] << 8)
        | (v[5] << 2)
        | (v[6] >> 4)
    )
    return v[0], mmsi


def extract(payload: bytes, fill_bits: int) -> tuple[int, int] | Reject:
    """Checked variant of `routing_fields`: ``(msg_type, mmsi)`` or why not.

    `Reject.BAD_PAYLOAD` for a character outside the armoring alphabet, and
    `Reject.SHORT_PAYLOAD` for fewer than 38 bits once the fill bits are dropped.
    """
    if payload.translate(None, _VALID):
        return Reject.BAD_PAYLOAD
    if len(payload) * 6 - fill_bits < MIN_BITS:
        return Reject.SHORT_PAYLOAD
    return routing_fields(payload)


# The armoring characters re-mapped onto the base64 alphabet, so that `b64decode` does the
# six-to-eight bit repacking in C (the trick pyais's own bit vector uses).
_B64: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ARMOR_TO_B64: Final = bytes(_B64[v] for v in _DEARMOR)
_POSITION_BITS: Final = 168


def _degrees(raw: int) -> float:
    """1/10000 minute units to degrees, rounded to 6 decimals exactly as pyais does
    (``round(raw / 600000, 6)`` computed in integers: 5·raw/3 is never halfway)."""
    return ((10 * raw + 3) // 6) / 1e6


def position_fields(payload: bytes, fill_bits: int, msg_type: int) -> dict[str, Any] | None:
    """The fields the vessel uses from a full-length position report of type 1, 2, 3 or 18,
    decoded by hand; None for anything else (the caller falls back to pyais).

    Values equal pyais 3's (`MSG_CLASS[t].from_vector(...).asdict()`) for these keys, except
    ``status``, a plain int where pyais gives its `NavigationStatus` enum of the same value.
    `tests/feeds/test_payload.py` checks this field by field on every recorded file. About a
    quarter of the cost of pyais's own fast path plus `asdict` (1.2 µs against 4.9 µs).
    """
    if len(payload) != 28 or fill_bits != 0:  # 168 bits: the only length decoded here
        return None
    v = int.from_bytes(b64decode(payload.translate(_ARMOR_TO_B64)), "big")
    if msg_type in (1, 2, 3):
        lon = (v >> 79) & 0xFFFFFFF
        lat = (v >> 52) & 0x7FFFFFF
        fields = {
            "status": (v >> 126) & 15,
            "speed": ((v >> 108) & 1023) / 10.0,
            "course": ((v >> 40) & 4095) / 10.0,
            "heading": (v >> 31) & 511,
            "second": (v >> 25) & 63,
        }
    elif msg_type == 18:
        lon = (v >> 83) & 0xFFFFFFF
        lat = (v >> 56) & 0x7FFFFFF
        fields = {
            "speed": ((v >> 112) & 1023) / 10.0,
            "course": ((v >> 44) & 4095) / 10.0,
            "heading": (v >> 35) & 511,
            "second": (v >> 29) & 63,
        }
    else:
        return None
    if lon & 0x8000000:
        lon -= 0x10000000
    if lat & 0x4000000:
        lat -= 0x8000000
    fields["mmsi"] = (v >> 130) & 0x3FFFFFFF
    fields["lon"] = _degrees(lon)
    fields["lat"] = _degrees(lat)
    return fields
