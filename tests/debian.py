"""Tools the tests need that no Python package ships, taken from Debian's package registry.

`apt-get install` would also register and start system services, so only the files are taken:
`apt-get download` the packages, then `dpkg-deb -x` them into a directory of ours. Used by
`tests/promtool.py` and `tests/storage/pgbouncer.py`, which also share how a binary is looked
for (`find_binary`) and their ``python -m`` report (`report`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def find_binary(env_var: str, local: Path, name: str) -> Path | None:
    """The binary to use: `$env_var`, else our extracted copy at `local`, else `name` on the
    PATH; None when there is none."""
    given = os.environ.get(env_var)
    if given:
        return Path(given)
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def report(
    name: str,
    ensure: Callable[[], Path],
    environment: Callable[[Path], dict[str, str]] | None = None,
) -> int:
    """Find or install `name` and print which one is in use (a module's ``python -m``)."""
    try:
        path = ensure()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    env = environment(path) if environment is not None else None
    version = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, check=False, env=env
    ).stdout.splitlines()
    print(f"{name}: {path} ({version[0] if version else 'unknown version'})", file=sys.stderr)
    return 0


def extract_packages(packages: tuple[str, ...], dest: Path) -> None:
    """Download `packages` and unpack their files into `dest` (replaced atomically)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(
            f"not a Debian-like machine (no apt-get/dpkg-deb): install {' '.join(packages)} "
            "yourself and put it on the PATH"
        )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # apt's download user writes here

        def download() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["apt-get", "download", *packages],
                cwd=workdir,
                capture_output=True,
                text=True,
                check=False,
            )

        result = download()
        if result.returncode != 0 and os.geteuid() == 0:
            # A fresh machine has no package lists yet.
            subprocess.run(["apt-get", "update"], capture_output=True, check=False)
            result = download()
        if result.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(packages)} failed:\n{result.stderr}")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for deb in sorted(workdir.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
        shutil.rmtree(dest, ignore_errors=True)
        partial.replace(dest)
