"""FeedDecoder against every recorded file, pyais, and arbitrary bytes.

The corpus checks rest on two independent sources: MANIFEST.md (counted by the data's
curator with a standard-library script) and `Tally`, a deliberately naive counter written
here with regular expressions and reduce(). `Tally` has three switches, one per place
where aisfusion's policy differs from the manifest's:

* ``talker_in_key``: the manifest keys fragment groups by talker too, so in
  gfw-tools-bad-type5 an ``!ABVDM`` first fragment does not pair with its ``!AIVDM`` second.
  aisfusion pairs them: the talker says what kind of station relayed the sentence, not which
  message it belongs to, and the file itself shows the joined payload.
* ``check_tag_checksum``: the manifest counts lines with a bad tag-block checksum and then
  uses them anyway; aisfusion rejects them (``bad_tag_checksum``): the station and time would
  be untrustworthy (gfw-tools-spire-test: all four lines).
* ``min_bits``: the manifest counts empty or very short payloads as complete messages;
  aisfusion needs the 38 bits holding type and MMSI to route a message (``short_payload``:
  100 empty payloads in pyais-nmea_data_sample, one 33-bit type 23 in libais-test and
  maritime-20181101).

With the manifest's switches `Tally` must reproduce the manifest exactly, which validates it;
with aisfusion's switches it gives the expected decoder counts.
"""

from __future__ import annotations

import functools
import itertools
import operator
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyais
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pyais.messages import NMEAMessage

from aisfusion.feeds.decoder import FeedDecoder
from aisfusion.messages import RawMessage

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ais"
FILES = sorted(p.name for p in DATA.iterdir() if p.name != "MANIFEST.md")


def data_file(name: str) -> bytes:
    return (DATA / name).read_bytes()


# --- MANIFEST.md -------------------------------------------------------------------------


def _num(text: str) -> int:
    return int(text.replace(",", ""))


def manifest() -> dict[str, dict[str, int]]:
    """Per-file counts from the "Per file" sections of MANIFEST.md."""
    text = (DATA / "MANIFEST.md").read_text()
    out: dict[str, dict[str, int]] = {}
    for section in re.split(r"^### ", text, flags=re.M)[1:]:
        name = section.split("`")[1].rsplit("/", 1)[-1]
        n = r"(\d[\d,]*)"
        m = re.search(
            rf"- lines {n}; VDM/VDO sentences {n}; other NMEA sentences {n}; "
            rf"standalone tag-block lines {n}; garbage lines {n}",
            section,
        )
        assert m, name
        keys = ["lines", "vdm", "other", "standalone", "garbage"]
        counts = dict(zip(keys, map(_num, m.groups()), strict=True))
        m = re.search(rf"- complete messages {n}", section)
        assert m, name
        counts["messages"] = _num(m[1])
        m = re.search(
            rf"- multi-fragment: .*?{n} complete groups.*?{n} incomplete groups, {n} orphan",
            section,
        )
        assert m, name
        counts["groups"], counts["incomplete"], counts["orphans"] = map(_num, m.groups())
        m = re.search(r"- bad/corrupt: ([^;\n]*)", section)
        assert m, name
        for item in m[1].split(", "):
            if item != "none found":
                key, value = item.rsplit(" ", 1)
                counts[key] = _num(value)
        out[name] = counts
    return out


# --- an independent counter ----------------------------------------------------------------

_TAGGED = re.compile(rb"\\([^\\]*)\\(.*)")
_VDM = re.compile(rb"[!$]([A-Z]{2})VD[MO],")
_ARMOR = re.compile(rb"^[0-W`-w]*$")


def _xor(data: bytes) -> int:
    return functools.reduce(operator.xor, data, 0)


@dataclass
class Tally:
    lines: int = 0
    vdm: int = 0
    other: int = 0
    gatehouse: int = 0  # of `other`: $PGHP time sentences, which time the next one
    standalone: int = 0
    garbage: int = 0
    bad_cs: int = 0
    no_cs: int = 0
    bad_tag_cs: int = 0
    messages: int = 0
    groups: int = 0
    incomplete: int = 0
    orphans: int = 0
    short: int = 0
    bad_payload: int = 0
    open: dict[tuple[bytes | None, ...], list[bytes]] = field(default_factory=dict)

    def finish(self, payload: bytes, fill: int, min_bits: int) -> None:
        if min_bits and not _ARMOR.match(payload):
            self.bad_payload += 1
        elif len(payload) * 6 - fill < min_bits:
            self.short += 1
        else:
            self.messages += 1


