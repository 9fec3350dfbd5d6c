"""Vessel entity rules: dedup with witnesses, time and clock validation, sentinels, the
plausibility gate and its quarantine, scored decisions, static data confirmation."""

from __future__ import annotations

import math
import zlib
from collections import Counter
from typing import Any

import msgspec
import pyais
from hypothesis import given, settings
from hypothesis import strategies as st
from pyais.encode import encode_dict

from aisfusion.actors import fusion
from aisfusion.actors.batch import Batch
from aisfusion.actors.vessel import Vessel
from aisfusion.config import ActorsConfig, FusionConfig
from aisfusion.messages import Position, RawMessage, StaticReport

NOW = 1_700_000_000.0
MMSI = 244_123_456
ACTORS = ActorsConfig()
FUSION = FusionConfig()
M_PER_DEG = 111_195.0  # metres per degree of latitude (on the model Earth)


def raw(
    data: dict[str, Any],
    ts: float = NOW,
    *,
    tag: bool = True,
    source: str = "s1",
    arrival: float | None = None,
    mmsi: int = MMSI,
) -> RawMessage:
    """A message as the feed hands it over. The UTC second field follows `ts` unless given."""
    fields = {"mmsi": mmsi, **data}
    if fields["type"] in (1, 2, 3, 18, 19, 9) and "second" not in fields:
        fields["second"] = int(ts) % 60 if math.isfinite(ts) else 60
    sentences = encode_dict(fields)
    nmea = pyais.NMEAMessage.assemble_from_iterable(
        [pyais.NMEAMessage(s.encode()) for s in sentences]
    )
    return RawMessage(
        mmsi=mmsi,
        msg_type=data["type"],
        payload=nmea.payload,
        fill_bits=nmea.fill_bits,
        source=source,
        station=None,
        received_at=ts,
        arrival=ts if arrival is None else arrival,
        has_tag_time=tag,
    )


def heard(msg: RawMessage, source: str, dt: float = 0.0) -> RawMessage:
    """The same transmission as heard by another receiver `dt` later."""
    return msgspec.structs.replace(
        msg, source=source, received_at=msg.received_at + dt, arrival=msg.arrival + dt
    )


def batch(
    *,
    weights: dict[str, float] | None = None,
    demoted: frozenset[str] = frozenset(),
    now: float = NOW,
    **fusion_settings: Any,
) -> Batch:
    cfg = msgspec.structs.replace(FUSION, **fusion_settings)
    return Batch(now, ACTORS, cfg, weights or {}, demoted)


def feed(vessel: Vessel, msg: RawMessage, b: Batch | None = None) -> Batch:
    """Ingest one message in its own batch (or `b`); return the batch with what it produced."""
    b = b if b is not None else batch()
    vessel.ingest(msg, b)
    return b


def pos(lat: float, lon: float, **extra: Any) -> dict[str, Any]:
    return {
        "type": 1,
        "status": 0,
        "lat": lat,
        "lon": lon,
        "speed": 10.5,
        "course": 90.0,
        "heading": 88,
        **extra,
    }


def north(lat: float, metres: float) -> float:
    return lat + metres / M_PER_DEG


# -- decisions ----------------------------------------------------------------------------


def test_position_is_decoded_and_becomes_live() -> None:
    v = Vessel(MMSI, 16)
    b = feed(v, raw(pos(55.5, 10.25)))
    [p] = b.live
    assert b.history == [p]
    assert isinstance(p, Position)
    assert (p.mmsi, p.msg_type, p.source) == (MMSI, 1, "s1")
    assert abs(p.lat - 55.5) < 1e-4 and abs(p.lon - 10.25) < 1e-4
    assert (p.sog, p.cog, p.heading) == (10.5, 90.0, 88)
    assert p.nav_status == 0 and type(p.nav_status) is int  # not a pyais enum
    assert v.last is p


