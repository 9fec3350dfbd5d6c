"""Fusion accuracy against ground truth, through the real service on embedded servers.

A simulated fleet is heard by several simulated receivers (`aisfusion.traffic.receivers`):
honest ones with their own loss, delay, duplicates, clock skew and (for one, an aggregator)
position noise, a satellite-like one with minutes of delay, and one misbehaving receiver
(`--modes`: offset positions, a wrong clock, or spoofed jumps). The feed is cut into segments of
`--every` simulated seconds; each segment is sent over TCP (in arrival order, at full speed) to
a service started in this process, drained, and then every vessel's live record in Redis is
compared with where the vessel truly is at the end of the segment. On the same feed, the bench
computes:

- "latest message wins": the position of the last message to arrive for each vessel;
- "newest timestamp wins": the position with the newest tag-block time (the rule aisfusion had
  before fusion);
- "ideal": the true position at the newest transmission any receiver delivered (the floor for
  a fusion that does not extrapolate).

It prints the median and 95th percentile of each error in metres, and when the source-quality
actor demoted the bad receiver (simulated seconds after the start, and graded outcomes).

    .venv/bin/python bench/fusion_accuracy.py [--vessels 400] [--duration 1200] [--every 60]
        [--modes offset,clock,jumps] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import uvloop
from benchservice import embedded_service, wait_read

from aisfusion.actors.fusion import distance_m
from aisfusion.traffic.receivers import Delivery, Fault, Network, Receiver
from aisfusion.traffic.simulator import Fleet


def bench_receivers(mode: str) -> list[Receiver]:
    return [
        Receiver("rx-1", loss=0.10, delay_s=0.3, duplicates=0.02),
        Receiver("rx-2", loss=0.30, delay_s=1.0, duplicates=0.02, skew_s=1.0),
        Receiver("rx-3", loss=0.25, delay_s=2.0, noise_m=15.0),  # an aggregator: re-encodes
        Receiver("sat", loss=0.60, delay_s=90.0),  # satellite: minutes late
        Receiver("rx-bad", loss=0.20, delay_s=0.5, duplicates=0.02, fault=cast(Fault, mode)),
    ]


@dataclass
class Segment:
    end: float
    deliveries: list[Delivery]
    truth: dict[int, tuple[float, float]]


@dataclass
class Baselines:
    """Per-vessel positions of the simple rules, fed in arrival order."""

    latest: dict[int, tuple[float, float]] = field(default_factory=dict)
    newest: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # t, lat, lon
    ideal: dict[int, tuple[float, float, float]] = field(default_factory=dict)

    def feed(self, d: Delivery) -> None:
        if d.lat is None or d.lon is None:
            return
        mmsi = d.report.mmsi
        self.latest[mmsi] = (d.lat, d.lon)
        old = self.newest.get(mmsi)
        if old is None or d.t_tag > old[0]:
            self.newest[mmsi] = (d.t_tag, d.lat, d.lon)
        best = self.ideal.get(mmsi)
        lat, lon = d.report.lat, d.report.lon
        if lat is not None and lon is not None and (best is None or d.report.t > best[0]):
            self.ideal[mmsi] = (d.report.t, lat, lon)


def simulate(args: argparse.Namespace, mode: str) -> tuple[Fleet, list[Segment]]:
    start = time.time() - args.duration - 120.0
    fleet = Fleet(args.vessels, seed=args.seed, start_time=start)
    net = Network(fleet, bench_receivers(mode), seed=args.seed)
    segments = []
    steps_per_segment = math.ceil(args.every)
    for k in range(1, math.ceil(args.duration / args.every) + 1):
        deliveries: list[Delivery] = []
        end = start + k * args.every
        for _ in range(steps_per_segment):
            deliveries.extend(net.step((end - fleet.now) / max(1, steps_per_segment)))
        deliveries.extend(net.step(end - fleet.now))
        truth = {v.mmsi: fleet.truth(v.mmsi) for v in fleet.vessels}
        segments.append(Segment(end, deliveries, truth))
    return fleet, segments


def pct(values: list[float], q: int) -> float:
    """The `q`th percentile (interpolated between samples); NaN without samples."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    t = time.perf_counter()
    _, segments = simulate(args, mode)
    start = segments[0].end - args.every
    lines = sum(len(d.lines) for s in segments for d in s.deliveries)
    print(f"\n== mode {mode}: {args.vessels} vessels, {args.duration:.0f} s simulated, ", end="")
    print(f"{lines} lines (generated in {time.perf_counter() - t:.1f} s)")
    errors: dict[str, list[float]] = {"fused": [], "latest": [], "newest": [], "ideal": []}
    base = Baselines()
    demoted: dict[str, Any] | None = None
    bad_source = ""
    async with embedded_service("aisf-fusion-") as service:
        config = service.config
        source = config.feed.source
        bad_source = f"{source}/rx-bad"
        _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
        sent = 0
        for seg in segments:
            payload = "".join(line + "\r\n" for d in seg.deliveries for line in d.lines)
            writer.write(payload.encode())
            await writer.drain()
            sent += sum(len(d.lines) for d in seg.deliveries)
            await wait_read(service, sent)
            await service.drain()
            for d in seg.deliveries:
                base.feed(d)
            mmsis = sorted(seg.truth)
            redis = service.redis
            assert redis is not None
            live = await asyncio.wrap_future(service.bridge.submit(redis.live_records(mmsis)))
            for mmsi, (tlat, tlon) in seg.truth.items():
                record = live.get(mmsi)
                if record is None or mmsi not in base.latest:
                    continue
                errors["fused"].append(
                    distance_m(float(record["lat"]), float(record["lon"]), tlat, tlon)
                )
                errors["latest"].append(distance_m(*base.latest[mmsi], tlat, tlon))
                errors["newest"].append(distance_m(*base.newest[mmsi][1:], tlat, tlon))
                errors["ideal"].append(distance_m(*base.ideal[mmsi][1:], tlat, tlon))
            if demoted is None:
                status = await asyncio.get_running_loop().run_in_executor(None, service.status)
                for row in status["sources"]:
                    if row["source"] == bad_source and row["demoted"]:
                        demoted = row
        writer.close()
        await writer.wait_closed()
        status = await asyncio.get_running_loop().run_in_executor(None, service.status)
        table = status["sources"]
    print(f"{'rule':24s} {'median m':>10s} {'p95 m':>10s} {'mean m':>10s}  samples")
    names = {
        "fused": "aisfusion (fused)",
        "latest": "latest message wins",
        "newest": "newest timestamp wins",
        "ideal": "ideal (freshest true)",
    }
    result: dict[str, Any] = {"mode": mode}
    for key, name in names.items():
        v = errors[key]
        med, p95 = statistics.median(v), pct(v, 95)
        result[key] = (med, p95)
        print(f"{name:24s} {med:10.1f} {p95:10.1f} {statistics.fmean(v):10.1f}  {len(v)}")
    print("sources (quality, weight, demoted, clock skew, graded outcomes):")
    for row in table:
        print(
            f"  {row['source']:12s} q={row['quality']:.3f} w={row['weight']:.3f} "
            f"demoted={row['demoted']!s:5s} skew={row['clock_skew_s']} graded={row['graded']}"
        )
    if demoted is not None and demoted["demoted_at"] is not None:
        after = demoted["demoted_at"] - start
        print(
            f"bad source {bad_source} demoted after {after:.0f} s of simulated traffic "
            f"({demoted['demoted_after']} graded outcomes)"
        )
        result["demoted_after_s"] = after
        result["demoted_after_outcomes"] = demoted["demoted_after"]
    else:
        print(f"bad source {bad_source} NOT demoted")
    return result


async def main(args: argparse.Namespace) -> None:
    results = [await run_mode(args, mode) for mode in args.modes.split(",")]
    print("\nsummary (metres; median / p95):")
    print(f"{'mode':8s} {'fused':>16s} {'latest wins':>16s} {'newest ts wins':>16s} demoted")
    for r in results:
        cells = [f"{r[k][0]:7.0f} / {r[k][1]:6.0f}" for k in ("fused", "latest", "newest")]
        when = (
            f"{r['demoted_after_s']:.0f} s, {r['demoted_after_outcomes']} outcomes"
            if "demoted_after_s" in r
            else "no"
        )
        print(f"{r['mode']:8s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>16s} {when}")
    if any(r["fused"][1] >= r["latest"][1] for r in results):
        print("fused p95 error is not below latest-wins", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vessels", type=int, default=400)
    parser.add_argument("--duration", type=float, default=1200.0, help="simulated seconds")
    parser.add_argument("--every", type=float, default=60.0, help="evaluation interval, s")
    parser.add_argument("--modes", default="offset,clock,jumps")
    parser.add_argument("--seed", type=int, default=7)
    uvloop.run(main(parser.parse_args()))