def count(data: bytes, *, talker_in_key: bool, check_tag_checksum: bool, min_bits: int) -> Tally:
    t = Tally()
    pending: dict[bytes, bytes] | None = None
    for raw in data.split(b"\n"):
        line = raw.removesuffix(b"\r")
        if not line:
            continue
        t.lines += 1
        tags: dict[bytes, bytes] | None = None
        if line.startswith(b"\\"):
            m = _TAGGED.fullmatch(line)
            if m is None:
                t.garbage += 1
                continue
            block, line = m.groups()
            body, star, cs = block.rpartition(b"*")
            if not star:
                body = block
            elif cs.upper() != b"%02X" % _xor(body):
                t.bad_tag_cs += 1
                if check_tag_checksum:
                    continue
            tags = dict(f.split(b":", 1) for f in body.split(b",") if b":" in f)
            if not line:
                t.standalone += 1
                pending = tags
                continue
        m = _VDM.match(line)
        if m is None:
            if line[:1] in (b"!", b"$"):
                t.other += 1
                t.gatehouse += line.startswith(b"$PGHP,")
            else:
                t.garbage += 1
            continue
        t.vdm += 1
        star = line.find(b"*")
        if star < 0 or len(line) < star + 3:
            t.no_cs += 1
            continue
        if line[star + 1 : star + 3].upper() != b"%02X" % _xor(line[1:star]):
            t.bad_cs += 1
            continue
        if tags is None:
            tags = pending
        pending = None
        tags = tags or {}
        _, total, num, seq, channel, payload, fill = line[1:star].split(b",")[:7]
        fill_bits = int(fill or b"0")
        if total == b"1":
            t.finish(payload, fill_bits, min_bits)
            continue
        if b"g" in tags:
            key: tuple[bytes | None, ...] = (b"g", tags[b"g"].split(b"-", 2)[2])
        else:
            key = (tags.get(b"s"), channel, seq)
        if talker_in_key:
            key += (m[1],)
        if num == b"1":
            if key in t.open:
                t.incomplete += 1
            t.open[key] = [total, payload]
        elif key in t.open and t.open[key][0] == total and len(t.open[key]) == int(num):
            t.open[key].append(payload)
            if num == total:
                t.groups += 1
                t.finish(b"".join(t.open.pop(key)[1:]), fill_bits, min_bits)
        else:
            t.orphans += 1
    t.incomplete += len(t.open)
    return t


def as_manifest(name: str) -> Tally:
    return count(data_file(name), talker_in_key=True, check_tag_checksum=False, min_bits=0)


def as_aisfusion(name: str) -> Tally:
    return count(data_file(name), talker_in_key=False, check_tag_checksum=True, min_bits=38)


def decode_file(name: str, chunk: int | None = None) -> tuple[FeedDecoder, list[RawMessage]]:
    d = FeedDecoder("test", max_line_bytes=1024, fragment_timeout_s=10.0)
    data = data_file(name)
    out: list[RawMessage] = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        out += d.feed(data[i : i + step], 1000.0)
    out += d.flush(1000.0)
    return d, out


MANIFEST = manifest()


def test_manifest_covers_every_file() -> None:
    assert sorted(MANIFEST) == FILES


@pytest.mark.parametrize("name", FILES)
def test_independent_counter_reproduces_the_manifest(name: str) -> None:
    want = MANIFEST[name]
    t = as_manifest(name)
    got = {
        "lines": t.lines,
        "vdm": t.vdm,
        "other": t.other,
        "standalone": t.standalone,
        "garbage": t.garbage,
        "messages": t.messages,
        "groups": t.groups,
        "incomplete": t.incomplete,
        "orphans": t.orphans,
        "bad_nmea_checksum": t.bad_cs,
        "garbage_lines": t.garbage,
        "missing_or_truncated_checksum": t.no_cs,
        "bad_tagblock_checksum": t.bad_tag_cs,
    }
    assert {k: got[k] for k in want if k in got} == {k: v for k, v in want.items() if k in got}
    for key in ("bad_nmea_checksum", "missing_or_truncated_checksum", "bad_tagblock_checksum"):
        assert got[key] == want.get(key, 0), key


