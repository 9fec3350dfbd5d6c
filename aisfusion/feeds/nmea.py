"""One NMEA 0183 line: optional NMEA 4.10 tag block, then an AIS VDM/VDO sentence.

::

    \\s:rcv1,c:1241544035*6F\\!AIVDM,1,1,,A,15B4FT5000JRP>PE6E68Nbkl0PS5,0*70,b003669794,1272412827
    ^ tag block (optional)    ^ sentence                                  ^ checksum, then a trailer

Everything works on bytes: feeds carry binary garbage now and then, and decoding every line
to text would cost more than the parse itself. Data after the sentence checksum is never a
reason to reject (the checksum has already vouched for the sentence); a USCG/NAIS trailer
there gives the receive time and the station (`parse_trailer`), anything else (a stray quote)
is ignored.

Receive times come in four forms, each read into a `TagBlock`: the tag block's ``c:`` (seconds
or milliseconds), a tag block on its own line before the sentence (DMA sends ``\\si:AISD*3F\\``,
its ``si:`` read as the source id), a NAIS trailer (``…*hh,r003669946,1325394060``: the last
``r``/``b`` field is the station, the first UNIX time after it the receive time), and a
Gatehouse ``$PGHP,1,yyyy,mm,dd,hh,mm,ss,ms,country,region,pss,…`` sentence before the one it
times (`parse_gatehouse`; its source id becomes the station).
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, NamedTuple


class Reject(StrEnum):
    """Why a line, sentence or fragment group was skipped (the ``reason`` metric label)."""

    GARBAGE = "garbage"  # neither a sentence nor a tag block
    NOT_AIS = "not_ais"  # a well-formed NMEA sentence other than VDM/VDO ($GPGGA, $PGHP...)
    NO_CHECKSUM = "no_checksum"  # missing or truncated ``*hh`` (usually a cut-off line)
    BAD_CHECKSUM = "bad_checksum"
    BAD_TAG_CHECKSUM = "bad_tag_checksum"
    BAD_FIELDS = "bad_fields"  # VDM/VDO with too few or malformed fields
    BAD_PAYLOAD = "bad_payload"  # a character outside the six-bit armoring alphabet
    SHORT_PAYLOAD = "short_payload"  # fewer than the 38 bits that hold type and MMSI
    TOO_LONG = "too_long"  # line longer than the configured max_line_bytes
    INCOMPLETE_GROUP = "incomplete_group"  # fragments never completed (timeout, replaced, EOF)
    ORPHAN_FRAGMENT = "orphan_fragment"  # a later fragment with no matching group


class TagBlock(NamedTuple):
    """The NMEA 4.10 tag-block fields aisfusion uses; the others are tolerated and ignored."""

    station: str | None  # s: source/station identifier
    time: float | None  # c: receive time in UNIX seconds (milliseconds converted)
    group: str | None  # id part of g:<num>-<total>-<id>, which ties fragments together


class Sentence(NamedTuple):
    """The fields of one VDM/VDO sentence aisfusion needs."""

    frag_count: int
    frag_num: int
    seq_id: bytes
    channel: bytes
    payload: bytes
    fill_bits: int


# A c: value above this is milliseconds: 1e11 s is the year 5138, 1e11 ms is March 1973, and
# no AIS receiver has a clock set between the two.
_MS_THRESHOLD: Final = 1e11

_HEX: Final = {f"{i:02X}".encode(): i for i in range(256)} | {
    f"{i:02x}".encode(): i for i in range(256)
}
_COUNT: Final = {str(i).encode(): i for i in range(1, 10)}  # fragment count and number
# Fill bits should be 0..5, but aishub's feed has 6 and the bits before them are fine: the
# payload check downstream decides. An empty field is read as 0.
_FILL: Final = {str(i).encode(): i for i in range(10)} | {b"": 0}
_SEQ: Final = frozenset([b"", *(str(i).encode() for i in range(10))])
_AIS_HEADS: Final = frozenset((b"VDM,", b"VDO,"))
_SENTENCE_STARTS: Final = frozenset((b"!", b"$"))
_NO_TAG: Final = TagBlock(None, None, None)
_new_sentence: Final = tuple.__new__


def checksum(data: bytes) -> int:
    """XOR of all bytes of `data` (the NMEA checksum of what lies between ``!``/``\\`` and ``*``).

    Folds one big integer in halves instead of looping over bytes: a handful of big-int
    operations beat n interpreted XORs, and this runs on every line. No masking is needed:
    after ``x ^= x >> s`` the low ``s`` bits hold the XOR of both halves, and later folds
    only read those.
    """
    x = int.from_bytes(data, "little")
    n = len(data)
    if n > 128:
        shift = 8 << ((n - 1).bit_length() - 1)
        while shift > 512:
            x ^= x >> shift
            shift >>= 1
    x ^= x >> 512
    x ^= x >> 256
    x ^= x >> 128
    x ^= x >> 64
    x ^= x >> 32
    x ^= x >> 16
    x ^= x >> 8
    return x & 0xFF


def _check(body: bytes, hh: bytes) -> bool:
    return _HEX.get(hh) == checksum(body)


# Receivers stamp many sentences with the same tag block (one station, one second), so the
# parse is memoized: a hit costs a hash lookup, and the bound keeps memory flat when times
# are in milliseconds and nothing repeats. Results are immutable, so sharing them is safe.
@functools.lru_cache(maxsize=4096)
def parse_tag_block(block: bytes) -> TagBlock | Reject:
    """Parse the text between the two backslashes of a tag block.

    The checksum is verified when present (NMEA 4.10 requires it, but some feeds omit it).
    Unknown fields and empty fields (a trailing comma) are tolerated; an unparsable ``c:``
    is treated as absent: the sentence is still good and will carry its arrival time.
    """
    star = block.rfind(b"*")
    if star >= 0:
        body = block[:star]
        if not _check(body, block[star + 1 :]):
            return Reject.BAD_TAG_CHECKSUM
    else:
        body = block
    station: str | None = None
    when: float | None = None
    group: str | None = None
    for field in body.split(b","):
        key = field[:2]
        if key == b"s:":
            station = field[2:].decode("latin-1") or None
        elif field[:3] == b"si:":  # DMA's source id, on a line of its own
            station = field[3:].decode("latin-1") or None
        elif key == b"c:":
            when = _tag_time(field[2:])
        elif key == b"g:":
            parts = field[2:].split(b"-", 2)
            if len(parts) == 3 and parts[2]:
                group = parts[2].decode("latin-1")
    if station is None and when is None and group is None:
        return _NO_TAG
    return TagBlock(station, when, group)


def _tag_time(value: bytes) -> float | None:
    try:
        t = float(value)
    except ValueError:
        return None
    if not math.isfinite(t) or t <= 0:
        return None
    return t / 1000.0 if t > _MS_THRESHOLD else t


def parse_sentence(text: bytes) -> Sentence | Reject:
    """Parse a sentence starting at its ``!`` or ``$``; anything after ``*hh`` is ignored."""
    if text[3:7] not in _AIS_HEADS:
        return Reject.NOT_AIS
    star = text.find(b"*")
    if star < 0:
        return Reject.NO_CHECKSUM
    hh = text[star + 1 : star + 3]
    body = text[1:star]
    if _HEX.get(hh) != checksum(body):
        return Reject.NO_CHECKSUM if len(hh) < 2 else Reject.BAD_CHECKSUM
    f = body.split(b",")
    # Seven fields; some devices (Navico GoFree) add an eighth before the checksum, tolerated.
    if len(f) < 7:
        return Reject.BAD_FIELDS
    count = _COUNT.get(f[1])
    num = _COUNT.get(f[2])
    fill = _FILL.get(f[6])
    seq = f[3]
    channel = f[4]
    if count and num and num <= count and fill is not None and seq in _SEQ and len(channel) < 2:
        # tuple.__new__ skips the Python-level NamedTuple constructor: a third of the cost.
        return _new_sentence(Sentence, (count, num, seq, channel, f[5], fill))
    return Reject.BAD_FIELDS


@functools.lru_cache(maxsize=4096)
def parse_trailer(rest: bytes) -> TagBlock | None:
    """The USCG/NAIS fields after a sentence's checksum (`rest` starts after ``*hh``), e.g.
    ``,d-109,S2105,t050056.00,T56.13,r003669946,1325394060,1325394001`` or
    ``,r08VCCH1,1272413332``: the station (the last ``r``/``b`` field: receiver, base station)
    and the receive time (the first UNIX time after it). None when it holds neither."""
    if rest[:1] != b",":
        return None
    station: str | None = None
    when: float | None = None
    for field in rest[1:].split(b","):
        head = field[:1]
        if head in (b"r", b"b") and len(field) > 1:
            station, when = field.decode("latin-1"), None
        elif when is None and field.isdigit() and 9 <= len(field) <= 10:
            when = float(field)
    if station is None and when is None:
        return None
    return TagBlock(station, when, None)


@functools.lru_cache(maxsize=64)
def _midnight(year: int, month: int, day: int) -> float:
    """UNIX time of a UTC date's start (ValueError if there is no such date). Cached: one
    date covers a day of sentences, and building a datetime per line is the parse's cost."""
    return datetime(year, month, day, tzinfo=UTC).timestamp()


