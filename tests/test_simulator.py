"""The simulator emits valid AIS that decodes back to its own truth, deterministically."""

from __future__ import annotations

import math
from collections import defaultdict
from functools import reduce
from itertools import pairwise
from operator import xor

import pyais
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyais.encode import encode_dict

from aisfusion.traffic.motion import CONTROL_PERIOD_S
from aisfusion.traffic.nmea_out import encode, tag_block
from aisfusion.traffic.simulator import Fleet, SimReport, generate_lines

BBOX = (54.0, 3.0, 58.0, 12.0)


def nmea_checksum_ok(sentence: str) -> bool:
    body, _, given_cs = sentence[1:].rpartition("*")
    return reduce(xor, body.encode(), 0) == int(given_cs, 16)


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2
    h += math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000.0 * math.asin(math.sqrt(h))


def run(fleet: Fleet, seconds: float, step: float = 1.0) -> list[SimReport]:
    reports: list[SimReport] = []
    for _ in range(round(seconds / step)):
        reports.extend(fleet.step(step))
    return reports


@pytest.fixture(scope="module")
def fleet_and_reports() -> tuple[Fleet, list[SimReport]]:
    fleet = Fleet(40, seed=7)
    return fleet, run(fleet, 900.0)


def test_every_message_decodes_to_what_was_meant(
    fleet_and_reports: tuple[Fleet, list[SimReport]],
) -> None:
    fleet, reports = fleet_and_reports
    seen_types: set[int] = set()
    for report in reports:
        assert all(nmea_checksum_ok(s) for s in report.sentences)
        assert all(s.startswith("!AIVDM,") for s in report.sentences)
        msg = pyais.decode(*report.sentences, error_if_checksum_invalid=True).asdict()
        assert msg["mmsi"] == report.mmsi
        assert msg["msg_type"] == report.msg_type
        seen_types.add(report.msg_type)
        vessel = fleet.vessel(report.mmsi)
        if report.lat is None:
            assert report.msg_type in (5, 24)
            continue
        assert report.lon is not None
        assert report.msg_type in ((1, 2, 3) if vessel.klass == "A" else (18,))
        assert abs(msg["lat"] - report.lat) < 1e-4
        assert abs(msg["lon"] - report.lon) < 1e-4
        assert msg["speed"] == pytest.approx(vessel.speed_kn, abs=0.051)
        assert msg["second"] == int(report.t) % 60
    assert {1, 5, 18, 24} <= seen_types


def test_reported_positions_are_the_truth_at_report_time(
    fleet_and_reports: tuple[Fleet, list[SimReport]],
) -> None:
    _, reports = fleet_and_reports
    # A twin fleet stepped to exactly each report's time, in irregular slices.
    twin = Fleet(40, seed=7)
    for report in [r for r in reports if r.lat is not None][::7]:
        twin.step(report.t - twin.now)
        msg = pyais.decode(*report.sentences).asdict()
        lat, lon = twin.truth(report.mmsi)
        assert abs(msg["lat"] - lat) < 1e-4
        assert abs(msg["lon"] - lon) < 1e-4


def test_static_data_round_trips(fleet_and_reports: tuple[Fleet, list[SimReport]]) -> None:
    fleet, reports = fleet_and_reports
    first_static: dict[int, float] = {}
    for report in reports:
        if report.msg_type not in (5, 24):
            continue
        first_static.setdefault(report.mmsi, report.t)
        vessel = fleet.vessel(report.mmsi)
        msg = pyais.decode(*report.sentences).asdict()
        if report.msg_type == 5:
            assert len(report.sentences) == 2
            assert msg["shipname"] == vessel.name
            assert msg["callsign"] == vessel.callsign
            assert msg["imo"] == vessel.imo
            assert msg["ship_type"] == vessel.ship_type
            assert msg["destination"] == vessel.destination
        elif msg["partno"] == 0:
            assert msg["shipname"] == vessel.name
        else:
            assert msg["callsign"] == vessel.callsign
            assert msg["ship_type"] == vessel.ship_type
    # Everyone announces themselves at start, then every six minutes.
    assert set(first_static) == {v.mmsi for v in fleet.vessels}
    assert max(first_static.values()) - 1_700_000_000.0 <= 10.0
    counts = defaultdict(int)
    for report in reports:
        if report.msg_type == 5 or (report.msg_type == 24 and report.fields["partno"] == 0):
            counts[report.mmsi] += 1
    assert set(counts.values()) == {3}  # t0 + [0, 10), +360, +720 within 900 s