def test_not_available_values_are_absent() -> None:
    v = Vessel(MMSI, 16)
    b = feed(v, raw(pos(55.0, 10.0, speed=102.3, course=360.0, heading=511)))
    [p] = b.live
    assert (p.sog, p.cog, p.heading) == (None, None, None)
    b = feed(v, raw(pos(91.0, 181.0), NOW + 1))
    assert (b.history, b.live, b.rejects) == ([], [], {"no_position": 1})


def test_times_out_of_bounds_are_rejected() -> None:
    v, b = Vessel(MMSI, 16), batch()
    feed(v, raw(pos(55.0, 10.0), NOW + 3600), b)
    feed(v, raw(pos(55.0, 10.1), NOW - 7200), b)
    feed(v, raw(pos(55.0, 10.2), float("nan")), b)
    assert b.rejects == {"future_time": 1, "too_late": 1, "bad_time": 1}
    assert b.history == []
    # A receiver stamping in the future or not at all is graded down; one far behind is not.
    assert b.tallies["s1"].scored == 2


def test_late_position_goes_to_history_only() -> None:
    v = Vessel(MMSI, 16)
    [newest] = feed(v, raw(pos(55.0, 10.0), NOW)).live
    b = feed(v, raw(pos(54.999, 10.0), NOW - 30))
    [late] = b.history
    assert b.live == []
    assert late.ts == NOW - 30
    assert v.last is newest


def test_arrival_times_in_one_chunk_stay_distinct() -> None:
    v = Vessel(MMSI, 16)
    [a] = feed(v, raw(pos(55.0, 10.0), NOW, tag=False)).history
    b = feed(v, raw(pos(55.0005, 10.0), NOW, tag=False))
    [p] = b.live
    assert p.ts > a.ts


def test_distinct_observations_with_one_tag_time_stay_distinct() -> None:
    v, b = Vessel(MMSI, 16), batch()
    feed(v, raw(pos(55.0, 10.0), NOW, source="s1"), b)
    feed(v, raw(pos(55.0001, 10.0), NOW, source="s2"), b)  # another payload, same second
    assert len({p.ts for p in b.history}) == 2


def test_a_report_heard_again_past_the_dedup_window_is_not_a_second_row() -> None:
    """Another receiver's copy of a report (here re-encoded, so its payload differs; or
    arriving after the window of recent payloads rolled over) lands on the same second and
    place: the row history has, not one a microsecond later."""
    v, b = Vessel(MMSI, 2), batch()
    first = raw(pos(55.0, 10.0, radio=1), NOW, source="s1")
    feed(v, first, b)
    for k in range(1, 4):  # the window (2 payloads) rolls over
        feed(v, raw(pos(north(55.0, 30.0 * k), 10.0), NOW + 2 * k, source="s1"), b)
    again = raw(pos(55.0, 10.0, radio=2, second=int(NOW) % 60), NOW + 1, source="s2")
    assert again.payload != first.payload
    feed(v, again, b)
    assert [p.ts for p in b.history] == [NOW, NOW + 2, NOW + 4, NOW + 6]
    assert b.rejects["duplicate"] == 1


def test_decision_is_emitted_only_when_it_changes() -> None:
    v = Vessel(MMSI, 16)
    first = raw(pos(55.0, 10.0), NOW)
    assert len(feed(v, first).live) == 1
    assert feed(v, heard(first, "s2", 1)).live == []  # a witness
    assert feed(v, raw(pos(54.999, 10.0), NOW - 20)).live == []  # late
    assert len(feed(v, raw(pos(55.0002, 10.0), NOW + 10)).live) == 1


# -- dedup and witnesses -----------------------------------------------------------------