@pytest.mark.parametrize("name", FILES)
def test_decoder_counts_match_the_independent_counter(name: str) -> None:
    t = as_aisfusion(name)
    d, messages = decode_file(name)
    expected = {
        "garbage": t.garbage,
        "not_ais": t.other - t.gatehouse,
        "bad_checksum": t.bad_cs,
        "no_checksum": t.no_cs,
        "bad_tag_checksum": t.bad_tag_cs,
        "short_payload": t.short,
        "bad_payload": t.bad_payload,
        "incomplete_group": t.incomplete,
        "orphan_fragment": t.orphans,
    }
    assert (d.lines, d.messages, len(messages)) == (t.lines, t.messages, t.messages)
    assert dict(d.rejects) == {k: v for k, v in expected.items() if v}
    assert d.open_groups == 0


@pytest.mark.parametrize("name", FILES)
def test_decoder_agrees_with_the_manifest_where_policies_agree(name: str) -> None:
    """Directly against MANIFEST.md, adjusting only by the three documented differences."""
    want = MANIFEST[name]
    d, _ = decode_file(name)
    lost = as_manifest(name).messages - as_aisfusion(name).messages  # tag cs, short, talker
    assert d.messages == want["messages"] - lost
    assert d.lines == want["lines"]
    assert d.rejects["garbage"] == want["garbage"]
    assert d.rejects["not_ais"] == want["other"] - as_aisfusion(name).gatehouse
    assert d.rejects["bad_checksum"] == want.get("bad_nmea_checksum", 0)
    assert d.rejects["no_checksum"] == want.get("missing_or_truncated_checksum", 0)
    assert d.rejects["bad_tag_checksum"] == want.get("bad_tagblock_checksum", 0)
    if name not in ("gfw-tools-bad-type5.nmea", "gfw-tools-spire-test.nmea"):
        assert d.rejects["incomplete_group"] == want["incomplete"]
        assert d.rejects["orphan_fragment"] == want["orphans"]
    if "empty_payload_messages" in want:
        assert d.rejects["short_payload"] >= want["empty_payload_messages"]


def test_lost_messages_are_exactly_the_documented_cases() -> None:
    lost = {
        name: as_manifest(name).messages - as_aisfusion(name).messages
        for name in FILES
        if as_manifest(name).messages != as_aisfusion(name).messages
    }
    assert lost == {
        "gfw-tools-bad-type5.nmea": -1,  # one more: AB/AI fragments joined
        "gfw-tools-spire-test.nmea": 1,  # bad tag-block checksums
        "libais-test.aivdm": 1,  # 33-bit type 23
        "maritime-20181101.log": 1,  # the same sentence
        "pyais-nmea_data_sample.nmea": 100,  # empty payloads
    }


@pytest.mark.parametrize("name", FILES)
def test_mmsi_and_type_match_pyais(name: str) -> None:
    _, messages = decode_file(name)
    full = 0
    for m in messages:
        body = b"AIVDM,1,1,,A," + m.payload + b",%d" % m.fill_bits
        line = b"!%s*%02X" % (body, _xor(body))
        try:
            decoded = pyais.decode(line)
        except pyais.exceptions.AISBaseException:
            # pyais declines unknown types (37, 41), odd type-24 part numbers, fill bits 6
            # (aishub) and over-long payloads; its own six-bit decoding of the first 42 bits
            # still gives type and MMSI.
            body = b"AIVDM,1,1,,A," + m.payload[:7] + b",0"
            bits = NMEAMessage(b"!%s*%02X" % (body, _xor(body))).bv
            assert (bits.get_num(8, 30), bits.get_num(0, 6)) == (m.mmsi, m.msg_type)
            continue
        assert (decoded.mmsi, decoded.msg_type) == (m.mmsi, m.msg_type), m.payload
        full += 1
    assert full >= len(messages) * 0.7


