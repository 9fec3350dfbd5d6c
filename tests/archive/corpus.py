"""An independent count of what an archive should store: its valid, distinct position reports.

Written from the formats' descriptions with the standard library and pyais only, none of
aisfusion's framing: the receive time of a sentence is its tag block's ``c:`` (seconds or
milliseconds), a tag block alone on the line before it, the first UNIX time after its
checksum (NAIS/USCG trailers), or the Gatehouse ``$PGHP`` sentence before it. A position
report is valid when its checksum is right, pyais decodes it, and it has a position. It is
timed by its transmission: the receive time moved to the nearest time whose UTC second is the
report's own second field (within ±30 s). Distinct is one (MMSI, time, position); a report
without a second field is one report per payload within the dedup window.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from pyais import decode

POSITION_TYPES = {1, 2, 3, 9, 18, 19, 27}
_TAG = re.compile(rb"^\\([^\\]*)\\")

Key = tuple[int, float, float, float]


def _checksum_ok(sentence: bytes) -> bool:
    star = sentence.rfind(b"*")
    if star < 1 or len(sentence) < star + 3:
        return False
    x = 0
    for c in sentence[1:star]:
        x ^= c
    try:
        return x == int(sentence[star + 1 : star + 3], 16)
    except ValueError:
        return False


def _tag_time(block: bytes) -> float | None:
    for field in block.split(b"*")[0].split(b","):
        if field.startswith(b"c:"):
            try:
                value = float(field[2:])
            except ValueError:
                return None
            return value / 1000 if value > 1e11 else value
    return None


def _gatehouse_time(line: bytes) -> float | None:
    f = line.split(b",")
    try:
        parts = [int(x) for x in f[2:9]]
        return dt.datetime(*parts[:6], parts[6] * 1000, tzinfo=dt.UTC).timestamp()
    except (ValueError, IndexError):
        return None


def _sentences(path: Path) -> list[tuple[bytes, float | None]]:
    """Every single-sentence AIS line with its receive time (None: it has none)."""
    out: list[tuple[bytes, float | None]] = []
    pending = None
    for raw in path.read_bytes().split(b"\n"):
        line = raw.rstrip(b"\r")
        t = None
        m = _TAG.match(line)
        if m:
            t = _tag_time(m.group(1))
            line = line[m.end() :]
            if not line:
                pending = t if t is not None else pending
                continue
        if line.startswith(b"$PGHP"):
            pending = _gatehouse_time(line)
            continue
        if not line.startswith(b"!"):
            continue
        star = line.rfind(b"*")
        sentence, trailer = line[: star + 3], line[star + 3 :]
        if t is None:
            for field in trailer.split(b",")[1:]:
                if field.isdigit() and 9 <= len(field) <= 10:
                    t = float(field)
                    break
        if t is None:
            t = pending
        pending = None
        fields = sentence.split(b",")
        if len(fields) >= 7 and fields[1] == b"1":
            out.append((sentence, t))
    return out


def has_times(path: Path) -> bool:
    return any(t is not None for _, t in _sentences(path))


def expected_positions(path: Path, dedup_window_s: float = 5.0) -> set[Key]:
    keys: set[Key] = set()
    heard: dict[tuple[int, bytes], float] = {}
    for sentence, t in _sentences(path):
        if t is None or not _checksum_ok(sentence):
            continue
        try:
            msg = decode(sentence).asdict()
        except Exception:  # pyais cannot decode it: not a valid report
            continue
        if msg.get("msg_type") not in POSITION_TYPES:
            continue
        lat, lon = msg.get("lat"), msg.get("lon")
        if lat is None or lon is None or lat == 91 or lon == 181:
            continue
        if abs(lat) > 90 or abs(lon) > 180:
            continue
        second = msg.get("second")
        if second is not None and 0 <= second < 60:
            offset = (t - second + 30.0) % 60.0 - 30.0
            keys.add((msg["mmsi"], round(t - offset, 3), lat, lon))
            continue
        payload = sentence.split(b",")[5]
        last = heard.get((msg["mmsi"], payload))
        if last is not None and abs(t - last) <= dedup_window_s:
            continue
        heard[(msg["mmsi"], payload)] = t
        keys.add((msg["mmsi"], round(t, 3), lat, lon))
    return keys