def test_same_payload_within_window_counts_once_and_witnesses_raise_support() -> None:
    v, b = Vessel(MMSI, 16), batch()
    first = raw(pos(55.5, 10.25))
    feed(v, first, b)
    feed(v, heard(first, "s2", 2), b)
    feed(v, heard(first, "s2", 3), b)  # s2 again: no new evidence
    feed(v, heard(first, "s1", 1), b)  # the first source again
    assert b.rejects == {"duplicate": 3}
    assert len(b.history) == 1
    assert v.live is not None and v.live.support == ("s1", "s2")
    assert b.tallies["s2"].outcomes == {"witness": 1, "repeat": 1}
    assert b.tallies["s1"].outcomes["repeat"] == 1
    assert b.overlap == {("s2", "s1"): 2}
    # Outside the dedup window the same payload is a new observation.
    assert len(feed(v, heard(first, "s1", 60)).history) == 1


def test_duplicates_are_recognised_by_arrival_too() -> None:
    # A receiver whose clock is 20 s off hears the same transmission: the same observation.
    v, b = Vessel(MMSI, 16), batch()
    msg = raw(pos(55.5, 10.25))
    feed(v, msg, b)
    skewed = msgspec.structs.replace(msg, source="s2", received_at=NOW + 20, arrival=NOW + 0.5)
    feed(v, skewed, b)
    assert len(b.history) == 1
    assert b.tallies["s2"].outcomes == {"clock": 1}
    assert b.tallies["s2"].skew_sum == 20


def test_a_witness_can_tip_the_decision() -> None:
    def fed(msg: RawMessage) -> list[Position]:
        return feed(v, msg, batch(corroboration_bonus=0.5)).live

    v = Vessel(MMSI, 16)
    a = raw(pos(55.0, 10.0), NOW)
    fed(a)
    fed(heard(a, "s2"))  # the live one has two witnesses
    newer = raw(pos(55.0005, 10.0), NOW + 2, source="s3")
    assert fed(newer) == []  # 1.0 < 1.5 x freshness(2 s): the old one holds
    [p] = fed(heard(newer, "s1"))
    assert p.ts == NOW + 2


# -- clocks ------------------------------------------------------------------------------


def test_clock_error_is_corrected_from_the_utc_second() -> None:
    v = Vessel(MMSI, 16)
    true_t = NOW - 20
    b = feed(v, raw(pos(55.0, 10.0, second=int(true_t) % 60), NOW, source="bad"))
    [p] = b.history
    assert p.ts == true_t
    tally = b.tallies["bad"]
    assert (tally.scored, tally.score_sum, tally.outcomes) == (1, 0.0, {"clock": 1})
    assert (tally.skew_n, tally.skew_sum) == (1, 20.0)


def test_small_skew_is_tolerated_and_measured() -> None:
    """Tolerated: no clock grade; the position keeps the time of its transmission."""
    v = Vessel(MMSI, 16)
    b = feed(v, raw(pos(55.0, 10.0, second=int(NOW - 1) % 60), NOW))
    [p] = b.history
    assert p.ts == NOW - 1
    assert b.tallies["s1"].skew_sum == 1.0
    assert "clock" not in b.tallies["s1"].outcomes


def test_arrival_times_are_not_cross_checked() -> None:
    v = Vessel(MMSI, 16)
    b = feed(v, raw(pos(55.0, 10.0, second=7), NOW + 0.5, tag=False))
    assert b.history[0].ts == NOW + 0.5
    assert b.tallies["s1"].skew_n == 0


# -- the gate ----------------------------------------------------------------------------


def test_jump_is_quarantined_until_another_source_corroborates_it() -> None:
    v = Vessel(MMSI, 16)
    feed(v, raw(pos(55.0, 10.0), NOW, source="s1"))
    far = north(55.0, 20_000)
    b = feed(v, raw(pos(far, 10.0), NOW + 10, source="s2"))
    assert (b.history, b.live, b.rejects) == ([], [], {"jump": 1})
    assert b.tallies["s2"].outcomes == {"jump": 1}
    assert b.tallies["s2"].score_sum == 0.0
    assert v.last is not None and v.last.lat == 55.0
    # Another source puts the vessel there too, a bit later: both are accepted.
    b = feed(v, raw(pos(north(far, 50), 10.0), NOW + 12, source="s3"))
    assert [round(p.ts) for p in b.history] == [NOW + 10, NOW + 12]
    assert b.corroborated == 1
    [p] = b.live
    assert abs(p.lat - north(far, 50)) < 1e-4
    assert v.live is not None and set(v.live.support) == {"s2", "s3"}


