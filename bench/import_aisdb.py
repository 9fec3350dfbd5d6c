"""The baseline for `bench/import.py`: AISdb's ``decode_msgs`` on the same files.

AISdb (``pip install aisdb``) is not a dependency of the project: it is installed, if missing,
into a scratch venv outside the repository (``$AISFUSION_BENCH_AISDB_VENV``, default
``/tmp/aisfusion-bench-aisdb-venv``) and runs there, one process per input file, each into a
fresh SQLite database in a temporary directory, as its own tests call it::

    with DBConn(dbpath) as dbconn:
        decode_msgs([path], dbconn=dbconn, source=..., vacuum=False, skip_checksum=True, ...)

AISdb reads the time of a line from its NMEA 4.10 tag block (``\\c:<unix>``) and drops lines
without one, so it is given only inputs that carry tag-block times. *Messages* are counted the
same way for both tools, by `count_input` below and not by either decoder: AIS sentences
(``!AIVDM``/``!AIVDO``) that complete a message (fragment number = fragment count).

    .venv/bin/python bench/import_aisdb.py [FILE ...]     # default: ../shared/data/ais files
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ais"
# The recorded files with tag-block times on (nearly) every line; the others have none.
TIMED_FILES = ["aisdb-20211101.nm4", "gfw-listener-tagblock.nmea"]
VENV = Path(os.environ.get("AISFUSION_BENCH_AISDB_VENV", "/tmp/aisfusion-bench-aisdb-venv"))
SPEC = os.environ.get("AISFUSION_BENCH_AISDB_SPEC", "aisdb")

# A sentence that completes its message: `!xxVDM,<count>,<number>,` with number == count.
_LAST_FRAGMENT = re.compile(rb"^(?:\\[^\\\n]*\\)?!..VD[MO],(\d),(\1),", re.M)

# Run inside the scratch venv: one file into a fresh database, the result as the last line.
# ``type_preference``: aisdb 1.7.2's default ("all") makes its Rust decoder skip every NM4
# file without a word (no rows, no completed files); any other value decodes them.
_RUNNER = r"""
import glob, json, os, sqlite3, sys, time, traceback
path, db, type_preference = sys.argv[1], sys.argv[2], sys.argv[3]
out = {"version": None, "seconds": None, "error": None, "rows": {}}
try:
    import importlib.metadata
    out["version"] = importlib.metadata.version("aisdb")
    from aisdb.database.dbconn import DBConn
    from aisdb.database.decoder import decode_msgs
    started = time.perf_counter()
    with DBConn(db) as dbconn:
        decode_msgs([path], dbconn=dbconn, source="bench", vacuum=False, skip_checksum=True,
                    type_preference=type_preference, verbose=True)
    out["seconds"] = time.perf_counter() - started
except Exception as exc:
    where = traceback.extract_tb(exc.__traceback__)[-1]
    at = f"{os.path.basename(where.filename)}:{where.lineno} {where.name}: {where.line}"
    out["error"] = f"{type(exc).__name__}: {str(exc) or '-'} (at {at})"
    out["traceback"] = traceback.format_exc()
if os.path.exists(db):
    con = sqlite3.connect(db)
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for name in names:
        if name.startswith(("ais_", "static_")):
            n = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            if n:
                out["rows"][name] = n