def test_tag_times_and_stations() -> None:
    _, messages = decode_file("gfw-listener-tagblock.nmea")
    # 9,381 of 10,000 sentences carry c:; the other 619 are second fragments, whose groups
    # take the time of their first fragment.
    assert len(messages) == 9380
    assert all(m.has_tag_time for m in messages)
    stations = {m.station for m in messages}
    assert None not in stations
    assert len(stations) == 38
    # Arrival times are the chunk's plus 1 µs per line before it: distinct, in order.
    arrivals = [m.arrival for m in messages]
    assert arrivals == sorted(set(arrivals))
    assert arrivals[0] >= 1000.0 and arrivals[-1] < 1000.0 + 10_001e-6
    assert all(m.source == "test" for m in messages)
    timed = [m.received_at for m in messages if m.has_tag_time]
    assert 1.6e9 < min(timed) <= max(timed) < 1.7e9


def test_arrival_times_of_one_stream_are_distinct_and_ordered_across_chunks() -> None:
    d = decoder()
    first = d.feed(POS + b"\n" + POS + b"\n", 7.0)
    # Read "earlier" than the last line's time (a coarse clock): still after it.
    second = d.feed(POS + b"\n", 7.0)
    assert [m.arrival for m in first + second] == [7.0, 7.000001, 7.000002]
    assert [m.arrival for m in d.feed(POS + b"\n", 9.0)] == [9.0]


def test_millisecond_tag_times() -> None:
    _, messages = decode_file("gfw-tools-sample.nmea")
    assert [m.received_at for m in messages] == [1599239526.5, 1599239587.658, 1599239644.72]
    assert all(m.station == "sdr-experiments" for m in messages)


def test_grouped_message_takes_the_first_fragments_tag() -> None:
    _, messages = decode_file("gfw-tools-ee-multiline.nmea")
    type5 = [m for m in messages if m.msg_type == 5]
    assert [(m.station, m.received_at) for m in type5] == [
        ("66", 1661782369.0),
        ("66", 1661782458.0),
    ]


# --- framing --------------------------------------------------------------------------------

POS = b"!AIVDM,1,1,,A,15B4FT5000JRP>PE6E68Nbkl0PS5,0*70"


def tagged(tag: str, sentence: bytes) -> bytes:
    return b"\\%s*%02X\\" % (tag.encode(), _xor(tag.encode())) + sentence


def sentence(body: str) -> bytes:
    return b"!%s*%02X" % (body.encode(), _xor(body.encode()))


def decoder(max_line_bytes: int = 1024) -> FeedDecoder:
    return FeedDecoder("t", max_line_bytes=max_line_bytes, fragment_timeout_s=10.0)


def test_crlf_and_partial_lines() -> None:
    d = decoder()
    assert d.feed(POS[:20], 1.0) == []
    out = d.feed(POS[20:] + b"\r", 2.0)
    assert out == []
    out = d.feed(b"\n" + POS + b"\r\n\r\n\n" + POS[:-3], 3.0)
    assert len(out) == 2
    assert out[0].arrival == 3.0
    assert (out[0].mmsi, out[0].msg_type, out[0].payload) == (
        pyais.decode(POS).mmsi,
        1,
        b"15B4FT5000JRP>PE6E68Nbkl0PS5",
    )
    assert d.lines == 2
    assert len(d.flush(4.0)) == 0  # truncated checksum at EOF
    assert d.rejects == {"no_checksum": 1}
    assert d.lines == 3


def test_last_line_without_newline_is_parsed_at_eof() -> None:
    d = decoder()
    assert d.feed(POS, 1.0) == []
    assert len(d.flush(1.0)) == 1
    assert (d.lines, d.messages) == (1, 1)


def test_too_long_line_in_one_chunk() -> None:
    d = decoder(max_line_bytes=100)
    out = d.feed(b"!" + b"x" * 200 + b"\n" + POS + b"\n", 1.0)
    assert len(out) == 1
    assert d.rejects == {"too_long": 1}
    assert d.lines == 2


def test_too_long_line_across_many_chunks_is_dropped_once() -> None:
    d = decoder(max_line_bytes=100)
    out: list[RawMessage] = []
    out += d.feed(POS + b"\n" + b"A" * 60, 1.0)
    for _ in range(50):
        out += d.feed(b"B" * 60, 1.0)
        assert len(d._partial) <= 101  # never buffers the over-long line
    out += d.feed(b"C" * 10 + b"\r\n" + POS + b"\n", 1.0)
    assert len(out) == 2
    assert d.rejects == {"too_long": 1}
    assert d.lines == 3