def test_jump_heard_by_another_receiver_is_corroborated_by_the_witness() -> None:
    v = Vessel(MMSI, 16)
    feed(v, raw(pos(55.0, 10.0), NOW, source="s1"))
    jump = raw(pos(north(55.0, 20_000), 10.0), NOW + 10, source="s2")
    assert feed(v, jump).live == []
    b = feed(v, heard(jump, "s3"))
    [p] = b.live
    assert b.history == [p]
    assert b.corroborated == 1


def test_the_same_source_cannot_corroborate_itself() -> None:
    v, b = Vessel(MMSI, 16), batch()
    feed(v, raw(pos(55.0, 10.0), NOW, source="good"), b)
    far = north(55.0, 20_000)
    for k in range(1, 4):
        feed(v, raw(pos(north(far, 30 * k), 10.0), NOW + 10 * k, source="bad"), b)
    assert b.rejects == {"jump": 3}
    assert len(b.live) == 1


def test_jump_from_the_sources_own_position_is_not_held_against_it() -> None:
    # One receiver and a vessel whose fix jumps: nothing says which is wrong.
    v = Vessel(MMSI, 16)
    feed(v, raw(pos(55.0, 10.0), NOW))
    b = feed(v, raw(pos(north(55.0, 20_000), 10.0), NOW + 10))
    assert b.rejects == {"jump": 1}
    assert b.tallies["s1"].scored == 0


def test_a_jump_is_held_against_a_source_only_when_two_others_vouch_for_the_track() -> None:
    # Whichever receiver is heard first seeds the track: against that one source's word the
    # newcomer may be the one that is right.
    v = Vessel(MMSI, 16)
    first = raw(pos(55.0, 10.0), NOW, source="s1")
    feed(v, first)
    b = feed(v, raw(pos(north(55.0, 20_000), 10.0), NOW + 10, source="s2"))
    assert b.rejects == {"jump": 1}
    assert (b.tallies["s2"].scored, b.tallies["s2"].outcomes["jump"]) == (0, 1)
    # Once a second receiver has heard the track's transmission, a jump is a fault.
    feed(v, heard(first, "s3", 0.5))
    b = feed(v, raw(pos(north(55.0, 20_000), 10.0), NOW + 20, source="s2"))
    assert (b.tallies["s2"].scored, b.tallies["s2"].score_sum) == (1, 0.0)


def test_a_disagreement_counts_against_a_source_only_on_a_vouched_track() -> None:
    still = {"speed": 0.0, "course": 0.0}
    off = north(55.0, 800)  # 800 m in 60 s: no jump, but far beyond the agreement tolerance

    def at(v: Vessel, lat: float, t: float, source: str) -> Batch:
        return feed(v, raw(pos(lat, 10.0, **still), NOW + t, source=source), batch(now=NOW + t))

    v = Vessel(MMSI, 16)
    at(v, 55.0, 0, "s1")
    b = at(v, off, 60, "s2")
    assert (b.tallies["s2"].scored, b.tallies["s2"].outcomes["disagreed"]) == (0, 1)
    v = Vessel(MMSI, 16)
    at(v, 55.0, 0, "s1")
    b = at(v, 55.0, 10, "s3")
    assert b.tallies["s3"].outcomes["agreed"] == 1  # a second source: the track is vouched
    b = at(v, off, 70, "s2")
    assert (b.tallies["s2"].scored, b.tallies["s2"].outcomes["disagreed"]) == (1, 1)
    assert b.tallies["s2"].score_sum < 0.5
    assert v.snapshot()["vouched"]
    # After the track went stale (three missed reports), the next report starts a new one.
    at(v, north(55.0, 5_000), 700, "s2")
    assert v.last is not None and v.last.ts == NOW + 700
    assert not v.snapshot()["vouched"]


