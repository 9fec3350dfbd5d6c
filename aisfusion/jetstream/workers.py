"""The front's local worker processes: `aisfusion worker` children, restarted when they die.

Each child gets the front's settings (the same `--config` and `--set` arguments) plus what it
must not share with its siblings: its id, its spool directory, its metrics port (the front's
port + 1 + index, or 0 for any) and no control socket; and the URLs of the embedded servers.
A worker that exits is started again after a backoff; meanwhile its partitions move to the
others (their leases expire) and come back when it has rejoined.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aisfusion.config import Config
from aisfusion.storage.processes import spawn

log = logging.getLogger(__name__)

_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 10.0


def default_count() -> int:
    return len(os.sched_getaffinity(0)) or 1


class _Child:
    def __init__(self, index: int, worker_id: str) -> None:
        self.index = index
        self.worker_id = worker_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at = 0.0
        self.next_start = 0.0
        self.backoff = _BACKOFF_MIN_S


class WorkerPool:
    def __init__(
        self,
        config: Config,
        count: int,
        args: list[str],
        urls: dict[str, str],
        log_dir: Path,
    ) -> None:
        self._config = config
        self._args = args
        self._urls = urls
        self._log_dir = log_dir
        host = socket.gethostname()
        self._children = [_Child(i, f"{host}-{os.getpid()}-w{i}") for i in range(count)]

    def _command(self, child: _Child) -> list[str]:
        cfg = self._config
        port = cfg.metrics.port + 1 + child.index if cfg.metrics.port else 0
        settings = {
            "metrics.port": str(port),
            "control.socket": "",
            "spool.dir": str(Path(cfg.spool.dir) / f"worker-{child.index}"),
            **{f"{store}.url": url for store, url in self._urls.items()},
        }
        sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
        return [
            sys.executable, "-m", "aisfusion.cli", "worker", *self._args, *sets,
            "--id", child.worker_id,
        ]  # fmt: skip

    def _start(self, child: _Child) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        child.proc = spawn(
            self._command(child),
            death_signal=signal.SIGTERM,
            log_file=self._log_dir / f"worker-{child.index}.log",
            cwd=Path.cwd(),
            env=dict(os.environ),
            user=None,
        )
        child.started_at = time.monotonic()
        log.info("worker %s started (pid %d)", child.worker_id, child.proc.pid)

    def start(self) -> None:
        for child in self._children:
            self._start(child)

    def poll(self) -> None:
        """Start again the workers that exited (called every second or so)."""
        now = time.monotonic()
        for child in self._children:
            proc = child.proc
            if proc is not None and proc.poll() is None:
                if now - child.started_at > 60:
                    child.backoff = _BACKOFF_MIN_S  # it ran for a while: forgive
                continue
            if proc is not None:
                log.warning(
                    "worker %s (pid %d) exited with %s; starting it again in %.1f s",
                    child.worker_id,
                    proc.pid,
                    proc.returncode,
                    child.backoff,
                )
                child.proc = None
                child.next_start = now + child.backoff
                child.backoff = min(_BACKOFF_MAX_S, child.backoff * 2)
            if now >= child.next_start:
                child.restarts += 1
                self._start(child)

    def stop(self, deadline_s: float) -> None:
        """SIGTERM every worker (each drains, then gives its leases back), SIGKILL at the
        deadline."""
        procs = [c.proc for c in self._children if c.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + deadline_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time: killed", proc.pid)  # noqa: TRY400
                proc.kill()
                proc.wait()
        for child in self._children:
            child.proc = None

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "id": c.worker_id,
                "pid": c.proc.pid if c.proc is not None else None,
                "alive": c.proc is not None and c.proc.poll() is None,
                "restarts": c.restarts,
            }
            for c in self._children
        ]

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children if c.proc is not None]
