"""Parsing one NMEA line: tag block, VDM/VDO sentence, checksums."""

from __future__ import annotations

import functools
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aisfusion.feeds.nmea import (
    Reject,
    Sentence,
    TagBlock,
    checksum,
    parse_gatehouse,
    parse_line,
    parse_sentence,
    parse_tag_block,
    parse_trailer,
)


def nmea(body: str, start: str = "!") -> bytes:
    """A sentence with a correct checksum, computed independently of the module."""
    cs = functools.reduce(operator.xor, body.encode(), 0)
    return f"{start}{body}*{cs:02X}".encode()


def tag(body: str) -> bytes:
    cs = functools.reduce(operator.xor, body.encode(), 0)
    return f"\\{body}*{cs:02X}\\".encode()


POS = "13u?etPv2;0n:dDPwUM1U1Cb069D"


@given(st.binary(max_size=3000))
def test_checksum_is_xor_of_all_bytes(data: bytes) -> None:
    assert checksum(data) == functools.reduce(operator.xor, data, 0)


def test_sentence_fields() -> None:
    s = parse_sentence(nmea("AIVDM,2,1,7,B,53KPtl01pv8`tTtR2205,0"))
    assert s == Sentence(2, 1, b"7", b"B", b"53KPtl01pv8`tTtR2205", 0)


@pytest.mark.parametrize("talker", ["AI", "AB", "BS", "SA", "AN"])
@pytest.mark.parametrize("kind", ["VDM", "VDO"])
def test_any_talker_and_own_ship(talker: str, kind: str) -> None:
    s = parse_sentence(nmea(f"{talker}{kind},1,1,,A,{POS},0"))
    assert isinstance(s, Sentence)
    assert s.payload == POS.encode()


@pytest.mark.parametrize("channel", ["A", "B", "1", "2", ""])
def test_channels(channel: str) -> None:
    s = parse_sentence(nmea(f"AIVDM,1,1,,{channel},{POS},0"))
    assert isinstance(s, Sentence)
    assert s.channel == channel.encode()


def test_real_sentence_with_uscg_trailer() -> None:
    line = b"!AIVDM,1,1,,A,15B4FT5000JRP>PE6E68Nbkl0PS5,0*70,b003669794,1272412827"
    s = parse_sentence(line)
    assert isinstance(s, Sentence)
    assert s.payload == b"15B4FT5000JRP>PE6E68Nbkl0PS5"


def test_trailing_junk_after_checksum_is_ignored() -> None:
    assert isinstance(parse_sentence(nmea(f"AIVDM,1,1,,A,{POS},0") + b"'\r"), Sentence)


def test_extra_field_before_checksum_is_tolerated() -> None:
    # Navico GoFree adds an eighth field; the manifest counts these as complete messages.
    s = parse_sentence(b"!AIVDM,1,1,1,,13aI8e?P00PGpU:NR6s00?vT2000,0,0*1C")
    assert isinstance(s, Sentence)
    assert (s.seq_id, s.channel, s.fill_bits) == (b"1", b"", 0)


def test_lowercase_checksum_hex() -> None:
    line = nmea(f"AIVDM,1,1,,A,{POS},0")
    assert isinstance(parse_sentence(line[:-2] + line[-2:].lower()), Sentence)


def test_empty_fill_bits_mean_zero() -> None:
    s = parse_sentence(nmea(f"AIVDM,1,1,,A,{POS},"))
    assert isinstance(s, Sentence)
    assert s.fill_bits == 0


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        # maritime-20181101.log line 1: the recorded checksum is wrong (0x24 is right).
        (b"!AIVDM,1,1,,A,13u?etPv2;0n:dDPwUM1U1Cb069D,0*23", Reject.BAD_CHECKSUM),
        (b"!AIVDM,1,1,,A,13u?etPv2;0n:dDPwUM1U1Cb069D,0*ZZ", Reject.BAD_CHECKSUM),
        (b"!AIVDM,1,1,,A,13u?etPv2;0n:dDPwUM1U1Cb069D,0", Reject.NO_CHECKSUM),
        (b"!AIVDM,1,1,,A,13u?etPv2;0n:dDPwUM1U1Cb069D,0*2", Reject.NO_CHECKSUM),
        (b"!AIVDM,1,1,,B,H3MA8?lUCBD6f6>=", Reject.NO_CHECKSUM),
        (nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", "$"), "not_ais"),
        (nmea("PGHP,1,2013,11,12,12,0,0,11,219,,2190067,1,62", "$"), Reject.NOT_AIS),
        (nmea("AIALR,000000.00,001,A,V,AIS: general failure"), Reject.NOT_AIS),
        (nmea(f"AIVDM,1,1,,A,{POS}"), Reject.BAD_FIELDS),
        (nmea(f"AIVDM,0,1,,A,{POS},0"), Reject.BAD_FIELDS),
        (nmea(f"AIVDM,1,2,,A,{POS},0"), Reject.BAD_FIELDS),
        (nmea(f"AIVDM,x,1,,A,{POS},0"), Reject.BAD_FIELDS),
        (nmea(f"AIVDM,1,1,,A,{POS},x"), Reject.BAD_FIELDS),
        (nmea(f"AIVDM,1,1,,AB,{POS},0"), Reject.BAD_FIELDS),
        (nmea(f"AIVDM,1,1,Q,A,{POS},0"), Reject.BAD_FIELDS),
    ],
)
def test_sentence_rejects(line: bytes, reason: str) -> None:
    assert parse_sentence(line) == reason


