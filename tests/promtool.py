"""Find Prometheus' `promtool` for the tests, or install it from Debian's package registry.

promtool ships in no Python or npm package; Debian's `prometheus` package carries it. Installing
that package with apt would also install and start a Prometheus server, so only the one binary
is taken out of it: `apt-get download prometheus`, then `dpkg-deb` extracts `usr/bin/promtool`
into `.venv/bin/` (a static Go binary: it needs nothing else). `./dev test` runs this module
before the tests, so CI and a fresh machine get it; the tests only look for it.

    python -m tests.promtool      # print the path of promtool, installing it when missing

Looked for, in order: `$PROMTOOL`, `.venv/bin/promtool`, `promtool` on the PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_PROMTOOL = REPO / ".venv" / "bin" / "promtool"


def find() -> Path | None:
    """The promtool to use, or None."""
    given = os.environ.get("PROMTOOL")
    if given:
        return Path(given)
    if VENV_PROMTOOL.is_file() and os.access(VENV_PROMTOOL, os.X_OK):
        return VENV_PROMTOOL
    found = shutil.which("promtool")
    return Path(found) if found else None


def _download(workdir: Path) -> Path:
    def get() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["apt-get", "download", "prometheus"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=False,
        )

    result = get()
    if result.returncode != 0 and os.geteuid() == 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update"], capture_output=True, check=True)
        result = get()
    if result.returncode != 0:
        raise RuntimeError(f"apt-get download prometheus failed:\n{result.stderr}")
    (deb,) = workdir.glob("prometheus_*.deb")
    return deb


def install(target: Path = VENV_PROMTOOL) -> Path:
    """Extract promtool from Debian's prometheus package into `target`."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(
            "promtool not found and this is not a Debian-like machine: install Prometheus' "
            "promtool and put it on the PATH (or set PROMTOOL=/path/to/promtool)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        deb = _download(workdir)
        tar_path = workdir / "data.tar"
        with tar_path.open("wb") as out:
            subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=out, check=True)
        with tarfile.open(tar_path) as tar:
            member = tar.getmember("./usr/bin/promtool")
            source = tar.extractfile(member)
            if source is None:
                raise RuntimeError(f"{deb.name}: usr/bin/promtool is not a file")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            with source, partial.open("wb") as out:
                shutil.copyfileobj(source, out)
            partial.chmod(0o755)
            partial.replace(target)
    return target


def ensure() -> Path:
    found = find()
    return found if found is not None else install()


def main() -> int:
    try:
        path = ensure()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"promtool: {exc}", file=sys.stderr)
        return 1
    version = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    print(f"promtool: {path} ({version[0] if version else 'unknown version'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
