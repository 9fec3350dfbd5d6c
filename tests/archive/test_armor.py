"""The AIS encoding of CSV rows: the hand-packed position reports against pyais's own."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pyais.messages import MSG_CLASS

from aisfusion.archive import armor
from aisfusion.feeds.payload import routing_fields


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([1, 18]),
    st.integers(1, 999_999_999),
    st.integers(0, 15),
    st.integers(0, 1023),
    st.floats(-181.0, 181.0),
    st.floats(-91.0, 91.0),
    st.integers(0, 3600),
    st.integers(0, 511),
    st.integers(0, 63),
)
def test_position_packing_is_pyais_encoding(
    msg_type: int,
    mmsi: int,
    status: int,
    sog: int,
    lon: float,
    lat: float,
    cog: int,
    heading: int,
    second: int,
) -> None:
    ours = armor.position(msg_type, mmsi, status, sog, lon, lat, cog, heading, second)
    fields: dict[str, Any] = {
        "mmsi": mmsi,
        "speed": sog / 10,
        "lon": lon,
        "lat": lat,
        "course": cog / 10,
        "heading": heading,
        "second": second,
    }
    if msg_type == 1:
        fields |= {"status": status, "turn": -128, "maneuver": 0}
    armored, fill = MSG_CLASS[msg_type].create(**fields).encode()
    assert (ours, 0) == (armored.encode(), fill)


def test_an_auxiliary_crafts_static_data_encodes() -> None:
    # 98xxxxxxx: type 24 part B has a mother ship's MMSI in place of the dimensions (pyais
    # wants one: the reader must count such rows, never raise).
    values = ("TENDER", "XYZ", None, 30, (1, 2, 1, 1), None)
    reports = list(armor.static_reports(981_234_567, 18, values))
    assert len(reports) == 2
    assert [routing_fields(payload) for payload, _ in reports] == [(24, 981_234_567)] * 2
