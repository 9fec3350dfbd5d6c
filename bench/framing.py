"""Framing + MMSI extraction alone: `FeedDecoder.feed` over recorded and simulated feeds.

No sockets, no actors, no stores: the bytes are in memory and fed in chunks the size a TCP
read returns (64 KiB by default), so the figure is the ceiling the feed side puts on the
whole service. For each input it prints lines, AIS sentences and complete messages per
second (best of ``--repeat`` runs), and the same through `FeedStream`, which adds what a real
connection also pays per chunk: the metric updates and the call into the sink.

    .venv/bin/python bench/framing.py [--repeat 5] [--chunk 65536] [--vessels 10000]
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aisfusion.config import FeedConfig
from aisfusion.feeds.decoder import FeedDecoder
from aisfusion.feeds.stream import FeedSource, FeedStream
from aisfusion.metrics import Metrics
from aisfusion.traffic.simulator import Fleet, generate_lines

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ais"
BIG_FILES = ["aishub-2015.nmea", "dma-denmark-2013.nmea", "gfw-listener-tagblock.nmea"]
_SENTENCE = re.compile(rb"^(?:\\[^\\]*\\)?[!$][A-Z]{2}VD[MO],", re.M)


def simulated(vessels: int, seconds: float, *, tagged: bool) -> bytes:
    fleet = Fleet(vessels, seed=1, start_time=1_700_000_000.0)
    lines = generate_lines(
        fleet, duration_s=seconds, station="rx-sim" if tagged else None, tag_time=tagged
    )
    return ("\r\n".join(lines) + "\r\n").encode()


def inputs(vessels: int) -> dict[str, bytes]:
    out = {name: (DATA / name).read_bytes() for name in BIG_FILES}
    out["all recorded files"] = b"\n".join(
        (DATA / p.name).read_bytes() for p in sorted(DATA.iterdir()) if p.name != "MANIFEST.md"
    )
    out[f"simulated, {vessels} vessels, tag blocks"] = simulated(vessels, 300, tagged=True)
    out[f"simulated, {vessels} vessels, plain"] = simulated(vessels, 300, tagged=False)
    return out


def run_decoder(data: bytes, chunk: int) -> tuple[float, FeedDecoder]:
    d = FeedDecoder("bench", max_line_bytes=1024, fragment_timeout_s=10.0)
    feed = d.feed
    now = 1_700_000_000.0
    started = time.perf_counter()
    for i in range(0, len(data), chunk):
        feed(data[i : i + chunk], now)
    d.flush(now)
    return time.perf_counter() - started, d


def run_stream(data: bytes, chunk: int) -> tuple[float, FeedDecoder]:
    source = FeedSource("bench", FeedConfig(), lambda batch: None, Metrics())
    stream = FeedStream(source, None)
    feed = stream.feed
    started = time.perf_counter()
    for i in range(0, len(data), chunk):
        feed(data[i : i + chunk])
    stream.flush()
    return time.perf_counter() - started, stream.decoder


def best(
    run: Callable[[bytes, int], tuple[float, FeedDecoder]], data: bytes, chunk: int, repeat: int
) -> tuple[float, FeedDecoder]:
    results = [run(data, chunk) for _ in range(repeat)]
    return min(results, key=lambda r: r[0])


def commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # scratch files: clean
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"working tree on {sha}" if dirty else sha


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per input; best is kept")
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per feed() call")
    parser.add_argument("--vessels", type=int, default=10000, help="simulated fleet size")
    args = parser.parse_args()

    print(f"python {platform.python_version()}, commit {commit()}, chunk {args.chunk} B")
    print("building inputs …", flush=True)
    data = inputs(args.vessels)
    header = (
        f"{'input':<40} {'lines':>9} {'sentences':>9} {'messages':>9} "
        f"{'sentences/s':>12} {'messages/s':>11} {'MB/s':>6} {'+stream sent/s':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, blob in data.items():
        sentences = len(_SENTENCE.findall(blob))
        elapsed, d = best(run_decoder, blob, args.chunk, args.repeat)
        elapsed_stream, _ = best(run_stream, blob, args.chunk, args.repeat)
        print(
            f"{name:<40} {d.lines:>9,} {sentences:>9,} {d.messages:>9,} "
            f"{sentences / elapsed:>12,.0f} {d.messages / elapsed:>11,.0f} "
            f"{len(blob) / elapsed / 1e6:>6.1f} {sentences / elapsed_stream:>14,.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
