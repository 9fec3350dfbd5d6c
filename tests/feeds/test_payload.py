"""MMSI and message type straight from the armored payload."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aisfusion.feeds.nmea import Reject
from aisfusion.feeds.payload import MIN_BITS, extract, invalid_chars, routing_fields


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
