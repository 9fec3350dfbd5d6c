"""The pure fusion rules: geometry, the class-aware gate, clocks, scores and agreement."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aisfusion.actors import fusion
from aisfusion.config import FusionConfig

CFG = FusionConfig()
lats = st.floats(-80.0, 80.0)
lons = st.floats(-180.0, 180.0)


@given(lats, lons, lats, lons)
def test_distance_is_a_symmetric_non_negative_measure(
    lat1: float, lon1: float, lat2: float, lon2: float
) -> None:
    d = fusion.distance_m(lat1, lon1, lat2, lon2)
    assert d >= 0.0
    assert d == pytest.approx(fusion.distance_m(lat2, lon2, lat1, lon1), abs=1e-6)
    assert d <= math.pi * fusion.EARTH_RADIUS_M + 1e-6
    assert fusion.distance_m(lat1, lon1, lat1, lon1) == 0.0


def test_distance_of_known_points() -> None:
    # One minute of latitude is one nautical mile (to within the Earth model's flattening).
    assert fusion.distance_m(55.0, 10.0, 55.0 + 1 / 60, 10.0) == pytest.approx(1852, rel=0.002)


@given(
    st.floats(-70.0, 70.0),
    lons,
    st.floats(0.1, 60.0),
    st.floats(0.0, 359.9),
    st.floats(-600.0, 600.0),
)
def test_dead_reckoning_covers_speed_times_time(
    lat: float, lon: float, sog: float, cog: float, dt: float
) -> None:
    lat2, lon2 = fusion.dead_reckon(lat, lon, sog, cog, dt)
    expected = sog * fusion.KNOT_MPS * abs(dt)
    assert fusion.distance_m(lat, lon, lat2, lon2) == pytest.approx(expected, rel=0.01, abs=0.5)
    if dt == 0.0:
        assert (lat2, lon2) == (lat, lon)  # no time, no move: the position as given (lon 180 too)
    else:
        assert -180.0 <= lon2 < 180.0


def test_dead_reckoning_without_speed_or_course_stays_put() -> None:
    assert fusion.dead_reckon(55.0, 10.0, None, 90.0, 60) == (55.0, 10.0)
    assert fusion.dead_reckon(55.0, 10.0, 12.0, None, 60) == (55.0, 10.0)
    assert fusion.dead_reckon(55.0, 10.0, 0.0, 90.0, 60) == (55.0, 10.0)


def test_implied_speed_forgives_the_allowance_and_sub_second_gaps() -> None:
    assert fusion.implied_speed_kn(200.0, 10.0, 250.0) == 0.0
    assert fusion.implied_speed_kn(1852.0 + 250.0, 3600.0, 250.0) == pytest.approx(1.0)
    assert fusion.implied_speed_kn(1000.0, 0.0, 0.0) == fusion.implied_speed_kn(1000.0, 1.0, 0.0)
    assert fusion.implied_speed_kn(1000.0, -10.0, 0.0) == fusion.implied_speed_kn(1000.0, 10.0, 0.0)


@given(st.floats(1.0, 1000.0), st.floats(0.0, 200.0))
def test_sar_aircraft_are_never_gated_below_102_2_knots(setting: float, sog: float) -> None:
    # Settings are range-checked when loaded; the rule holds even for one built by hand.
    cfg = msgspec.structs.replace(CFG, sar_max_speed_kn=setting)
    assert fusion.speed_limit_kn(9, None, sog, cfg) >= fusion.SAR_MIN_LIMIT_KN
    assert fusion.speed_limit_kn(9, None, None, cfg) >= fusion.SAR_MIN_LIMIT_KN


def test_speed_limit_by_class() -> None:
    assert fusion.speed_limit_kn(1, 70, None, CFG) == CFG.ship_max_speed_kn
    assert fusion.speed_limit_kn(18, None, None, CFG) == CFG.ship_max_speed_kn
    assert fusion.speed_limit_kn(1, 40, None, CFG) == CFG.hsc_max_speed_kn
    assert fusion.speed_limit_kn(1, 29, None, CFG) == CFG.hsc_max_speed_kn
    assert fusion.speed_limit_kn(9, None, None, CFG) == CFG.sar_max_speed_kn
    # A vessel that itself reports more than its class limit is believed (with margin).
    assert fusion.speed_limit_kn(1, 70, 60.0, CFG) == 90.0


@pytest.mark.parametrize(
    ("msg_type", "sog", "status", "interval"),
    [
        (1, 0.0, 1, 180.0),  # at anchor
        (1, 2.0, 5, 180.0),  # moored, drifting
        (1, None, 0, 180.0),  # speed unknown: assume the slowest
        (1, 10.0, 0, 10.0),
        (3, 18.0, 0, 6.0),
        (1, 30.0, 0, 2.0),
        (18, 1.0, None, 180.0),
        (18, 8.0, None, 30.0),
        (9, 150.0, None, 10.0),
        (27, 10.0, 0, 180.0),
    ],
)
def test_reporting_intervals(
    msg_type: int, sog: float | None, status: int | None, interval: float
) -> None:
    assert fusion.report_interval_s(msg_type, sog, status) == interval


def test_track_timeout_is_at_least_three_intervals() -> None:
    assert fusion.track_timeout_s(10.0, CFG) == CFG.track_timeout_s
    assert fusion.track_timeout_s(180.0, CFG) == 540.0


@given(st.floats(0.0, 2e9), st.integers(0, 63))
def test_clock_offset_is_wrapped_or_absent(ts: float, second: int) -> None:
    offset = fusion.clock_offset_s(ts, second)
    if second >= 60:
        assert offset is None
        return
    assert offset is not None
    assert -30.0 <= offset < 30.0
    assert (ts - offset - second) % 60 == pytest.approx(0.0, abs=1e-6) or (
        ts - offset - second
    ) % 60 == pytest.approx(60.0, abs=1e-6)


def test_clock_offset_examples() -> None:
    minute = 1_699_999_980.0  # a whole UTC minute
    assert fusion.clock_offset_s(minute + 12, 12) == 0.0
    assert fusion.clock_offset_s(minute + 12.5, 12) == 0.5
    assert fusion.clock_offset_s(minute + 42, 12) == -30.0  # the wrap point
    assert fusion.clock_offset_s(minute + 5, 55) == 10.0  # across the minute
    assert fusion.clock_offset_s(float("nan"), 5) is None


@given(st.floats(0.0, 1e7), st.floats(0.0, 1e4))
def test_agreement_is_a_grade_in_0_1_falling_with_the_residual(residual: float, dt: float) -> None:
    a = fusion.agreement(residual, dt, CFG)
    assert 0.0 <= a <= 1.0
    assert fusion.agreement(residual * 2 + 1, dt, CFG) <= a
    assert fusion.agreement(CFG.agree_m, dt, CFG) == 1.0


@given(st.floats(0.0, 10.0), st.integers(1, 10), st.floats(0.0, 1e5))
def test_score_rises_with_weight_and_witnesses_and_falls_with_age(
    weight: float, witnesses: int, age: float
) -> None:
    s = fusion.score(weight, witnesses, age, CFG)
    assert s == pytest.approx(
        weight
        * fusion.freshness(age, CFG.freshness_s)
        * fusion.corroboration(witnesses, CFG.corroboration_bonus)
    )
    assert fusion.score(weight, witnesses + 1, age, CFG) >= s
    assert fusion.score(weight, witnesses, age + 1.0, CFG) <= s
    assert fusion.score(weight + 1.0, witnesses, age, CFG) >= s
    assert fusion.score(weight, witnesses, -5.0, CFG) == fusion.score(weight, witnesses, 0.0, CFG)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(1e-6, 1.0), st.integers(0, 10_000))
def test_ewma_stays_between_the_old_value_and_the_mean(
    value: float, mean: float, alpha: float, n: int
) -> None:
    out = fusion.ewma(value, mean, alpha, n)
    assert min(value, mean) - 1e-12 <= out <= max(value, mean) + 1e-12


def test_ewma_of_n_equal_samples_is_n_single_steps() -> None:
    q = 0.8
    for _ in range(7):
        q = fusion.ewma(q, 0.0, 0.05, 1)
    assert fusion.ewma(0.8, 0.0, 0.05, 7) == pytest.approx(q)