def test_imo_numbers_carry_a_valid_check_digit() -> None:
    for vessel in Fleet(50, seed=3).vessels:
        if vessel.klass == "B":
            assert vessel.imo == 0
            continue
        digits = [int(c) for c in str(vessel.imo)]
        assert len(digits) == 7
        assert sum(d * w for d, w in zip(digits, range(7, 1, -1), strict=False)) % 10 == digits[6]


def test_mmsis_are_unique_nine_digit_with_realistic_mids() -> None:
    fleet = Fleet(2000, seed=1)
    mmsis = [v.mmsi for v in fleet.vessels]
    assert len(set(mmsis)) == len(mmsis)
    for mmsi in mmsis:
        assert 201_000_000 <= mmsi <= 775_999_999
    assert {v.klass for v in fleet.vessels} == {"A", "B"}


def test_position_intervals_follow_speed_and_class(
    fleet_and_reports: tuple[Fleet, list[SimReport]],
) -> None:
    fleet, reports = fleet_and_reports
    times: dict[int, list[float]] = defaultdict(list)
    for report in reports:
        if report.lat is not None:
            times[report.mmsi].append(report.t)
    for mmsi, ts in times.items():
        vessel = fleet.vessel(mmsi)
        gaps = {round(b - a, 6) for a, b in pairwise(ts)}
        if vessel.speed_kn == 0:
            allowed = {180.0}
        elif vessel.klass == "B":
            allowed = {30.0}
        else:
            allowed = {2.0, round(10 / 3, 6), 6.0, 10.0}
        assert gaps <= allowed, (vessel, gaps)
    assert sorted(r.t for r in reports) == [r.t for r in reports]


def test_deterministic_with_a_seed_and_independent_of_step_size() -> None:
    a = run(Fleet(30, seed=11), 600.0, step=1.0)
    b = run(Fleet(30, seed=11), 600.0, step=1.0)
    assert a == b
    c = run(Fleet(30, seed=11), 600.0, step=7.5)
    assert [(r.t, r.sentences) for r in a] == [(r.t, r.sentences) for r in c]
    d = run(Fleet(30, seed=12), 600.0, step=1.0)
    assert [r.sentences for r in a] != [r.sentences for r in d]


@pytest.mark.parametrize("bbox", [BBOX, (57.0, 10.0, 57.05, 10.08)])
def test_vessels_stay_in_the_box_and_move_at_their_speed(
    bbox: tuple[float, float, float, float],
) -> None:
    fleet = Fleet(60, seed=5, bbox=bbox)
    lat_min, lon_min, lat_max, lon_max = bbox
    previous = {v.mmsi: fleet.truth(v.mmsi) for v in fleet.vessels}
    dt = CONTROL_PERIOD_S / 2
    for _ in range(1440):  # two hours
        for report in fleet.step(dt):
            if report.lat is not None:
                assert lat_min <= report.lat <= lat_max
                assert report.lon is not None
                assert lon_min <= report.lon <= lon_max
        for vessel in fleet.vessels:
            now = fleet.truth(vessel.mmsi)
            assert lat_min <= now[0] <= lat_max
            assert lon_min <= now[1] <= lon_max
            moved = distance_m(previous[vessel.mmsi], now)
            expected = vessel.speed_kn * 1852 / 3600 * dt
            # The chord of a slow turn is within a fraction of a percent of the arc. dt divides
            # the control period, so no window straddles the small box's rare instant turns.
            assert moved == pytest.approx(expected, rel=0.02, abs=1e-6)
            previous[vessel.mmsi] = now


def test_vessels_turn_slowly_and_wander(fleet_and_reports: tuple[Fleet, list[SimReport]]) -> None:
    _, reports = fleet_and_reports
    courses: dict[int, list[float]] = defaultdict(list)
    for report in reports:
        if report.lat is not None and report.fields["speed"]:
            courses[report.mmsi].append(float(report.fields["course"]))
    turned = 0
    for series in courses.values():
        deltas = [abs((b - a + 180) % 360 - 180) for a, b in pairwise(series)]
        assert max(deltas, default=0) <= 30.0  # at most 1 deg/s over a 30 s Class B gap
        turned += max(deltas, default=0) > 1.0
    assert turned > 0


