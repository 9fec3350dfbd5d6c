"""The AIS side of a CSV row (`csv_rows`): its values as AIS fields, and the armored payloads.

Owns what AIS itself decides: the fields' units, widths and not-available codes, and the bits.
The conversions take a cell's text and give the value its field can carry, out of range or
not available as AIS says it (`sog_tenths`, `cog_tenths`, `heading_degrees`, `sar_knots`,
`six_bit_text`, `imo_number`, `antenna`, `halves`); which column a cell is and what an export's
own words mean (DMA's status and ship type words, "Type of mobile") stay in `csv_rows`. The
encoders take those values and give the payload of one message: `position` (types 1 and 18),
`base_station` (4), `sar_aircraft` (9), `aid_to_navigation` (21), `static_reports` (5, or 24
parts A and B).

Why types 1 and 18 are packed by hand: they are nearly every row of a file with millions, and
pyais's ``create(...).encode()`` costs some 25 µs a message against under 1 µs for shifting
the fields into one integer and armoring it by way of base64. `position` is the mirror of
`feeds.payload.position_fields` and matches pyais's encoding bit for bit (the tests check it
against pyais). The other types are rare, and pyais encodes them.
"""

from __future__ import annotations

import math
from base64 import b64encode
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

from pyais.messages import MSG_CLASS
from pyais.util import SIX_BIT_ENCODING

SOG_NA: Final = 1023  # tenths of a knot
COG_NA: Final = 3600  # tenths of a degree
HEADING_NA: Final = 511
STATUS_NA: Final = 15
_TURN_NA: Final = 0x80  # -128 in 8 bits: no turn information

_NOT_AVAILABLE: Final = frozenset(("", "unknown", "undefined"))
_SIX_BIT: Final = frozenset(SIX_BIT_ENCODING)

# Six-bit armoring by way of base64, which does the bit repacking in C: 168 bits are exactly
# 21 bytes and 28 characters, no padding.
_B64: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_TO_ARMOR: Final = bytes.maketrans(_B64, bytes(v + 48 if v < 40 else v + 56 for v in range(64)))

# A vessel's static data as compared and sent: name, call sign, IMO, ship type, dimensions
# (to bow, stern, port, starboard), destination; None: not known.
Dimensions = tuple[int, int, int, int]
Static = tuple[str | None, str | None, int | None, int | None, Dimensions | None, str | None]
#: An armored payload and its fill bits.
Armored = tuple[bytes, int]


# -- values -----------------------------------------------------------------------------------


def number(s: str) -> float | None:
    """A finite number, or None (empty, "Unknown", NaN, ...)."""
    if not s:
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def sog_tenths(s: str) -> int:
    """Speed over ground in tenths of a knot (102.3 and beyond: not available)."""
    v = number(s)
    if v is None or not 0.0 <= v < 102.25:
        return SOG_NA
    return round(v * 10)


def cog_tenths(s: str) -> int:
    """Course over ground in tenths of a degree (360 and beyond: not available)."""
    v = number(s)
    if v is None or not 0.0 <= v < 360.0:
        return COG_NA
    return round(v * 10) % 3600  # 359.96 is 0.0, not the not-available 360.0


def heading_degrees(s: str) -> int:
    v = number(s)
    if v is None or not 0.0 <= v < 360.0:
        return HEADING_NA
    return round(v) % 360


def sar_knots(s: str) -> int:
    """A SAR aircraft's speed, in whole knots (1022.5 and beyond: not available)."""
    v = number(s)
    return round(v) if v is not None and 0.0 <= v < 1022.5 else SOG_NA


def six_bit_text(s: str, width: int) -> str | None:
    """AIS six-bit text: upper case, other characters as "?", at most `width` characters,
    without the padding "@" and spaces the vessel strips."""
    t = s.strip()
    if t.lower() in _NOT_AVAILABLE:
        return None
    t = "".join(c if c in _SIX_BIT else "?" for c in t.upper())[:width].strip("@ ")
    return t or None


def imo_number(s: str) -> int | None:
    t = s.strip().upper().removeprefix("IMO")
    try:
        v = int(t)
    except ValueError:
        return None
    return v if 0 < v < 1 << 30 else None


def _metres(s: str, limit: int) -> int:
    v = number(s)
    return 0 if v is None or v <= 0 else min(round(v), limit)


def antenna(bow: str, stern: str, port: str, starboard: str) -> Dimensions | None:
    """DMA's A, B, C, D: the antenna's distances to bow, stern, port, starboard (the AIS
    fields' widths cap them at 511 and 63 m)."""
    dims = (_metres(bow, 511), _metres(stern, 511), _metres(port, 63), _metres(starboard, 63))
    return dims if any(dims) else None