def test_line_of_exactly_the_limit_is_kept() -> None:
    line = sentence("AIVDM,1,1,,A,15B4FT5000JRP>PE6E68Nbkl0PS5,0") + b",r" + b"9" * 40
    d = decoder(max_line_bytes=len(line))
    chunks = [line[:50], line[50:] + b"\r", b"\n"]
    out = [m for c in chunks for m in d.feed(c, 1.0)]
    assert len(out) == 1
    assert not d.rejects


def test_binary_garbage_between_lines() -> None:
    d = decoder()
    out = d.feed(b"\x00\xff\xfe\x80garbage\n" + POS + b"\n\xde\xad\xbe\xef\n", 1.0)
    assert len(out) == 1
    assert d.rejects == {"garbage": 2}


def test_standalone_tag_block_applies_to_the_next_ais_sentence() -> None:
    d = decoder()
    stream = b"\n".join(
        [
            tagged("s:rx1,c:1700000000", b""),
            sentence("PSTT,30A,20131112,120000").replace(b"!", b"$"),  # DMA's status line
            POS,
            POS,  # the tag block was used up by the previous sentence
            b"",
        ]
    )
    out = d.feed(stream, 5.0)
    assert [(m.station, m.received_at, m.has_tag_time) for m in out] == [
        ("rx1", 1700000000.0, True),
        (None, 5.000003, False),  # the fourth line: 3 µs after the chunk's time
    ]
    assert d.rejects == {"not_ais": 1}


def test_receive_times_in_every_form_of_the_corpus() -> None:
    """Real lines: a Gatehouse $PGHP time after DMA's tag-only line, NAIS trailers (one time,
    two times), a tag block with milliseconds; each message gets its station and time."""
    dma = data_file("dma-denmark-2013.nmea").split(b"\n")[:3]  # \si:AISD*3F\, $PGHP, !BSVDM
    nais = [
        line
        for name, head in (
            ("maritime-20181101.log", b"!AIVDM,1,1,,A,:8JhQr1GP368,0*3E,r08VCCH1,"),
            ("libais-typeexamples.nmea", b"!AIVDM,1,1,,A,15N1u<PP1FJuvSRHOE6QIwwh0HQ6,0*30,"),
        )
        for line in data_file(name).split(b"\n")
        if line.startswith(head)
    ][::-1]
    d = decoder()
    out = d.feed(b"\n".join([*dma, nais[0], nais[-1], b""]), 5.0)
    assert [(m.station, m.received_at, m.has_tag_time) for m in out] == [
        ("2190067", 1384257600.011, True),  # 2013-11-12 12:00:00.011 UTC, PSS 2190067
        ("r003669946", 1325394060.0, True),  # the first time after the station
        ("r08VCCH1", 1272413332.0, True),
    ]
    assert not d.rejects and d.lines == 5


def test_sentence_with_its_own_tag_block_discards_a_pending_one() -> None:
    d = decoder()
    stream = tagged("s:old", b"") + b"\n" + tagged("s:new", POS) + b"\n" + POS + b"\n"
    assert [m.station for m in d.feed(stream, 1.0)] == ["new", None]


def test_two_receivers_interleave_fragments_with_the_same_sequence_id() -> None:
    p1 = "55?MbV02;H;s<HtKR20EHE:0@T4@Dn2222222216L961O5Gf0NSQEp6ClRp8"
    p2 = "88888888880"
    q1 = "53KPtl01pv8`tTtR22050thhtr2222222222220l1`A916Vh0;20DPSmD`0D"
    q2 = "ljDm0CPiH80"
    lines = [
        tagged("s:east,c:1700000001", sentence(f"AIVDM,2,1,3,A,{p1},0")),
        tagged("s:west,c:1700000002", sentence(f"AIVDM,2,1,3,A,{q1},0")),
        tagged("s:west", sentence(f"AIVDM,2,2,3,A,{q2},2")),
        tagged("s:east", sentence(f"AIVDM,2,2,3,A,{p2},2")),
    ]
    d = decoder()
    out = d.feed(b"\r\n".join(lines) + b"\r\n", 9.0)
    assert [(m.station, m.payload, m.fill_bits, m.received_at) for m in out] == [
        ("west", (q1 + q2).encode(), 2, 1700000002.0),
        ("east", (p1 + p2).encode(), 2, 1700000001.0),
    ]
    assert [m.mmsi for m in out] == [
        pyais.decode(lines[1], lines[2]).mmsi,
        pyais.decode(lines[0], lines[3]).mmsi,
    ]
    assert not d.rejects


