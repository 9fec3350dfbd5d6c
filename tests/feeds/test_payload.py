"""MMSI and message type straight from the armored payload."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyais.bit_vector import bit_vector
from pyais.messages import MSG_CLASS

from aisfusion.feeds.decoder import FeedDecoder
from aisfusion.feeds.nmea import Reject
from aisfusion.feeds.payload import (
    MIN_BITS,
    extract,
    invalid_chars,
    position_fields,
    routing_fields,
)


def armor(bits: str) -> bytes:
    """Armor a bit string the way ITU-R M.1371 says, written independently of the module."""
    bits += "0" * (-len(bits) % 6)
    alphabet = "0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVW`abcdefghijklmnopqrstuvw"
    return "".join(alphabet[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6)).encode()


def test_known_position_report() -> None:
    # pyais decodes this to type 1, MMSI 265547250.
    assert extract(b"13u?etPv2;0n:dDPwUM1U1Cb069D", 0) == (1, 265547250)


@given(
    msg_type=st.integers(0, 63),
    repeat=st.integers(0, 3),
    mmsi=st.integers(0, 2**30 - 1),
    rest=st.text(alphabet="01", max_size=400),
)
def test_fields_round_trip(msg_type: int, repeat: int, mmsi: int, rest: str) -> None:
    payload = armor(f"{msg_type:06b}{repeat:02b}{mmsi:030b}{rest}")
    assert invalid_chars(payload) == b""
    assert routing_fields(payload) == (msg_type, mmsi)
    assert extract(payload, 0) == (msg_type, mmsi)


def test_every_armoring_character_is_valid_and_nothing_else() -> None:
    valid = set(range(48, 88)) | set(range(96, 120))
    for c in range(256):
        assert (invalid_chars(bytes([c])) == b"") == (c in valid), c


@pytest.mark.parametrize(("chars", "fill", "ok"), [(7, 0, True), (7, 4, True), (7, 5, False)])
def test_thirty_eight_bits_are_needed(chars: int, fill: int, ok: bool) -> None:
    payload = b"1" * chars
    assert (chars * 6 - fill >= MIN_BITS) is ok
    result = extract(payload, fill)
    assert (result != Reject.SHORT_PAYLOAD) is ok


@pytest.mark.parametrize("payload", [b"", b"13u?et", b"GHv=2H"])
def test_short_payloads(payload: bytes) -> None:
    assert extract(payload, 0) == Reject.SHORT_PAYLOAD


@pytest.mark.parametrize("payload", [b"13u?etPv2;0n:dDPwUM1U1Cb069X", b"13u?etP x", b"\xff" * 10])
def test_invalid_armoring(payload: bytes) -> None:
    assert extract(payload, 0) == Reject.BAD_PAYLOAD


def _pyais_fields(payload: bytes, fill_bits: int, msg_type: int) -> dict[str, object]:
    return MSG_CLASS[msg_type].from_vector(bit_vector(payload, fill_bits)).asdict()  # type: ignore[no-any-return]


def test_known_position_report_fields() -> None:
    payload = b"13u?etPv2;0n:dDPwUM1U1Cb069D"
    fields = position_fields(payload, 0, 1)
    assert fields is not None
    # Every field the vessel reads from a class A report, each equal to pyais's.
    assert set(fields) == {"mmsi", "status", "speed", "course", "heading", "second", "lat", "lon"}
    assert fields == {k: _pyais_fields(payload, 0, 1)[k] for k in fields}


def test_position_fields_match_pyais_on_every_recorded_file(ais_data: Path) -> None:
    """The hand decoder against pyais, field by field, on every position report recorded."""
    checked = fallback = 0
    for path in sorted(ais_data.iterdir()):
        if path.name == "MANIFEST.md" or not path.is_file():
            continue
        decoder = FeedDecoder(path.name, max_line_bytes=65536, fragment_timeout_s=1e9)
        for msg in decoder.feed(path.read_bytes() + b"\n", 0.0):
            if msg.msg_type not in (1, 2, 3, 18):
                assert position_fields(msg.payload, msg.fill_bits, msg.msg_type) is None
                continue
            fields = position_fields(msg.payload, msg.fill_bits, msg.msg_type)
            if fields is None:
                fallback += 1
                assert len(msg.payload) * 6 - msg.fill_bits != 168
                continue
            expected = _pyais_fields(msg.payload, msg.fill_bits, msg.msg_type)
            for key, value in fields.items():
                want = expected[key]
                want = int(want) if isinstance(want, Enum) else want
                assert type(value) is type(want), (path.name, msg.payload, key)
                assert value == want, (path.name, msg.payload, key, value, want)
            assert fields["mmsi"] == msg.mmsi
            assert ("status" in fields) == ("status" in expected)
            checked += 1
    assert checked > 50_000
    assert fallback < checked / 100
