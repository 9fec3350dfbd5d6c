"""Simulated receivers: loss, delay, duplicates, noise, clocks and faults, against the truth."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter

import pyais
import pytest

from aisfusion.actors.fusion import distance_m
from aisfusion.traffic.receivers import Delivery, Network, Receiver, receivers
from aisfusion.traffic.simulator import Fleet

START = 1_700_000_000.0


def run(
    rx: list[Receiver], seconds: float = 600.0, vessels: int = 30, **kw: object
) -> list[Delivery]:
    net = Network(Fleet(vessels, seed=5, start_time=START), rx, seed=5, **kw)  # type: ignore[arg-type]
    out: list[Delivery] = []
    for _ in range(int(seconds)):
        out.extend(net.step(1.0))
    return out + net.drain()


def tag(line: str) -> dict[str, str]:
    block = line[1:].partition("\\")[0].split("*")[0]
    return dict(part.split(":", 1) for part in block.split(","))


def decoded(d: Delivery) -> dict[str, object]:
    sentences = [line.rpartition("\\")[2] for line in d.lines]
    return pyais.decode(*sentences, error_if_checksum_invalid=True).asdict()


def test_honest_receivers_deliver_the_truth_tagged_with_their_clock() -> None:
    rx = [Receiver("a"), Receiver("b", skew_s=2.5, delay_s=1.0)]
    out = run(rx, 300)
    assert {d.station for d in out} == {"a", "b"}
    for d in out:
        t = tag(d.lines[0])
        assert t["s"] == d.station
        assert int(t["c"]) == math.floor(d.report.t + (2.5 if d.station == "b" else 0.0))
        assert d.arrival >= d.report.t
        msg = decoded(d)
        assert msg["mmsi"] == d.report.mmsi
        if d.report.lat is not None:
            assert not d.tampered
            assert (d.lat, d.lon) == (d.report.lat, d.report.lon)
            assert abs(msg["lat"] - d.report.lat) < 1e-4  # type: ignore[operator]
    arrivals = [d.arrival for d in out]
    assert arrivals == sorted(arrivals)
    # Without loss, both hear everything: the same transmissions, twice.
    by_station = Counter(d.station for d in out)
    assert by_station["a"] == by_station["b"]


def test_loss_delay_and_duplicates_follow_the_settings() -> None:
    out = run([Receiver("all"), Receiver("x", loss=0.3, delay_s=4.0, duplicates=0.1)], 900)
    heard = Counter(d.station for d in out)
    x = [d for d in out if d.station == "x"]
    unique = {(d.report.t, d.report.mmsi, d.report.msg_type, tuple(d.lines)) for d in x}
    assert len(x) - len(unique) == pytest.approx(0.1 * len(unique), rel=0.35)
    assert len(unique) / heard["all"] == pytest.approx(0.7, abs=0.05)
    delays = [d.arrival - d.report.t for d in x]
    assert statistics.fmean(delays) == pytest.approx(4.0, rel=0.2)


def test_noise_is_added_to_positions() -> None:
    out = [d for d in run([Receiver("n", noise_m=15.0)], 300) if d.lat is not None]
    errors = [distance_m(d.lat, d.lon, d.report.lat, d.report.lon) for d in out]  # type: ignore[arg-type]
    # The distance of a 2-D normal error has mean sigma * sqrt(pi / 2).
    assert statistics.fmean(errors) == pytest.approx(15.0 * math.sqrt(math.pi / 2), rel=0.15)
    for d in out[:50]:
        assert abs(decoded(d)["lat"] - d.lat) < 1e-4  # type: ignore[operator]


def test_faulty_receivers() -> None:
    out = run(
        [
            Receiver("off", fault="offset", fault_offset_m=1500.0),
            Receiver("jmp", fault="jumps", fault_jump_rate=0.5),
            Receiver("clk", fault="clock", fault_skew_s=20.0),
        ],
        300,
    )
    positions = [d for d in out if d.lat is not None]
    off = [d for d in positions if d.station == "off"]
    assert all(d.tampered for d in off)
    for d in off:
        assert distance_m(d.lat, d.lon, d.report.lat, d.report.lon) == pytest.approx(1500, rel=0.01)  # type: ignore[arg-type]
    jumps = [d for d in positions if d.station == "jmp"]
    tampered = [d for d in jumps if d.tampered]
    assert len(tampered) / len(jumps) == pytest.approx(0.5, abs=0.08)
    for d in tampered:
        assert 4_900 < distance_m(d.lat, d.lon, d.report.lat, d.report.lon) < 50_100  # type: ignore[arg-type]
    for d in (d for d in out if d.station == "clk"):
        assert not d.tampered
        assert int(tag(d.lines[0])["c"]) == math.floor(d.report.t + 20.0)
        if d.report.lat is not None:
            assert decoded(d)["second"] == int(d.report.t) % 60  # the vessel's own clock


def test_deterministic_and_independent_of_step_size() -> None:
    rx = receivers(3, fault="jumps", noise_m=5.0)

    def lines(step: float) -> list[tuple[float, str]]:
        net = Network(Fleet(20, seed=9, start_time=START), rx, seed=9)
        out = []
        for _ in range(int(300 / step)):
            out.extend(net.step(step))
        return [(d.arrival, line) for d in out + net.drain() for line in d.lines]

    assert lines(1.0) == lines(0.25) == lines(5.0)


def test_truth_is_written_for_every_position_transmitted() -> None:
    buf = io.StringIO()
    out = run([Receiver("a", loss=0.5)], 120, truth=buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert list(rows[0]) == ["t", "mmsi", "lat", "lon", "sog", "cog"]
    heard = {(round(d.report.t, 3), d.report.mmsi) for d in out if d.lat is not None}
    written = {(round(float(r["t"]), 3), int(r["mmsi"])) for r in rows}
    assert heard < written  # everything, heard or not
    for d in out:
        if d.lat is not None:
            row = next(
                r
                for r in rows
                if int(r["mmsi"]) == d.report.mmsi
                and float(r["t"]) == pytest.approx(d.report.t, abs=1e-3)
            )
            assert float(row["lat"]) == pytest.approx(d.report.lat, abs=1e-6)
            break


def test_receiver_sets_and_validation() -> None:
    rx = receivers(3, fault="offset", loss=0.2, skew_s=1.0, prefix="sim")
    assert [r.name for r in rx] == ["sim-1", "sim-2", "sim-3", "sim-bad"]
    assert [r.fault for r in rx] == [None, None, None, "offset"]
    assert [r.skew_s for r in rx[:3]] == [1.0, -1.0, 1.0]
    assert receivers(0) == []
    with pytest.raises(ValueError, match="loss"):
        Receiver("x", loss=1.5)
    with pytest.raises(ValueError, match="station"):
        Receiver("a,b")
    with pytest.raises(ValueError, match="fault"):
        Receiver("x", fault="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unique"):
        Network(Fleet(1), [Receiver("a"), Receiver("a")])