def test_gate_is_class_aware() -> None:
    def jumps(first: dict[str, Any], then: dict[str, Any], static: int | None = None) -> bool:
        v = Vessel(MMSI, 16)
        if static is not None:
            feed(v, raw({"type": 5, "shipname": "FAST ONE", "ship_type": static}, NOW - 5))
        feed(v, raw(first, NOW))
        return feed(v, raw(then, NOW + 50, source="s2")).rejects["jump"] == 1

    metres_150kn = 150 * fusion.KNOT_MPS * 50 + FUSION.jump_allowance_m
    metres_60kn = 60 * fusion.KNOT_MPS * 50 + FUSION.jump_allowance_m
    sar = {"type": 9, "alt": 300, "speed": 150, "course": 0.0, "accuracy": False}
    far = north(55.0, metres_150kn)
    assert not jumps({**sar, "lat": 55.0, "lon": 10.0}, {**sar, "lat": far, "lon": 10.0})
    ship = pos(55.0, 10.0, speed=0.5)
    assert jumps(ship, pos(north(55.0, metres_150kn), 10.0))
    assert jumps(ship, pos(north(55.0, metres_60kn), 10.0))
    assert not jumps(ship, pos(north(55.0, metres_60kn), 10.0), static=40)  # high-speed craft


def test_gate_ends_when_the_track_is_stale() -> None:
    v = Vessel(MMSI, 16)
    feed(v, raw(pos(55.0, 10.0), NOW - 600))
    b = feed(v, raw(pos(north(55.0, 50_000), 10.0), NOW, source="s2"))
    assert len(b.live) == 1


def test_a_live_position_only_demoted_sources_vouch_for_does_not_gate() -> None:
    v = Vessel(MMSI, 16)
    feed(v, raw(pos(55.0, 10.0), NOW, source="bad"))
    b = batch(weights={"bad": 0.01, "good": 1.0}, demoted=frozenset({"bad"}))
    feed(v, raw(pos(north(55.0, 20_000), 10.0), NOW + 10, source="good"), b)
    assert len(b.live) == 1


# -- scores ------------------------------------------------------------------------------


def test_a_weak_source_does_not_replace_a_fresh_decision() -> None:
    weights = {"good": 1.0, "weak": 0.02}
    v = Vessel(MMSI, 16)
    feed(v, raw(pos(55.0, 10.0), NOW, source="good"), batch(weights=weights))
    b = feed(v, raw(pos(55.0, 10.003), NOW + 5, source="weak"), batch(weights=weights))
    assert len(b.history) == 1 and b.live == []  # accepted: history, not live
    # Only when what the good source said is old does the weak one win.
    later = batch(weights=weights, now=NOW + 200)
    b = feed(v, raw(pos(55.0, 10.05), NOW + 200, source="weak"), later)
    assert len(b.live) == 1


def test_agreement_with_other_sources_is_graded() -> None:
    v = Vessel(MMSI, 16)
    feed(v, raw(pos(55.0, 10.0, speed=0.0), NOW, source="s1"))
    b = feed(v, raw(pos(55.0, 10.0005, speed=0.0), NOW + 10, source="s2"))
    assert b.tallies["s2"].outcomes == {"agreed": 1} and b.tallies["s2"].score_sum == 1.0
    # 500 m off (plausible, not a jump), but not where the vessel is: graded down.
    b = feed(v, raw(pos(north(55.0, 500), 10.0005, speed=0.0), NOW + 20, source="s3"))
    assert b.tallies["s3"].outcomes == {"disagreed": 1}
    assert 0.0 < b.tallies["s3"].score_sum < 0.5


# -- restore -----------------------------------------------------------------------------


def test_a_restored_decision_gates_and_never_moves_back() -> None:
    v = Vessel(MMSI, 16)
    saved = Position(MMSI, NOW, 55.0, 10.0, 10.0, 90.0, 90, 0, 1, "s1", None, NOW)
    v.restore(saved)
    assert feed(v, raw(pos(54.99, 10.0), NOW - 10)).live == []
    assert feed(v, raw(pos(north(55.0, 30_000), 10.0), NOW + 10, source="s2")).live == []
    [p] = feed(v, raw(pos(55.0, 10.0015), NOW + 10)).live
    assert v.last is p