def test_tag_block_fields() -> None:
    t = parse_tag_block(tag("g:1-2-1604,s:rORBCOMM008,c:1418169601,T:2014-12-10 00.00.01")[1:-1])
    assert t == TagBlock("rORBCOMM008", 1418169601.0, "1604")


def test_tag_time_in_milliseconds() -> None:
    t = parse_tag_block(b"c:1599239526500,s:sdr-experiments,T:2020-09-04 18.12.06*5D")
    assert t == TagBlock("sdr-experiments", 1599239526.5, None)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-5", "0", ""])
def test_unusable_tag_time_is_dropped(value: str) -> None:
    assert parse_tag_block(tag(f"s:r1,c:{value}")[1:-1]) == TagBlock("r1", None, None)


def test_unknown_and_empty_tag_fields_are_tolerated() -> None:
    # gfw-listener-mixed: "s:" only, with an empty trailing field, and a real checksum.
    assert parse_tag_block(b"s:rMT5858,*0E") == TagBlock("rMT5858", None, None)
    assert parse_tag_block(tag("q:u,t:marinetraffic,x,n:12,s:r1")[1:-1]).station == "r1"


def test_tag_block_without_checksum_is_accepted() -> None:
    assert parse_tag_block(b"s:r1,c:1241544035") == TagBlock("r1", 1241544035.0, None)


def test_bad_tag_block_checksum() -> None:
    assert parse_tag_block(b"c:1662052384,s:FM112*00") == Reject.BAD_TAG_CHECKSUM


def test_malformed_group_is_kept_as_written() -> None:
    # gfw-tools-bad-tagblock-group: "g:1-2--001"; both fragments say the same, so they pair.
    t = parse_tag_block(b"g:1-2--001,c:1326055296*3C")
    assert isinstance(t, TagBlock)
    assert t.group == "-001"


def test_line_with_tag_block() -> None:
    line = tag("s:rcv,c:1241544035") + nmea(f"AIVDM,1,1,,A,{POS},0")
    parsed = parse_line(line)
    assert not isinstance(parsed, Reject)
    t, s = parsed
    assert t == TagBlock("rcv", 1241544035.0, None)
    assert isinstance(s, Sentence)


def test_standalone_tag_block() -> None:
    # DMA's form: `si:` is the source id.
    assert parse_line(b"\\si:AISD*3F\\") == (TagBlock("AISD", None, None), None)


def test_uscg_trailers_give_station_and_time() -> None:
    assert parse_trailer(b",b003669794,1272412827") == TagBlock("b003669794", 1272412827.0, None)
    # gpsd's NAIS sample: signal fields first, the station, then the time.
    rest = b",s28089,d-103,T39.44353985,x147521,r08TPHI1,1242958962"
    assert parse_trailer(rest) == TagBlock("r08TPHI1", 1242958962.0, None)
    assert parse_trailer(b"'") is None  # a stray quote (gfw-listener): nothing
    assert parse_trailer(b",s36310,d-081,T59.01777335") is None
    line = b"!AIVDM,1,1,,A,15B4FT5000JRP>PE6E68Nbkl0PS5,0*70,b003669794,1272412827"
    assert parse_line(line)[0] == TagBlock("b003669794", 1272412827.0, None)  # type: ignore[index]
    # A tag block's own fields come first; the trailer fills in what it lacks.
    tagged = b"\\s:rx1*" + f"{checksum(b's:rx1'):02X}".encode() + b"\\" + line
    assert parse_line(tagged)[0] == TagBlock("rx1", 1272412827.0, None)  # type: ignore[index]


def test_gatehouse_time_sentence() -> None:
    line = b"$PGHP,1,2013,11,12,12,0,0,11,219,,2190067,1,62*26"
    assert parse_gatehouse(line) == TagBlock("2190067", 1384257600.011, None)
    assert parse_gatehouse(line.replace(b"*26", b"*27")) == Reject.BAD_CHECKSUM
    bad = b"PGHP,1,2013,13,12,12,0,0,11,219,,2190067,1,62"  # month 13
    assert parse_gatehouse(b"$" + bad + b"*" + f"{checksum(bad):02X}".encode()) == (
        Reject.BAD_FIELDS
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\\s:", Reject.GARBAGE),
        (b",1541030400", Reject.GARBAGE),
        (b"53l3sj42A590=5Q2220UHE:04=@Ttr222222221@9HH>46ii0=D532Dp?`1D888888888888880", "garbage"),
        (b"AIVDM,2,2,1,B,00000000000,2*26", Reject.GARBAGE),
        (b"\x00\xff\xfe!AIVDM", Reject.GARBAGE),
        (tag("s:r1") + b"hello", Reject.GARBAGE),
        (b"\\c:1662052384,s:FM112*00\\!AIVDM,2,2,1,A,00000000000,2*25", Reject.BAD_TAG_CHECKSUM),
        (tag("s:r1") + nmea("GPRMC,1,2,3", "$"), Reject.NOT_AIS),
    ],
)
def test_line_rejects(line: bytes, reason: str) -> None:
    assert parse_line(line) == reason


@given(st.binary(max_size=200))
def test_parse_line_never_raises(data: bytes) -> None:
    parse_line(data)
