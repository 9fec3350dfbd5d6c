"""CSV exports of decoded AIS (MarineCadastre, DMA) back into the messages they were decoded from.

The rows are re-armored into `RawMessage`s, so the importer feeds them through the same vessel
path as NMEA: dedup, the clock check, the gate, fusion. One row becomes:

* a position report. Class A (MarineCadastre ``TransceiverClass`` "A" or no such column, DMA
  "Class A") is a type 1, class B a type 18. DMA's "Base Station", "AtoN" and "SAR airborne"
  rows are types 4, 21 and 9 (the vessels count 4 and 21 as not vessel data, as from a feed);
  any other "Type of mobile" is rejected as ``csv_not_vessel``.
* before it, a vessel's static data (type 5 for class A, type 24 parts A and B for class B)
  when the row's name, call sign, IMO, ship type, dimensions or destination differ from what
  this reader last sent for the MMSI, and once more `_REPEAT_S` later: the vessel takes a new
  identity only when two reports agree (`actors/static.py`), as AIS repeats its static data.

The row's UTC time is the receive time (as a tag block's) and its second the report's own UTC
second field, so the vessel's clock check finds nothing to correct. Values the exports mark as
not available (empty, "Unknown", "Undefined", 102.3 knots, 360°, heading 511) or that are out
of range become the AIS not-available codes. A row that yields nothing is counted once under
a reason and skipped, never raised: ``csv_columns`` (not the header's column count, or bad
quoting), ``csv_bad_mmsi``, ``csv_bad_time``, ``csv_bad_position`` (including the 91/181 "no
position": a position report without one is nothing to import), ``csv_not_vessel``.

The AIS side, the fields' units and not-available codes and the payloads, is `armor`'s; this
module owns the exports' side: their layouts, their words, their rows and what is sent when.

Speed: a daily MarineCadastre file has millions of rows. Lines are decoded in bulk and split
on commas unless quoted, and types 1 and 18 (nearly every row) are packed by hand
(`armor.position`).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from datetime import UTC, datetime
from operator import itemgetter
from typing import Final, NamedTuple

from aisfusion.archive.armor import (
    STATUS_NA,
    Static,
    aid_to_navigation,
    antenna,
    base_station,
    cog_tenths,
    halves,
    heading_degrees,
    imo_number,
    number,
    position,
    sar_aircraft,
    sar_knots,
    six_bit_text,
    sog_tenths,
    static_reports,
)
from aisfusion.feeds.payload import routing_fields
from aisfusion.messages import RawMessage

#: What `CsvLayout.columns` gives the index of, in this order.
FIELDS: Final = (
    "mmsi",
    "time",
    "lat",
    "lon",
    "sog",
    "cog",
    "heading",
    "status",
    "kind",
    "name",
    "callsign",
    "imo",
    "ship_type",
    "length",
    "width",
    "to_bow",
    "to_stern",
    "to_port",
    "to_starboard",
    "destination",
)
_POSITION_FIELDS: Final = FIELDS[:9]
_STATIC_FIELDS: Final = FIELDS[9:]
_REQUIRED: Final = frozenset(("mmsi", "time", "lat", "lon"))

# Header names, lower-cased without spaces or underscores, to fields. MarineCadastre's 2025
# files (``base_date_time``, ``latitude``, ``transceiver``, as third-party fixtures show them)
# fold onto the older names. Draught, cargo and ETA are not read: `StaticReport` has no place
# for them.
_MARINECADASTRE: Final = {
    "mmsi": "mmsi",
    "basedatetime": "time",
    "lat": "lat",
    "latitude": "lat",
    "lon": "lon",
    "longitude": "lon",
    "sog": "sog",
    "cog": "cog",
    "heading": "heading",
    "status": "status",
    "transceiverclass": "kind",
    "transceiver": "kind",
    "vesselname": "name",
    "callsign": "callsign",
    "imo": "imo",
    "vesseltype": "ship_type",
    "length": "length",
    "width": "width",
}
_DMA: Final = {
    "timestamp": "time",
    "typeofmobile": "kind",
    "mmsi": "mmsi",
    "latitude": "lat",
    "longitude": "lon",
    "navigationalstatus": "status",
    "sog": "sog",
    "cog": "cog",
    "heading": "heading",
    "imo": "imo",
    "callsign": "callsign",
    "name": "name",
    "shiptype": "ship_type",
    "width": "width",
    "length": "length",
    "destination": "destination",
    # The antenna's distances. DMA's own column notes have C to starboard and D to port; the
    # values are copied from the AIS A/B/C/D fields, where C is to port, and read as such.
    "a": "to_bow",
    "b": "to_stern",
    "c": "to_port",
    "d": "to_starboard",
}

# "Type of mobile" / TransceiverClass, lower-cased, to the message type it was decoded from
# ("": MarineCadastre files before 2018 have no such column, and their rows are class A).
_KINDS: Final = {
    "": 1,
    "a": 1,
    "class a": 1,
    "b": 18,
    "class b": 18,
    "base station": 4,
    "aton": 21,
    "sar airborne": 9,
}
# Navigational status as DMA words it, by a phrase each standard text contains (MarineCadastre
# gives the code). Anything else ("Unknown value") is 15, not defined.
_STATUS_PHRASES: Final = (
    ("engine", 0),
    ("anchor", 1),
    ("not under command", 2),
    ("restricted", 3),
    ("constrained", 4),
    ("moored", 5),
    ("aground", 6),
    ("fishing", 7),
    ("sailing", 8),
    ("hsc", 9),
    ("wig", 10),
    ("towing astern", 11),
    ("pushing ahead", 12),
    ("sart", 14),
    ("reserved for future use", 13),
)
# DMA's ship type words to AIS codes (the first of each range); unknown words: not available.
_SHIP_TYPES: Final = {
    "wig": 20,
    "fishing": 30,
    "towing": 31,
    "towing long/wide": 32,
    "dredging": 33,
    "diving": 34,
    "military": 35,
    "sailing": 36,
    "pleasure": 37,
    "hsc": 40,
    "pilot": 50,
    "sar": 51,
    "tug": 52,
    "port tender": 53,
    "anti-pollution": 54,
    "law enforcement": 55,
    "spare 1": 56,
    "spare 2": 57,
    "medical": 58,
    "not party to conflict": 59,
    "passenger": 60,
    "cargo": 70,
    "tanker": 80,
    "other": 90,
}

# A static report goes out again this long after it changed (AIS's own interval for type 5),
# which also keeps the repeat out of the vessel's dedup window.
_REPEAT_S: Final = 360.0
_STATUS_CACHE_MAX: Final = 1024  # distinct status texts remembered (a file has a few dozen)


class CsvLayout(NamedTuple):
    """A CSV layout we know: its name, its column count, and where each of `FIELDS` is
    (-1: the file has no such column)."""

    name: str  # "marinecadastre" | "dma"
    width: int
    columns: tuple[int, ...]

    def column(self, field: str) -> int:
        return self.columns[FIELDS.index(field)]


def detect(header: bytes) -> CsvLayout | None:
    """The layout a CSV header line names (case/whitespace tolerant, DMA's leading '# '
    allowed); None: not a CSV we know."""
    text = header.decode("utf-8", "replace").removeprefix("\ufeff").strip().removeprefix("#")
    try:
        names = next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration):
        return None
    keys = ["".join(name.split()).replace("_", "").lower() for name in names]
    if "basedatetime" in keys:
        name, aliases = "marinecadastre", _MARINECADASTRE
    elif "timestamp" in keys and "typeofmobile" in keys:
        name, aliases = "dma", _DMA
    else:
        return None
    index: dict[str, int] = {}
    for i, key in enumerate(keys):
        field = aliases.get(key)
        if field is not None:
            index.setdefault(field, i)
    if not index.keys() >= _REQUIRED:
        return None
    return CsvLayout(name, len(names), tuple(index.get(f, -1) for f in FIELDS))


_UNKNOWN: Final[Static] = (None, None, None, None, None, None)


class _Sent:
    """What this reader last sent for one MMSI, and the row it came from."""

    __slots__ = ("msg_type", "raw", "repeat_at", "values")

    def __init__(self, msg_type: int, raw: tuple[str, ...], values: Static) -> None:
        self.msg_type = msg_type
        self.raw = raw
        self.values = values
        self.repeat_at: float | None = None


class CsvReader:
    """Turns one CSV file's bytes into `RawMessage`s, the way `FeedDecoder` frames a feed.

    Lines end in ``\\n`` (a preceding ``\\r`` is dropped); the first line of the stream is the
    header and is skipped. Empty lines are skipped and not counted; every other line counts
    once in `lines` and, when it yields nothing, once in `rejects`. Feeding a file whole or in
    chunks split anywhere gives the same messages and counts.
    """

    def __init__(self, layout: CsvLayout, source: str, rejects: Counter[str]) -> None:
        self.layout = layout
        self.source = source
        self.rejects = rejects
        self.lines = 0
        self.messages = 0
        self._partial = b""
        self._header = True
        self._width = layout.width
        # A column the file lacks has index -1, which reads the empty field each row gets
        # appended (`_row`): "not available", with no test per field.
        self._position_fields = itemgetter(*(layout.column(f) for f in _POSITION_FIELDS))
        self._static_fields = itemgetter(*(layout.column(f) for f in _STATIC_FIELDS))
        self._day_first = layout.name == "dma"
        # Rows come in time order, many to a second: the last time string parsed, and its time.
        self._stamp = ""
        self._stamp_ts: float | None = None
        self._statuses: dict[str, int] = {}
        self._sent: dict[int, _Sent] = {}

    def feed(self, data: bytes) -> list[RawMessage]:
        """A chunk of the file, split anywhere; return the messages of the lines it completed."""
        if self._partial:
            data = self._partial + data
        end = data.rfind(b"\n")
        if end < 0:
            self._partial = data
            return []
        self._partial = data[end + 1 :]
        # Decoded in one go: a newline never falls inside a UTF-8 sequence, so this decodes
        # each line exactly as decoding it alone would.
        return self._lines(data[:end].decode("utf-8", "replace").split("\n"))

    def flush(self) -> list[RawMessage]:
        """End of stream: the last unterminated line."""
        tail, self._partial = self._partial, b""
        return self._lines([tail.decode("utf-8", "replace")]) if tail else []

    def _lines(self, lines: list[str]) -> list[RawMessage]:
        out: list[RawMessage] = []
        if self._header:
            self._header = False
            lines = lines[1:]
        row = self._row
        for line in lines:
            text = line[:-1] if line[-1:] == "\r" else line
            if not text:
                continue
            self.lines += 1
            row(text.split(",") if '"' not in text else _quoted(text), out)
        self.messages += len(out)
        return out

    def _row(self, f: list[str] | None, out: list[RawMessage]) -> None:
        rejects = self.rejects
        if f is None or len(f) != self._width:
            rejects["csv_columns"] += 1
            return
        f.append("")  # what the columns the file lacks read (index -1)
        mmsi_s, stamp, lat_s, lon_s, sog_s, cog_s, heading_s, status_s, kind_s = (
            self._position_fields(f)
        )
        try:
            mmsi = int(mmsi_s)
        except ValueError:
            mmsi = 0
        if not 0 < mmsi < 1_000_000_000:
            rejects["csv_bad_mmsi"] += 1
            return
        if stamp != self._stamp:
            self._stamp, self._stamp_ts = stamp, _time(stamp, day_first=self._day_first)
        ts = self._stamp_ts
        if ts is None:
            rejects["csv_bad_time"] += 1
            return
        try:
            lat, lon = float(lat_s), float(lon_s)
        except ValueError:
            lat = lon = math.nan
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # NaN fails too
            rejects["csv_bad_position"] += 1
            return
        msg_type = _KINDS.get(kind_s.strip().lower())
        if msg_type is None:
            rejects["csv_not_vessel"] += 1
            return
        second = int(ts % 60.0)
        sog, cog = sog_tenths(sog_s), cog_tenths(cog_s)
        if msg_type in {1, 18}:
            self._static(mmsi, msg_type, ts, self._static_fields(f), out)
            status = self._status(status_s) if msg_type == 1 else 0
            payload = position(
                msg_type, mmsi, status, sog, lon, lat, cog, heading_degrees(heading_s), second
            )
            out.append(self._message(payload, 0, ts))
            return
        if msg_type == 4:
            armored, fill = base_station(mmsi, lon, lat, ts, second)
        elif msg_type == 9:
            armored, fill = sar_aircraft(mmsi, lon, lat, sar_knots(sog_s), cog, second)
        else:  # an aid to navigation: its name and dimensions, as in its type 21
            name, _, _, _, dims, _ = _static_values(self._static_fields(f))
            armored, fill = aid_to_navigation(mmsi, lon, lat, name, dims, second)
        out.append(self._message(armored, fill, ts))

    def _message(self, payload: bytes, fill: int, ts: float) -> RawMessage:
        msg_type, mmsi = routing_fields(payload)
        return RawMessage(mmsi, msg_type, payload, fill, self.source, None, ts, ts, True)

    def _status(self, text: str) -> int:
        code = self._statuses.get(text)
        if code is None:
            code = _status_code(text)
            if len(self._statuses) < _STATUS_CACHE_MAX:
                self._statuses[text] = code
        return code

    def _static(
        self, mmsi: int, msg_type: int, ts: float, raw: tuple[str, ...], out: list[RawMessage]
    ) -> None:
        """Send the vessel's static data before its position if it changed, or if its repeat
        is due."""
        sent = self._sent.get(mmsi)
        if sent is None or sent.raw != raw or sent.msg_type != msg_type:
            values = _static_values(raw)
            if msg_type == 18:  # type 24 carries neither IMO nor destination
                values = (*values[:2], None, *values[3:5], None)
            old = _UNKNOWN if sent is None else sent.values
            # A row that leaves a field empty does not take back what an earlier row said.
            merged: Static = tuple(  # type: ignore[assignment]
                o if n is None else n for n, o in zip(values, old, strict=True)
            )
            if sent is None:
                sent = self._sent[mmsi] = _Sent(msg_type, raw, _UNKNOWN)
            changed = merged != sent.values or msg_type != sent.msg_type
            sent.raw, sent.msg_type, sent.values = raw, msg_type, merged
            if changed and merged != _UNKNOWN:
                sent.repeat_at = ts + _REPEAT_S
                self._send_static(mmsi, msg_type, merged, ts, out)
                return
        if sent.repeat_at is not None and ts >= sent.repeat_at:
            sent.repeat_at = None
            self._send_static(mmsi, msg_type, sent.values, ts, out)

    def _send_static(
        self, mmsi: int, msg_type: int, values: Static, ts: float, out: list[RawMessage]
    ) -> None:
        for payload, fill in static_reports(mmsi, msg_type, values):
            out.append(self._message(payload, fill, ts))


def _quoted(line: str) -> list[str] | None:
    """The fields of a line with quotes, by the csv module's rules; None: bad quoting."""
    try:
        return next(csv.reader([line], strict=True))
    except csv.Error:
        return None