def test_a_restored_decision_knows_another_receivers_copy_of_its_transmission() -> None:
    """The dedup window dies with the vessel's previous owner (a worker killed); the payload
    CRC kept with the decision stops a second receiver's copy of it, a second later, from
    becoming a second row."""
    first = raw(pos(55.0, 10.0), NOW)
    [p] = feed(Vessel(MMSI, 16), first).live
    assert p.payload_crc == zlib.crc32(first.payload)
    copy = heard(first, "s2", dt=1.0)
    v = Vessel(MMSI, 16)
    v.restore(p)
    b = feed(v, copy)
    assert b.history == [] and b.rejects["duplicate"] == 1
    assert v.vouched and "s2" in (v.live.support if v.live else ())  # it witnessed
    # Its own receiver's copy goes on to history (redelivered: it may not be stored yet).
    assert [h.ts for h in feed(v, first).history] == [p.ts]
    # Without the CRC (a record written before it was kept) the copy is a new observation,
    # yet timed by its transmission: the first copy's row again, which history stores once.
    old = Vessel(MMSI, 16)
    old.restore(msgspec.structs.replace(p, payload_crc=0))
    b = feed(old, copy)
    assert b.rejects["duplicate"] == 0 and [h.ts for h in b.history] == [p.ts]
    # Past the dedup window the same payload is a new transmission (a vessel at rest).
    assert [h.ts for h in feed(v, heard(first, "s2", dt=60.0)).history] == [NOW + 60]


# -- static and voyage data ---------------------------------------------------------------


def five(**fields: Any) -> dict[str, Any]:
    return {"type": 5, "shipname": "NORDIC STAR", "callsign": "OXAB2", "imo": 9123456, **fields}


def test_static_data_merges_types_5_and_24() -> None:
    v = Vessel(MMSI, 16)
    b = feed(v, raw(five(ship_type=70, destination="AARHUS")))
    assert b.statics == 1
    s = v.static
    assert isinstance(s, StaticReport)
    assert (s.name, s.callsign, s.imo, s.ship_type, s.destination) == (
        "NORDIC STAR",
        "OXAB2",
        9123456,
        70,
        "AARHUS",
    )
    feed(v, raw({"type": 24, "partno": 1, "ship_type": 70, "to_bow": 100, "to_stern": 20}, NOW + 1))
    assert v.static is not None and (v.static.to_bow, v.static.destination) == (100, "AARHUS")


def test_changed_identity_is_accepted_once_confirmed() -> None:
    v = Vessel(MMSI, 16)
    feed(v, raw(five(destination="AARHUS")))
    feed(v, raw(five(shipname="NEW NAME", destination="KIEL"), NOW + 1))
    assert v.static is not None
    assert (v.static.name, v.static.destination) == ("NORDIC STAR", "KIEL")  # voyage: at once
    feed(v, raw(five(shipname="NEW NAME"), NOW + 2))
    assert v.static.name == "NEW NAME"
    # A report of the current value in between cancels a change.
    feed(v, raw(five(shipname="OTHER", callsign="X1"), NOW + 3))
    feed(v, raw(five(shipname="NEW NAME", callsign="X1"), NOW + 4))
    feed(v, raw(five(shipname="OTHER"), NOW + 5))
    assert (v.static.name, v.static.callsign) == ("NEW NAME", "X1")


def test_type_19_carries_a_position_and_static_data() -> None:
    v = Vessel(MMSI, 16)
    msg = {"type": 19, "lat": 55.0, "lon": 10.0, "speed": 5.0, "course": 10.0, "heading": 10}
    b = feed(v, raw({**msg, "shipname": "SMALL ONE", "ship_type": 37}))
    assert len(b.live) == 1 and b.statics == 1
    assert v.static is not None and (v.static.name, v.static.ship_type) == ("SMALL ONE", 37)


