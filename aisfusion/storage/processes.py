"""Child processes tied to the life of this process, and one child server's lifecycle.

The embedded servers (`aisfusion.storage.embedded`) and the test suite's extra servers are
started here: `spawn` forks a child, `Server` runs one child server on a sticky loopback port,
waits until it serves, and stops it gracefully or, past a deadline, kills it and its children.

Parent-death signal
    Each child gets a parent-death signal (``prctl(PR_SET_PDEATHSIG)``, the signal chosen by
    the caller), so a SIGKILLed service leaves nothing running. The kernel sends that signal
    when the *thread* that forked the child exits, not the process, so every child is forked
    from one daemon thread that lives as long as the process (`_Spawner`); `spawn()` may be
    called from any thread. The kernel also clears the setting when the child changes its uid.
    CPython applies ``Popen(user=, group=, extra_groups=)`` before ``preexec_fn``, so setting it
    in ``preexec_fn`` comes after the switch and survives it.

Sessions
    Children run in their own session so that a Ctrl-C in a terminal reaches only the service,
    which stops them after flushing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from aisfusion.errors import EmbeddedServerError

__all__ = ["HOST", "Server", "free_port", "log_since", "log_size", "process_alive", "spawn"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_STOP_DEADLINE_S = 15.0
_PORT_ATTEMPTS = 3
_POLL_S = 0.1
# A probe that hangs (another program listening on the port) must not delay noticing an exit;
# an unlucky slow answer only costs one more round.
_PROBE_TIMEOUT_S = 1.0
_PR_SET_PDEATHSIG = 1

# Loaded before any fork: the child may only call what is already resolved.
_libc = ctypes.CDLL(None, use_errno=True)


class _Spawner:
    """Forks children from one daemon thread that lives as long as the process.

    The parent-death signal fires when the forking *thread* exits. A server started from a
    short-lived thread (``asyncio.to_thread``, an executor, an actor) would otherwise be
    stopped as soon as that thread finished.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        future: Future[subprocess.Popen[bytes]] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="aisfusion-embedded-spawner", daemon=True
                )
                self._thread.start()
        self._jobs.put((start, future))
        return future.result()

    def _run(self) -> None:
        while True:
            start, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(start())
            except Exception as exc:  # handed to the caller, which re-raises it
                future.set_exception(exc)


_SPAWNER = _Spawner()


def _child_setup(death_signal: signal.Signals, parent_pid: int) -> Callable[[], None]:
    """Build the ``preexec_fn`` that ties a child's life to this process."""

    def setup() -> None:
        if _libc.prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between fork and prctl; then no signal will ever come.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


def spawn(
    args: list[str],
    *,
    death_signal: signal.Signals,
    log_file: Path,
    cwd: Path,
    env: dict[str, str],
    user: pwd.struct_passwd | None,
) -> subprocess.Popen[bytes]:
    """Start `args` with output appended to `log_file`, as `user` if given."""
    parent_pid = os.getpid()
    with log_file.open("ab") as out:
        return _SPAWNER.popen(
            lambda: subprocess.Popen(  # noqa: S603 - our own binaries, arguments built here
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                # No supplementary groups: root's would follow the server user otherwise.
                user=None if user is None else user.pw_uid,
                group=None if user is None else user.pw_gid,
                extra_groups=None if user is None else [],
                # The only way to set a parent-death signal; it runs after the uid switch.
                preexec_fn=_child_setup(death_signal, parent_pid),  # noqa: PLW1509
            )
        )


def child_env() -> dict[str, str]:
    """The environment of a server child process."""
    # PG* variables (PGDATA, PGPORT, …) would override what is passed on the command line
    # for some tools; the C locale keeps initdb from depending on the host's locales.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def log_since(log_file: Path, offset: int, lines: int = 30) -> str:
    try:
        with log_file.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def log_size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except FileNotFoundError:
        return 0


def process_alive(pid: int, name: bytes) -> bool:
    try:
        return name in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # "pid (comm) state ppid …": comm may hold spaces and parentheses.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


class Server:
    """One child server: its process, sticky port and log."""

    def __init__(
        self,
        name: str,
        log_file: Path,
        stop_signal: signal.Signals,
        ready: Callable[[int, float], bool],
    ) -> None:
        self.name = name
        self.log_file = log_file
        self.stop_signal = stop_signal
        self.ready = ready
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        return self.proc.pid

    def start(self, launch: Callable[[int], subprocess.Popen[bytes]], timeout_s: float) -> None:
        """Launch on the sticky port (or a free one) and wait until it serves queries."""
        if self.pid is not None:
            return
        fresh = self.port is None
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port() if fresh else self.port
            assert port is not None
            offset = log_size(self.log_file)
            log.info("starting %s on %s:%d", self.name, HOST, port)
            self.proc = launch(port)
            error = self._wait_ready(port, timeout_s)
            if error is None:
                self.port = port
                log.info("%s ready on %s:%d (pid %d)", self.name, HOST, port, self.proc.pid)
                return
            self._halt()
            tail = log_since(self.log_file, offset)
            # The free port can be taken between probing and binding: try another.
            if fresh and "Address already in use" in tail and attempt < _PORT_ATTEMPTS:
                log.warning("%s: port %d was taken, trying another", self.name, port)
                continue
            raise EmbeddedServerError(
                f"{self.name} {error}; last lines of {self.log_file}:\n{tail}"
            )

    def _wait_ready(self, port: int, timeout_s: float) -> str | None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                return f"exited with code {code} while starting"
            if self.ready(port, min(_PROBE_TIMEOUT_S, timeout_s)):
                return None
            if time.monotonic() > deadline:
                return f"was not ready within {timeout_s:g}s"
            time.sleep(_POLL_S)

    def stop(self) -> None:
        """Stop gracefully; past the deadline kill it and its children."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            log.info("stopping %s (pid %d)", self.name, self.proc.pid)
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(_STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %gs, killing it", self.name, _STOP_DEADLINE_S)
                self._halt()
        self.proc.wait()
        self.proc = None

    def _halt(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            # PostgreSQL puts each backend in a session of its own, so killpg would miss them:
            # they are found by parent, and killed after the postmaster, which would otherwise
            # restart them.
            children = _children(self.proc.pid)
            self.proc.kill()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait()
