"""Waiting in tests: poll a condition until it holds, within a generous bound (the bound is a
guard against hanging, never a speed requirement)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any


def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = 20.0, interval: float = 0.01
) -> None:
    """Poll `condition` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """SIGTERM (a graceful stop) and wait for the exit; killed if it takes over `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