def _time(stamp: str, *, day_first: bool) -> float | None:
    """UNIX seconds of a row's UTC time: MarineCadastre ``2023-01-01T00:00:00`` (or a space
    for the T), DMA ``31/12/2023 23:59:59``; None: not a time."""
    s = stamp.strip()
    if day_first:
        if len(s) < 19 or s[2] != "/" or s[5] != "/" or s[10] != " ":
            return None
        s = f"{s[6:10]}-{s[3:5]}-{s[:2]}T{s[11:]}"
    elif len(s) < 19 or s[4] != "-" or s[10] not in "T ":
        return None  # fromisoformat would take a bare date (midnight) as well
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return None
    if not 1970 <= t.year < 9999:  # no AIS before; and a UTC offset stays in datetime's range
        return None
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


def _status_code(text: str) -> int:
    """A navigational status code from MarineCadastre's number or DMA's words."""
    t = text.strip().lower()
    v = number(t)
    if v is not None:
        return int(v) if v.is_integer() and 0 <= v <= STATUS_NA else STATUS_NA
    for phrase, code in _STATUS_PHRASES:
        if phrase in t:
            return code
    return STATUS_NA


def _static_values(raw: tuple[str, ...]) -> Static:
    """A row's static columns (in `_STATIC_FIELDS` order) as sent; None where not available."""
    name, callsign, imo, ship_type, length, width, bow, stern, port, starboard, dest = raw
    return (
        six_bit_text(name, 20),
        six_bit_text(callsign, 7),
        imo_number(imo),
        _ship_type(ship_type),
        antenna(bow, stern, port, starboard) or halves(length, width),
        six_bit_text(dest, 20),
    )


def _ship_type(s: str) -> int | None:
    """MarineCadastre's AIS code (its pre-2018 codes above 255 are not AIS ones), DMA's
    words; None: not available."""
    v = number(s)
    if v is None:
        return _SHIP_TYPES.get(s.strip().lower())
    return int(v) if v.is_integer() and 0 < v < 100 else None
