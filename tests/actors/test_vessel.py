"""Vessel entity rules: dedup before decode, time validation, sentinels, newest-wins decisions."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyais
from hypothesis import given
from hypothesis import strategies as st
from pyais.encode import encode_dict

from aisfusion.actors.vessel import Outcome, Vessel
from aisfusion.messages import Position, RawMessage, StaticReport

NOW = 1_700_000_000.0
MMSI = 244_123_456


def raw(
    data: dict[str, Any], ts: float = NOW, *, tag: bool = True, source: str = "s1"
) -> RawMessage:
    sentences = encode_dict({"mmsi": MMSI, **data})
    nmea = pyais.NMEAMessage.assemble_from_iterable(
        [pyais.NMEAMessage(s.encode()) for s in sentences]
    )
    return RawMessage(
        mmsi=MMSI,
        msg_type=data["type"],
        payload=nmea.payload,
        fill_bits=nmea.fill_bits,
        source=source,
        station=None,
        received_at=ts,
        arrival=ts,
        has_tag_time=tag,
    )


def ingest(
    vessel: Vessel, msg: RawMessage, rejects: Counter[str] | None = None
) -> tuple[Outcome, Any]:
    return vessel.ingest(
        msg,
        now=NOW,
        dedup_window_s=5.0,
        max_future_skew_s=60.0,
        max_lateness_s=3600.0,
        rejects=rejects if rejects is not None else Counter(),
    )


def pos(lat: float, lon: float, **extra: Any) -> dict[str, Any]:
    return {
        "type": 1,
        "lat": lat,
        "lon": lon,
        "speed": 10.5,
        "course": 90.0,
        "heading": 88,
        **extra,
    }


def test_position_is_decoded_and_becomes_live() -> None:
    v = Vessel(MMSI, 16)
    outcome, p = ingest(v, raw(pos(55.5, 10.25)))
    assert outcome is Outcome.LIVE
    assert isinstance(p, Position)
    assert (p.mmsi, p.msg_type, p.source) == (MMSI, 1, "s1")
    assert abs(p.lat - 55.5) < 1e-4 and abs(p.lon - 10.25) < 1e-4
    assert (p.sog, p.cog, p.heading) == (10.5, 90.0, 88)
    assert v.last is p


def test_same_payload_within_window_counts_once() -> None:
    v, rejects = Vessel(MMSI, 16), Counter[str]()
    msg = raw(pos(55.5, 10.25))
    assert ingest(v, msg, rejects)[0] is Outcome.LIVE
    again = raw(pos(55.5, 10.25), NOW + 2, source="s2")
    assert ingest(v, again, rejects)[0] is Outcome.REJECTED
    assert rejects == {"duplicate": 1}
    # Outside the dedup window the same payload is a new observation.
    later = raw(pos(55.5, 10.25), NOW + 10)
    assert ingest(v, later, rejects)[0] is Outcome.LIVE


def test_not_available_values_are_absent() -> None:
    v, rejects = Vessel(MMSI, 16), Counter[str]()
    outcome, p = ingest(v, raw(pos(55.0, 10.0, speed=102.3, course=360.0, heading=511)), rejects)
    assert outcome is Outcome.LIVE
    assert (p.sog, p.cog, p.heading) == (None, None, None)
    outcome, _ = ingest(v, raw(pos(91.0, 181.0), NOW + 1), rejects)
    assert outcome is Outcome.REJECTED
    assert rejects == {"no_position": 1}


def test_times_out_of_bounds_are_rejected() -> None:
    v, rejects = Vessel(MMSI, 16), Counter[str]()
    assert ingest(v, raw(pos(55.0, 10.0), NOW + 3600), rejects)[0] is Outcome.REJECTED
    assert ingest(v, raw(pos(55.0, 10.1), NOW - 7200), rejects)[0] is Outcome.REJECTED
    assert ingest(v, raw(pos(55.0, 10.2), float("nan")), rejects)[0] is Outcome.REJECTED
    assert rejects == {"future_time": 1, "too_late": 1, "bad_time": 1}


def test_late_position_goes_to_history_only() -> None:
    v = Vessel(MMSI, 16)
    _, newest = ingest(v, raw(pos(55.0, 10.0), NOW))
    outcome, late = ingest(v, raw(pos(54.9, 10.0), NOW - 30))
    assert outcome is Outcome.HISTORY
    assert late.ts == NOW - 30
    assert v.last is newest


def test_arrival_times_in_one_chunk_stay_distinct() -> None:
    v = Vessel(MMSI, 16)
    _, a = ingest(v, raw(pos(55.0, 10.0), NOW, tag=False))
    outcome, b = ingest(v, raw(pos(55.001, 10.0), NOW, tag=False))
    assert outcome is Outcome.LIVE
    assert b.ts > a.ts


def test_static_data_merges_types_5_and_24() -> None:
    v = Vessel(MMSI, 16)
    outcome, s = ingest(
        v,
        raw(
            {
                "type": 5,
                "shipname": "NORDIC STAR",
                "callsign": "OXAB2",
                "imo": 9123456,
                "ship_type": 70,
                "destination": "AARHUS",
            }
        ),
    )
    assert outcome is Outcome.STATIC
    assert isinstance(s, StaticReport)
    assert (s.name, s.callsign, s.imo, s.ship_type, s.destination) == (
        "NORDIC STAR",
        "OXAB2",
        9123456,
        70,
        "AARHUS",
    )
    _, s2 = ingest(v, raw({"type": 24, "partno": 0, "shipname": "NEW NAME"}, NOW + 1))
    assert (s2.name, s2.callsign, s2.destination) == ("NEW NAME", "OXAB2", "AARHUS")


def test_undecodable_payload_is_counted_not_raised() -> None:
    v, rejects = Vessel(MMSI, 16), Counter[str]()
    truncated = raw({"type": 5, "shipname": "X"}).payload[:7]  # type + MMSI only
    msg = RawMessage(MMSI, 5, truncated, 0, "s1", None, NOW, NOW, True)
    assert ingest(v, msg, rejects)[0] is Outcome.REJECTED
    other = RawMessage(MMSI, 1, b"5", 0, "s1", None, NOW, NOW, True)
    assert ingest(v, other, rejects)[0] is Outcome.REJECTED
    assert rejects == {"decode_error": 2}


@given(st.lists(st.tuples(st.floats(-3000, 50), st.booleans()), min_size=1, max_size=40))
def test_live_position_never_moves_backwards(times: list[tuple[float, bool]]) -> None:
    v = Vessel(MMSI, 16)
    live_ts: list[float] = []
    for i, (dt, tag) in enumerate(times):
        outcome, p = ingest(v, raw(pos(55.0 + i * 1e-3, 10.0), NOW + dt, tag=tag))
        if outcome is Outcome.LIVE:
            live_ts.append(p.ts)
    assert live_ts == sorted(live_ts)
    assert len(set(live_ts)) == len(live_ts)