def test_undecodable_payload_is_counted_not_raised() -> None:
    v, b = Vessel(MMSI, 16), batch()
    truncated = raw({"type": 5, "shipname": "X"}).payload[:7]  # type + MMSI only
    feed(v, RawMessage(MMSI, 5, truncated, 0, "s1", None, NOW, NOW, True), b)
    feed(v, RawMessage(MMSI, 1, b"5", 0, "s1", None, NOW, NOW, True), b)
    assert b.rejects == {"decode_error": 2}


# -- properties --------------------------------------------------------------------------

SOURCES = ("a", "b", "c", "bad")

# One step: which source, seconds after the previous step, metres moved north (a few are huge:
# jumps), receive-time error, and whether the same transmission is heard again by another.
steps = st.lists(
    st.tuples(
        st.sampled_from(SOURCES),
        st.floats(0.0, 40.0),
        st.one_of(st.floats(-300.0, 300.0), st.floats(-60_000.0, 60_000.0)),
        st.one_of(st.just(0.0), st.floats(-90.0, 30.0)),
        st.sampled_from([None, *SOURCES]),
    ),
    min_size=1,
    max_size=40,
)


def run_steps(
    script: list[tuple[str, float, float, float, str | None]], demoted: frozenset[str]
) -> list[tuple[Position, tuple[str, ...], bool]]:
    """Play a script; return each live decision with its support and whether it had been
    rejected as a jump when it first came."""
    v = Vessel(MMSI, 8)
    weights = {"a": 1.0, "b": 0.9, "c": 0.5, "bad": 0.05}
    t, lat = NOW - 2000, 55.0
    rejected: list[Any] = []
    decisions = []
    for source, dt, moved, skew, witness in script:
        t += dt
        lat = min(80.0, max(-80.0, north(lat, moved)))
        msg = raw(pos(lat, 10.0, speed=5.0, second=int(t) % 60), t + skew, source=source)
        for m in [msg] + ([heard(msg, witness)] if witness else []):
            b = batch(weights=weights, demoted=demoted)
            v.ingest(m, b)
            if b.rejects["jump"]:
                rejected.append(v.quarantine[-1])
            for p in b.live:
                assert v.live is not None and v.live.position is p
                decisions.append((p, v.live.support, any(v.live is r for r in rejected)))
    return decisions


@settings(max_examples=150, deadline=None)
@given(steps, st.sampled_from([frozenset(), frozenset({"bad"})]))
def test_no_decision_ever_moves_back_in_time(script: Any, demoted: frozenset[str]) -> None:
    times = [p.ts for p, *_ in run_steps(script, demoted)]
    assert times == sorted(times)
    assert len(set(times)) == len(times)


@settings(max_examples=150, deadline=None)
@given(steps, st.sampled_from([frozenset(), frozenset({"bad"})]))
def test_a_rejected_jump_never_becomes_live_without_corroboration(
    script: Any, demoted: frozenset[str]
) -> None:
    for p, support, was_rejected in run_steps(script, demoted):
        if was_rejected:
            assert len(support) >= 2, (p, support)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SOURCES), st.floats(0.0, 4.9)), min_size=1, max_size=12))
def test_a_duplicate_never_counts_twice(hearings: list[tuple[str, float]]) -> None:
    v, b = Vessel(MMSI, 16), batch()
    msg = raw(pos(55.0, 10.0))
    for source, delay in hearings:
        feed(v, msgspec.structs.replace(heard(msg, source), arrival=NOW + delay), b)
    assert len(b.history) == 1
    assert v.live is not None
    assert sorted(v.live.support) == sorted({s for s, _ in hearings})
    assert b.rejects["duplicate"] == len(hearings) - 1
    graded = Counter(s for s, t in b.tallies.items() for _ in range(t.outcomes["witness"]))
    assert all(n <= 1 for n in graded.values())