def test_expire_drops_stale_groups() -> None:
    d = FeedDecoder("t", max_line_bytes=1024, fragment_timeout_s=5.0)
    d.feed(sentence("AIVDM,2,1,3,A,53KPtl01pv8`tTtR22050thhtr2222222222220l1,0") + b"\n", 100.0)
    assert d.open_groups == 1
    assert d.expire(104.9) == 0
    assert d.expire(105.0) == 1
    assert d.open_groups == 0
    out = d.feed(sentence("AIVDM,2,2,3,A,ljDm0CPiH80,2") + b"\n", 106.0)
    assert out == []
    assert d.rejects == {"incomplete_group": 1, "orphan_fragment": 1}


def test_flush_counts_open_groups_as_incomplete() -> None:
    d = decoder()
    d.feed(sentence("AIVDM,2,1,3,A,53KPtl01pv8`tTtR22050thhtr2222222222220l1,0") + b"\n", 1.0)
    assert d.flush(2.0) == []
    assert d.rejects == {"incomplete_group": 1}


# --- properties -------------------------------------------------------------------------------


def _sample_lines() -> list[bytes]:
    """A few hundred real lines covering every kind: tag blocks, fragments, junk, other NMEA."""
    rng = random.Random(7)
    lines: list[bytes] = []
    for name in FILES:
        file_lines = data_file(name).split(b"\n")
        start = rng.randrange(max(1, len(file_lines) - 40))
        lines += file_lines[start : start + 40]
    return lines


SAMPLE = _sample_lines()
SAMPLE_STREAM = b"\n".join(SAMPLE) + b"\n" + b"!" + b"Z" * 300 + b"\n" + POS


def _fingerprint(d: FeedDecoder, messages: list[RawMessage]) -> tuple[object, ...]:
    return (d.lines, d.messages, dict(d.rejects), messages)


def _feed_in_chunks(data: bytes, cuts: list[int], max_line_bytes: int) -> tuple[object, ...]:
    d = decoder(max_line_bytes)
    out: list[RawMessage] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for a, b in itertools.pairwise(bounds):
        out += d.feed(data[a:b], 1.0)
    out += d.flush(1.0)
    return _fingerprint(d, out)