def parse_gatehouse(line: bytes) -> TagBlock | Reject:
    """A Gatehouse ``$PGHP,1,…`` sentence: the receive time and source of the next sentence."""
    star = line.find(b"*")
    if star < 0:
        return Reject.NO_CHECKSUM
    body = line[1:star]
    if not _check(body, line[star + 1 : star + 3]):
        return Reject.BAD_CHECKSUM
    f = body.split(b",")
    if len(f) < 12 or f[1] != b"1":
        return Reject.BAD_FIELDS
    try:
        midnight = _midnight(int(f[2]), int(f[3]), int(f[4]))
        hour, minute, second, ms = int(f[5]), int(f[6]), int(f[7]), int(f[8] or 0)
    except (ValueError, OverflowError):
        return Reject.BAD_FIELDS
    if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 61 and 0 <= ms < 1000):
        return Reject.BAD_FIELDS
    when = midnight + hour * 3600 + minute * 60 + second + ms / 1000.0
    # The source: the base station's id (PSS), else country and region.
    source = f[11] or b"-".join(v for v in (f[9], f[10]) if v)
    return TagBlock(source.decode("latin-1") or None, when, None)


def parse_line(line: bytes) -> tuple[TagBlock | None, Sentence | None] | Reject:
    """Parse one line (no line terminator) into its tag block and sentence.

    A tag block alone on its line comes back as ``(tag, None)``: some networks send it on the
    line before the sentence it describes. A NAIS trailer after the checksum fills what the
    tag block (if any) leaves out.
    """
    tag: TagBlock | None = None
    if line[:1] == b"\\":
        end = line.find(b"\\", 1)
        if end < 0:
            return Reject.GARBAGE
        parsed = parse_tag_block(line[1:end])
        if isinstance(parsed, Reject):
            return parsed
        tag = parsed
        line = line[end + 1 :]
        if not line:
            return tag, None
    if line[:1] not in _SENTENCE_STARTS:
        return Reject.GARBAGE
    sentence = parse_sentence(line)
    if isinstance(sentence, Reject):
        return sentence
    rest = line[line.find(b"*") + 3 :]
    if rest:
        trailer = parse_trailer(rest)
        if trailer is not None:
            tag = trailer if tag is None else merged(tag, trailer)
    return tag, sentence


def merged(first: TagBlock, then: TagBlock) -> TagBlock:
    """`first` with what it leaves out taken from `then`."""
    return TagBlock(
        first.station if first.station is not None else then.station,
        first.time if first.time is not None else then.time,
        first.group if first.group is not None else then.group,
    )
