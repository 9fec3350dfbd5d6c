"""Find Prometheus' `promtool` for the tests, or install it from Debian's package registry.

promtool ships in no Python or npm package; Debian's `prometheus` package carries it. Installing
that package with apt would also install and start a Prometheus server, so only the one binary
is taken out of it (`tests/debian.py`): `usr/bin/promtool` goes
into `.venv/bin/` (a static Go binary: it needs nothing else). `./dev test` runs this module
before the tests, so CI and a fresh machine get it; the tests only look for it.

    python -m tests.promtool      # print the path of promtool, installing it when missing

Looked for, in order: `$PROMTOOL`, `.venv/bin/promtool`, `promtool` on the PATH.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tests.debian import extract_packages, find_binary, report

REPO = Path(__file__).resolve().parents[1]
VENV_PROMTOOL = REPO / ".venv" / "bin" / "promtool"


def find() -> Path | None:
    """The promtool to use, or None."""
    return find_binary("PROMTOOL", VENV_PROMTOOL, "promtool")


def install(target: Path = VENV_PROMTOOL) -> Path:
    """Extract promtool from Debian's prometheus package into `target`."""
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = Path(tmp) / "prometheus"
        extract_packages(("prometheus",), unpacked)
        source = unpacked / "usr" / "bin" / "promtool"
        if not source.is_file():
            raise RuntimeError("the prometheus package had no usr/bin/promtool")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copyfile(source, partial)
        partial.chmod(0o755)
        partial.replace(target)
    return target


def ensure() -> Path:
    found = find()
    return found if found is not None else install()


def main() -> int:
    return report("promtool", ensure)


if __name__ == "__main__":
    sys.exit(main())