def halves(length: str, width: str) -> Dimensions | None:
    """Length and width as an antenna amidships: an approximation, for files that do not say
    where the antenna is (MarineCadastre, old DMA files)."""
    along, across = _metres(length, 1022), _metres(width, 126)
    if not (along or across):
        return None
    return (along - along // 2, along // 2, across // 2, across - across // 2)


# -- payloads ---------------------------------------------------------------------------------


def position(
    msg_type: int,
    mmsi: int,
    status: int,
    sog: int,
    lon: float,
    lat: float,
    cog: int,
    heading: int,
    second: int,
) -> bytes:
    """The armored payload of a type 1 or type 18 position report (168 bits, no fill bits).

    Bit for bit what pyais encodes for these fields (rounding the position as it does), with
    everything else zero: repeat 0, no turn information (type 1), maneuver not available, no
    RAIM, no radio status, class B flags clear.
    """
    x = round(lon * 600000.0) & 0xFFFFFFF
    y = round(lat * 600000.0) & 0x7FFFFFF
    if msg_type == 1:
        bits = (
            (1 << 162)
            | (mmsi << 130)
            | (status << 126)
            | (_TURN_NA << 118)
            | (sog << 108)
            | (x << 79)
            | (y << 52)
            | (cog << 40)
            | (heading << 31)
            | (second << 25)
        )
    else:
        bits = (
            (18 << 162)
            | (mmsi << 130)
            | (sog << 112)
            | (x << 83)
            | (y << 56)
            | (cog << 44)
            | (heading << 35)
            | (second << 29)
        )
    return b64encode(bits.to_bytes(21, "big")).translate(_B64_TO_ARMOR)


def base_station(mmsi: int, lon: float, lat: float, ts: float, second: int) -> Armored:
    """A type 4 base station report at `ts` (UNIX seconds; its UTC second is `second`)."""
    t = datetime.fromtimestamp(ts, UTC)
    return _encode(
        MSG_CLASS[4].create(
            second=second,
            mmsi=mmsi,
            lon=lon,
            lat=lat,
            year=t.year,
            month=t.month,
            day=t.day,
            hour=t.hour,
            minute=t.minute,
        )
    )


def sar_aircraft(mmsi: int, lon: float, lat: float, knots: int, cog: int, second: int) -> Armored:
    """A type 9 SAR aircraft report: speed in whole knots, course in tenths of a degree,
    altitude not available."""
    return _encode(
        MSG_CLASS[9].create(
            second=second, mmsi=mmsi, lon=lon, lat=lat, speed=knots, course=cog / 10, alt=4095
        )
    )


def aid_to_navigation(
    mmsi: int, lon: float, lat: float, name: str | None, dims: Dimensions | None, second: int
) -> Armored:
    """A type 21 aid to navigation report: its name and dimensions."""
    bow, stern, port, starboard = dims or (0, 0, 0, 0)
    return _encode(
        MSG_CLASS[21].create(
            second=second,
            mmsi=mmsi,
            lon=lon,
            lat=lat,
            name=name or "",
            to_bow=bow,
            to_stern=stern,
            to_port=port,
            to_starboard=starboard,
        )
    )


def static_reports(mmsi: int, msg_type: int, values: Static) -> Iterator[Armored]:
    """A vessel's static data: a type 5 for class A (`msg_type` 1), else type 24 parts A and B,
    each only when it says something (the vessel would take part B's zero dimensions as
    reported)."""
    name, callsign, imo, ship_type, dims, destination = values
    bow, stern, port, starboard = dims or (0, 0, 0, 0)
    shape = {"to_bow": bow, "to_stern": stern, "to_port": port, "to_starboard": starboard}
    reports: list[Any] = []
    if msg_type == 1:
        reports.append(
            MSG_CLASS[5].create(
                mmsi=mmsi,
                imo=imo or 0,
                callsign=callsign or "",
                shipname=name or "",
                ship_type=ship_type or 0,
                destination=destination or "",
                **shape,
                # ETA not available
                month=0,
                day=0,
                hour=24,
                minute=60,
            )
        )
    else:
        if name is not None:
            reports.append(MSG_CLASS[24].create(mmsi=mmsi, partno=0, shipname=name))
        if callsign is not None or ship_type is not None or dims is not None:
            reports.append(
                MSG_CLASS[24].create(
                    mmsi=mmsi,
                    partno=1,
                    callsign=callsign or "",
                    ship_type=ship_type or 0,
                    **shape,
                    # An auxiliary craft's (98xxxxxxx) part B names its mother ship where
                    # others give dimensions: not in a CSV, so not available (0). Ignored
                    # for other vessels.
                    mothership_mmsi=0,
                )
            )
    for report in reports:
        yield _encode(report)


def _encode(report: Any) -> Armored:
    armored, fill = report.encode()
    return armored.encode("ascii"), fill
