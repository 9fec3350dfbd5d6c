"""`aisfusion import` end to end: messages/s importing archives, beside AISdb's `decode_msgs`.

Each input is imported by the real command (``aisfusion import FILE --json``) into fresh
embedded servers (PostgreSQL and Valkey in a temporary directory, started by the command
itself), once per ``--repeat``; the figures are the summary's own (``seconds``: reading,
deciding and storing, without starting the servers) and the whole command's wall time
(interpreter, server start and stop included). The inputs are the recorded files of
``../shared/data/ais`` that carry tag-block times, and a generated archive: ``--lines`` lines
(2,000,000 by default; 100,000 with ``--quick``) of the simulator's fleet heard by one receiver,
every line tag-blocked (``\\s:rx-sim,c:<unix>*hh\\!AIVDM,…``), gzip-compressed. Then AISdb
(`import_aisdb.py`: a scratch venv outside the repository) decodes the same files into SQLite.

*Messages* are counted the same way for both tools, by `import_aisdb.count_input`: the AIS
sentences that complete a message. The ratio is aisfusion's messages/s over AISdb's.

    .venv/bin/python bench/import.py [--quick | --lines N] [--vessels 10000] [--repeat 1]
                                     [--archive PATH] [--no-aisdb]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import import_aisdb
from framing import commit
from import_aisdb import AisdbResult, Counts, count_input

from aisfusion.storage.embedded import discard_moved_data
from aisfusion.traffic.simulator import Fleet, generate_lines

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / ".venv" / "bin" / "aisfusion"
START = 1_700_000_000.0  # 2023-11-14: the generated archive's first tag-block time


@dataclass
class ImportRun:
    """One `aisfusion import --json` of one input into fresh servers."""

    path: Path
    counts: Counts
    wall_s: float
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)
    stderr: str = ""

    @property
    def seconds(self) -> float | None:
        value = self.summary.get("seconds")
        return float(value) if value is not None else None

    @property
    def messages_per_s(self) -> float | None:
        s = self.seconds
        return self.counts.messages / s if s and self.exit_code == 0 else None


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return f"{os.cpu_count()} cores ({cpu}), {mem_kb / 2**20:.0f} GiB"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def archive_lines(vessels: int, lines: int, seed: int) -> Iterator[str]:
    """The first `lines` lines the fleet transmits, ending on a complete message."""
    fleet = Fleet(vessels, seed=seed, start_time=START)
    feed = generate_lines(fleet, duration_s=1e9, station="rx-sim")
    yield from itertools.islice(feed, lines)
    for line in feed:  # finish a multi-fragment message cut at the limit
        if line.rpartition("\\")[2].split(",", 3)[2] == "1":
            break
        yield line


def generate_archive(path: Path, *, lines: int, vessels: int, seed: int = 1) -> None:
    started = time.perf_counter()
    with gzip.open(path, "wt", encoding="ascii", newline="\n", compresslevel=6) as out:
        batch: list[str] = []
        for line in archive_lines(vessels, lines, seed):
            batch.append(line)
            if len(batch) == 50_000:
                out.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            out.write("\n".join(batch) + "\n")
    print(
        f"generated {path.name}: {path.stat().st_size / 1e6:.1f} MB gzip, "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )


def run_import(path: Path, counts: Counts, data: Path) -> ImportRun:
    """`data` is the run's own embedded data directory, removed afterwards."""
    cmd = [
        str(CLI),
        "import",
        str(path),
        "--json",
        "--config",
        str(ROOT / "config.toml"),
        "--set",
        f"embedded.data_dir={data}",
        "--set",
        f"spool.dir={data / 'spool'}",
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.perf_counter() - started
    discard_moved_data(data)
    shutil.rmtree(data, ignore_errors=True)
    run = ImportRun(path, counts, wall, proc.returncode, stderr=proc.stderr.strip())
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            run.summary = json.loads(line)
            break
    return run


def rate(x: float | None) -> str:
    return f"{x:,.0f}" if x is not None else "-"


def secs(x: float | None) -> str:
    return f"{x:.2f}" if x is not None else "-"


def print_imports(runs: list[ImportRun]) -> None:
    head = (
        f"{'input':<40} {'lines':>10} {'messages':>10} {'stored':>10} {'decided':>10} "
        f"{'seconds':>8} {'wall s':>7} {'messages/s':>11} {'stored/s':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in runs:
        s = r.summary
        stored = s.get("positions_stored", 0)
        print(
            f"{r.path.name:<40} {r.counts.lines:>10,} {r.counts.messages:>10,} {stored:>10,} "
            f"{s.get('decided', 0):>10,} {secs(r.seconds):>8} {r.wall_s:>7.2f} "
            f"{rate(r.messages_per_s):>11} "
            f"{rate(stored / r.seconds if r.seconds else None):>10}"
        )
        if s.get("messages") not in (None, r.counts.messages):
            print(f"  (the summary counts {s['messages']:,} messages)")
        if s.get("rejects"):
            print("  not stored: " + ", ".join(f"{k} {v:,}" for k, v in s["rejects"].items()))
        if r.exit_code != 0:
            print(f"  aisfusion import exited {r.exit_code}: {r.stderr[-800:]}")


def best_import(runs: list[ImportRun]) -> ImportRun:
    ok = [r for r in runs if r.messages_per_s is not None]
    return min(ok, key=lambda r: r.seconds or 0.0) if ok else runs[0]


def best_aisdb(runs: list[AisdbResult]) -> AisdbResult:
    ok = [r for r in runs if r.messages_per_s is not None]
    return min(ok, key=lambda r: r.seconds or 0.0) if ok else runs[0]


def print_side_by_side(pairs: list[tuple[ImportRun, AisdbResult | None]]) -> None:
    head = (
        f"{'tool':<10} {'input':<40} {'messages':>10} {'stored':>10} {'seconds':>8} "
        f"{'wall s':>7} {'messages/s':>11} {'ratio':>6} {'ratio wall':>10}"
    )
    print(head)
    print("-" * len(head))
    for ours, theirs in pairs:
        ratio = ratio_wall = "-"
        if theirs is not None and theirs.messages_per_s and ours.messages_per_s:
            ratio = f"{ours.messages_per_s / theirs.messages_per_s:.1f}x"
            ratio_wall = f"{theirs.wall_s / ours.wall_s:.1f}x"
        print(
            f"{'aisfusion':<10} {ours.path.name:<40} {ours.counts.messages:>10,} "
            f"{ours.summary.get('positions_stored', 0):>10,} {secs(ours.seconds):>8} "
            f"{ours.wall_s:>7.2f} {rate(ours.messages_per_s):>11} {ratio:>6} {ratio_wall:>10}"
        )
        if theirs is not None:
            print(
                f"{'AISdb':<10} {theirs.path.name:<40} {theirs.counts.messages:>10,} "
                f"{theirs.dynamic_rows:>10,} {secs(theirs.seconds):>8} {theirs.wall_s:>7.2f} "
                f"{rate(theirs.messages_per_s):>11} {'1.0x':>6} {'1.0x':>10}"
            )
            if theirs.error:
                print(f"  AISdb failed: {theirs.error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000, help="generated archive's lines")
    parser.add_argument("--quick", action="store_true", help="a 100,000-line archive")
    parser.add_argument("--vessels", type=int, default=10_000, help="simulated fleet size")
    parser.add_argument("--repeat", type=int, default=1, help="runs per input; best is kept")
    parser.add_argument(
        "--archive", type=Path, help="generated archive to reuse (generated there if missing)"
    )
    parser.add_argument("--no-aisdb", action="store_true", help="skip the AISdb baseline")
    args = parser.parse_args()
    lines = 100_000 if args.quick else args.lines

    print(f"python {platform.python_version()}, commit {commit()}, {machine()}")
    print(f"load average (1/5/15 min) at start: {load()}")
    if not CLI.exists():
        print(f"{CLI} is missing (run ./dev to create the venv)")
        return 1
    with tempfile.TemporaryDirectory(prefix="aisfusion-bench-import-") as tmp:
        work = Path(tmp)
        # Traversable by PostgreSQL's unprivileged user when run as root, so its data stays in
        # each run's directory instead of moving to $TMPDIR (`aisfusion.storage.pgcluster`).
        work.chmod(0o711)
        archive = args.archive or work / f"simulated-{lines}.nmea.gz"
        if not archive.exists():
            print(f"generating {lines:,} lines, {args.vessels:,} vessels …", flush=True)
            generate_archive(archive, lines=lines, vessels=args.vessels)
        inputs = [*import_aisdb.shared_inputs(), archive]
        counts = {p: count_input(p) for p in inputs}

        print("\naisfusion import (fresh embedded servers per run):", flush=True)
        run_ids = itertools.count()
        imports = {
            p: [run_import(p, counts[p], work / f"run-{next(run_ids)}") for _ in range(args.repeat)]
            for p in inputs
        }
        print_imports([run for runs in imports.values() for run in runs])

        aisdb: dict[Path, AisdbResult] = {}
        if not args.no_aisdb:
            python, how = import_aisdb.ensure_venv()
            if python is None:
                print(f"\nAISdb unavailable: {how}")
            else:
                print(f"\nAISdb decode_msgs ({import_aisdb.VENV}, {how}):", flush=True)
                print(import_aisdb.header())
                print("-" * len(import_aisdb.header()))
                for p in inputs:
                    runs = [
                        import_aisdb.run_aisdb(python, p, counts=counts[p])
                        for _ in range(args.repeat)
                    ]
                    for r in runs:
                        print(import_aisdb.row(r), flush=True)
                    aisdb[p] = best_aisdb(runs)
                print(f"aisdb {aisdb[inputs[0]].version}")

        print("\nside by side (best of each; ratio = aisfusion messages/s over AISdb's):")
        print_side_by_side([(best_import(imports[p]), aisdb.get(p)) for p in inputs])
    print(
        "messages = AIS sentences that complete a message; seconds = the summary's (aisfusion) "
        "or the decode_msgs call's (AISdb); wall = the whole command or process"
    )
    print(f"load average (1/5/15 min) at end: {load()}")
    failed = any(r.exit_code != 0 for runs in imports.values() for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