def test_generate_lines_tags_each_sentence() -> None:
    lines = list(generate_lines(Fleet(10, seed=2), duration_s=120, station="sim-1"))
    plain = list(generate_lines(Fleet(10, seed=2), duration_s=120, step_s=0.25, tag_time=False))
    assert len(lines) == len(plain) > 0
    for line, bare in zip(lines, plain, strict=True):
        assert bare.startswith("!AIVDM")
        assert line.startswith("\\s:sim-1,c:17000")
        assert line.endswith(bare)


def test_tag_block_checksum_is_correct() -> None:
    sentence = "!AIVDM,1,1,,A,15M67FC000G?ufbE`FepT@3n00Sa,0*5C"
    tagged = tag_block(sentence, station="rx7", t=1_700_000_123.9)
    assert tagged == "\\s:rx7,c:1700000123*" + f"{reduce(xor, b's:rx7,c:1700000123'):02X}\\" + (
        sentence
    )
    assert tag_block(sentence, station=None, t=None) == sentence
    assert tag_block(sentence, station=None, t=5).startswith("\\c:5*")
    with pytest.raises(ValueError):
        tag_block(sentence, station="a,b", t=None)
    with pytest.raises(ValueError):
        tag_block(sentence, station=None, t=math.nan)


@given(
    station=st.text(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:", min_size=1
    ),
    t=st.floats(0, 4e9),
)
def test_tag_block_checksum_property(station: str, t: float) -> None:
    tagged = tag_block("!X", station=station, t=t)
    assert tagged.endswith("\\!X")
    body, _, rest = tagged[1:].partition("*")
    assert body == f"s:{station},c:{math.floor(t)}"
    computed = 0
    for ch in body:
        computed ^= ord(ch)
    assert int(rest[:2], 16) == computed
    assert rest[2] == "\\"


_common = {
    "mmsi": st.integers(0, 2**30 - 1),
    "speed": st.integers(0, 1023).map(lambda v: v / 10),
    "accuracy": st.booleans(),
    "lon": st.floats(-180, 180),
    "lat": st.floats(-90, 90),
    "course": st.integers(0, 3600).map(lambda v: v / 10),
    "heading": st.integers(0, 511),
    "second": st.integers(0, 63),
    "raim": st.booleans(),
}


@given(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from([1, 2, 3]),
            **_common,
            "status": st.integers(0, 15),
            "turn": st.floats(-708, 708).map(lambda v: round(v, 1)),
            "maneuver": st.integers(0, 2),
            "radio": st.integers(0, 2**19 - 1),
        }
    ),
    st.sampled_from("AB"),
)
def test_fast_class_a_encoder_matches_pyais(fields: dict, channel: str) -> None:
    # pyais needs "msg_type" as well for types 2 and 3, or it encodes them as type 1.
    data = {**fields, "msg_type": fields["type"]}
    expected = encode_dict(data, talker_id="AI", sentence_type="VDM", radio_channel=channel)
    assert encode(fields, channel=channel) == expected


@given(
    st.fixed_dictionaries(
        {
            "type": st.just(18),
            **_common,
            **{
                k: st.booleans()
                for k in ("cs", "display", "dsc", "band", "msg22", "assigned", "raim")
            },
            "radio": st.integers(0, 2**20 - 1),
        }
    ),
    st.sampled_from("AB"),
)
def test_fast_class_b_encoder_matches_pyais(fields: dict, channel: str) -> None:
    # pyais needs "msg_type" as well for types 2 and 3, or it encodes them as type 1.
    data = {**fields, "msg_type": fields["type"]}
    expected = encode_dict(data, talker_id="AI", sentence_type="VDM", radio_channel=channel)
    assert encode(fields, channel=channel) == expected


def test_fleet_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Fleet(1, bbox=(58.0, 3.0, 54.0, 12.0))
    with pytest.raises(ValueError):
        Fleet(-1)
    with pytest.raises(ValueError):
        Fleet(1).step(-1.0)
    assert Fleet(0).step(10.0) == []