WHOLE = {n: _feed_in_chunks(SAMPLE_STREAM, [], n) for n in (100, 1024)}


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(cuts=st.lists(st.integers(0, 10**9), max_size=60), max_line=st.sampled_from([100, 1024]))
@example(cuts=[33554420], max_line=100)  # a cut inside an over-long line: it keeps its time slot
def test_chunk_boundaries_do_not_matter(cuts: list[int], max_line: int) -> None:
    assert _feed_in_chunks(SAMPLE_STREAM, cuts, max_line) == WHOLE[max_line]


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_random_bytes_never_raise_and_split_the_same(data: bytes, cuts: list[int]) -> None:
    result = _feed_in_chunks(data, cuts, 100)
    assert result == _feed_in_chunks(data, [], 100)
    d = decoder(100)
    d.feed(data, 1.0)
    d.expire(1e9)
    d.flush(2.0)
    # Each line yields at most one outcome; a group of several lines yields exactly one.
    assert d.messages + sum(d.rejects.values()) <= d.lines


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    line = bytearray(draw(st.sampled_from(SAMPLE)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(line) - 1)))
        if op == "flip" and line:
            line[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            line[pos:pos] = draw(st.binary(min_size=1, max_size=5))
        elif op == "delete" and line:
            del line[pos]
        else:
            del line[pos:]
    return bytes(line)


@settings(max_examples=300, deadline=None)
@given(st.lists(mutated_lines(), min_size=1, max_size=20))
def test_mutated_real_sentences_never_raise(lines: list[bytes]) -> None:
    d = decoder()
    messages = d.feed(b"\n".join(lines) + b"\n", 1.0) + d.flush(1.0)
    for m in messages:
        assert 0 <= m.mmsi < 2**30
        assert 0 <= m.msg_type < 64
        assert len(m.payload) * 6 - m.fill_bits >= 38


def _followers() -> list[bytes]:
    """Complete messages as the corpus has them: one line, or a fragment group, or a tag block
    on its own line and its sentence; each one a fresh decoder turns into exactly one message
    with nothing rejected."""
    rng = random.Random(11)
    out: list[bytes] = []
    for name in FILES:
        lines = data_file(name).split(b"\n")
        for _ in range(30):
            i = rng.randrange(len(lines))
            n = rng.choice([1, 2, 3])
            chunk = b"\n".join(lines[i : i + n]) + b"\n"
            d = decoder()
            messages = d.feed(chunk, 1.0) + d.flush(1.0)
            if len(messages) == 1 and not d.rejects and d.lines == n:
                out.append(chunk)
    return out


# The corpus has tag blocks on their own line only in the DMA file, always with a $PGHP
# sentence before the AIS one (which a follower may not have: it is rejected as not_ais).
FOLLOWERS = [
    *_followers(),
    tagged("s:rx1,c:1700000000", b"") + b"\n" + POS + b"\n",
    tagged("g:1-2-9,s:rx1", b"")
    + b"\n"
    + sentence("AIVDM,2,1,3,A,53KPtl01pv8`tTtR22050thhtr2222222222220l1`A916Vh0;20DPSmD`0D,0")
    + b"\n"
    + tagged("g:2-2-9", b"")
    + b"\n"
    + sentence("AIVDM,2,2,3,A,ljDm0CPiH80,2")
    + b"\n",
]


def _routing(m: RawMessage) -> tuple[object, ...]:
    return (m.mmsi, m.msg_type, m.payload, m.fill_bits)


def test_followers_cover_single_lines_groups_and_standalone_tags() -> None:
    sizes = Counter(f.count(b"\n") for f in FOLLOWERS)
    assert sizes[1] > 50
    assert sizes[2] > 5
    assert sizes[4] == 1  # standalone tag blocks before each fragment


def test_stray_tag_group_before_an_untagged_group_does_not_lose_it() -> None:
    """Found while writing the property below: a tag block on its own line with a g: group
    gave the untagged first fragment a group id its untagged continuation did not have."""
    first = sentence("AIVDM,2,1,3,A,53KPtl01pv8`tTtR22050thhtr2222222222220l1`A916Vh0;20DPSmD`0D,0")
    stream = b"\n".join([tagged("g:1-2-77", b""), first, sentence("AIVDM,2,2,3,A,ljDm0CPiH80,2")])
    d = decoder()
    out = d.feed(stream + b"\n", 1.0)
    assert [m.mmsi for m in out] == [230178000]
    assert not d.rejects


@settings(max_examples=400, deadline=None)
@given(
    garbage=st.one_of(
        st.binary(max_size=400),
        st.lists(mutated_lines(), min_size=1, max_size=5).map(b"\n".join),
        st.lists(st.sampled_from(SAMPLE), max_size=5).map(b"\n".join),
    ),
    follower=st.sampled_from(FOLLOWERS),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
    max_line=st.sampled_from([100, 1024]),
)
# Found by CI: a stray first fragment, then a tag block on its own line naming a station
# before the follower's first fragment; the follower's untagged continuation joined the
# stray, older group (its exact key) instead of the group opened just before it.
@example(
    garbage=sentence("AIVDM,2,1,2,B,0000000111455500000000,0") + b"\n" + tagged("s:3F", b""),
    follower=sentence("AIVDM,2,1,2,B,538UMb82F1cOD9MOD00PtpHhEE800000000000157av:E=EP0?1SliC`,0")
    + b"\n"
    + sentence("AIVDM,2,2,2,B,6@DQ00000000008,2")
    + b"\n",
    cuts=[],
    max_line=100,
)
def test_a_valid_message_after_any_garbage_line_is_delivered(
    garbage: bytes, follower: bytes, cuts: list[int], max_line: int
) -> None:
    fresh = decoder(max_line)
    want = [_routing(m) for m in fresh.feed(follower, 1.0)]
    assume(want)  # a follower line longer than max_line is rightly dropped
    data = garbage + b"\n" + follower
    d = decoder(max_line)
    out: list[RawMessage] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for a, b in itertools.pairwise(bounds):
        out += d.feed(data[a:b], 1.0)
    out += d.flush(1.0)
    assert [_routing(m) for m in out[-1:]] == want
