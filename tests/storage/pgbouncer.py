"""Find PgBouncer for the tests, or install it from Debian's package registry.

PgBouncer ships in no Python package; Debian's `pgbouncer` does. `apt-get install pgbouncer`
would also pull in postgresql-common and register a system service, so, as for promtool
(`tests/promtool.py`), only the files are taken: `apt-get download pgbouncer libc-ares2`
(c-ares is the one library it needs that the base image lacks), then `dpkg-deb -x` into
`.venv/pgbouncer/`; it runs with that directory's libraries first on LD_LIBRARY_PATH. The
PgBouncer test installs it when missing (so `./dev test` does it on a fresh machine) and is
skipped, saying why, only when this cannot be done (not a Debian-like machine, or the package
registry cannot be reached).

    python -m tests.storage.pgbouncer    # print the PgBouncer in use, installing it if missing

Looked for, in order: `$PGBOUNCER` (a binary), `.venv/pgbouncer/usr/sbin/pgbouncer`,
`pgbouncer` on the PATH.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.debian import extract_packages, find_binary, report

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".venv" / "pgbouncer"
BINARY = ROOT / "usr" / "sbin" / "pgbouncer"
PACKAGES = ("pgbouncer", "libc-ares2")


def find() -> Path | None:
    return find_binary("PGBOUNCER", BINARY, "pgbouncer")


def environment(binary: Path) -> dict[str, str]:
    """The environment to run `binary` in (its extracted libraries first)."""
    env = dict(os.environ)
    libs = binary.parent.parent / "lib" / "x86_64-linux-gnu"
    if binary == BINARY and libs.is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
    return env


def install() -> Path:
    """Extract PgBouncer and c-ares from Debian's packages into .venv/pgbouncer."""
    extract_packages(PACKAGES, ROOT)
    if not BINARY.is_file():
        raise RuntimeError(f"the pgbouncer package had no {BINARY.relative_to(ROOT)}")
    return BINARY


def ensure() -> Path:
    found = find()
    return found if found is not None else install()


def main() -> int:
    return report("pgbouncer", ensure, environment)


if __name__ == "__main__":
    sys.exit(main())