sys.stdout.flush()
print("\nRESULT " + json.dumps(out), flush=True)
"""
# The decoder's own line per file: "<name>  count: N  elapsed: S s  rate: R msgs/s".
_COUNT = re.compile(r"count:\s*(\d+)\s+elapsed:\s*([\d.]+)s")


@dataclass
class Counts:
    """What an input holds, counted the same way for every tool (not by a decoder)."""

    lines: int
    messages: int
    compressed_bytes: int
    raw_bytes: int


@dataclass
class AisdbResult:
    path: Path
    counts: Counts
    version: str | None = None
    seconds: float | None = None  # the decode_msgs call alone
    wall_s: float = 0.0  # the whole process: interpreter, `import aisdb`, decode_msgs
    decoded: int = 0  # what AISdb's decoder says it kept (vessel position + static reports)
    decoder_s: float = 0.0  # the Rust decoder's own time for the file (decode + insert)
    rows: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    log: str = ""

    @property
    def dynamic_rows(self) -> int:
        return sum(n for t, n in self.rows.items() if t.endswith("_dynamic"))

    @property
    def static_rows(self) -> int:
        return sum(n for t, n in self.rows.items() if t.endswith("_static"))

    @property
    def messages_per_s(self) -> float | None:
        if self.seconds is None or self.error is not None:
            return None
        return self.counts.messages / self.seconds


def read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def count_input(path: Path) -> Counts:
    data = read_bytes(path)
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    return Counts(
        lines=lines,
        messages=len(_LAST_FRAGMENT.findall(data)),
        compressed_bytes=path.stat().st_size,
        raw_bytes=len(data),
    )


def ensure_venv(venv_dir: Path = VENV, spec: str = SPEC) -> tuple[Path | None, str]:
    """The scratch venv's python with aisdb importable, created if missing; else None and why."""
    python = venv_dir / "bin" / "python"
    check = [str(python), "-c", "import aisdb.database.decoder"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python, "present"
    print(f"creating {venv_dir} and installing {spec} (pip) …", flush=True)
    venv.EnvBuilder(with_pip=True, clear=python.exists()).create(venv_dir)
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", spec],
        capture_output=True,
        text=True,
        check=False,
    )
    if pip.returncode != 0:
        tail = "\n".join((pip.stderr or pip.stdout).strip().splitlines()[-15:])
        return None, f"pip install {spec} failed (exit {pip.returncode}):\n{tail}"
    probe = subprocess.run(check, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return None, f"import aisdb failed after install:\n{probe.stderr.strip()}"
    return python, "installed"


def run_aisdb(
    python: Path, path: Path, *, counts: Counts | None = None, type_preference: str = "nm4"
) -> AisdbResult:
    """One input through ``decode_msgs`` into a fresh SQLite database (its own process)."""
    result = AisdbResult(path=path, counts=counts or count_input(path))
    with tempfile.TemporaryDirectory(prefix="aisfusion-bench-aisdb-") as tmp:
        db = Path(tmp) / "ais.db"
        started = time.perf_counter()
        proc = subprocess.run(
            [str(python), "-c", _RUNNER, str(path.resolve()), str(db), type_preference],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp,
        )
        result.wall_s = time.perf_counter() - started
    out, _, last = proc.stdout.rpartition("\nRESULT ")
    result.log = (out + "\n" + proc.stderr).strip()
    if not last:
        result.error = f"runner exited {proc.returncode} without a result: {proc.stderr[-500:]}"
        return result
    payload = json.loads(last)
    result.version = payload["version"]
    result.seconds = payload["seconds"]
    result.rows = payload["rows"]
    result.error = payload["error"]
    found = _COUNT.findall(out)
    result.decoded = sum(int(n) for n, _ in found)
    result.decoder_s = sum(float(s) for _, s in found)
    if result.error is None and result.decoded == 0:
        result.error = "decoded nothing (no 'count:' line from the decoder)"
    return result


def shared_inputs() -> list[Path]:
    return [DATA / name for name in TIMED_FILES]


def header() -> str:
    return (
        f"{'input':<40} {'lines':>10} {'messages':>10} {'decoded':>10} {'dyn rows':>10} "
        f"{'static':>8} {'decoder s':>9} {'seconds':>8} {'wall s':>7} {'messages/s':>11}"
    )


def row(r: AisdbResult) -> str:
    rate = f"{r.messages_per_s:,.0f}" if r.messages_per_s is not None else "-"
    secs = f"{r.seconds:.2f}" if r.seconds is not None else "-"
    line = (
        f"{r.path.name:<40} {r.counts.lines:>10,} {r.counts.messages:>10,} {r.decoded:>10,} "
        f"{r.dynamic_rows:>10,} {r.static_rows:>8,} {r.decoder_s:>9.2f} {secs:>8} "
        f"{r.wall_s:>7.2f} {rate:>11}"
    )
    if r.error:
        line += f"\n  AISdb failed: {r.error}"
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="inputs (default: shared, timed)")
    parser.add_argument(
        "--type-preference", default="nm4", help="decode_msgs's type_preference (see source)"
    )
    parser.add_argument("--log", action="store_true", help="print AISdb's own output too")
    args = parser.parse_args()

    python, how = ensure_venv()
    if python is None:
        print(f"AISdb unavailable: {how}")
        return 1
    files = args.files or shared_inputs()
    print(f"AISdb venv {VENV} ({how}); messages = AIS sentences that complete a message")
    print(header())
    print("-" * len(header()))
    failed = False
    for path in files:
        r = run_aisdb(python, path, type_preference=args.type_preference)
        print(row(r), flush=True)
        if args.log:
            print(r.log)
        failed |= r.error is not None
    print(
        f"aisdb {r.version}; decoder s = its Rust decoder's own time (decode + insert), "
        "seconds = the whole decode_msgs call, wall = its whole process"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
