"""Garbage collection for a service whose heap is mostly long-lived vessel state.

CPython's cyclic collector runs a full collection whenever the objects promoted to its oldest
generation have grown by a quarter, and a full collection scans every tracked container while
holding the GIL. With 20,000 vessels whose windows were deques and lists, one took 40-70 ms on
the reference machine and, while the fleet grew, came every few seconds: that pause was the tail
of the socket → Redis latency (`bench/latency.py`). The windows are tuples now (the collector
skips a tuple of untracked objects), which cut a full collection to about 8 ms for 20,000
vessels and 94 ms for 200,000; it still grows with the fleet. The vessel state has no reference
cycles, so reference counting frees it; only rare cyclic garbage (tracebacks, closed
connections) needs the collector. Hence, while the service runs:

- the objects that live for the whole run (modules, configuration, clients) are frozen at start
  (`gc.freeze`): no collection scans them again;
- automatic full collections are off; the young generations still collect as usual (about a
  millisecond each), which is where short-lived cycles die;
- a full collection runs every `runtime.gc_interval_s` from its own thread, timed in
  `aisfusion_gc_full_collection_seconds`, for the cyclic garbage that reached the oldest
  generation.

`runtime.gc_interval_s = 0` leaves CPython's own policy in place.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from aisfusion.metrics import Metrics

log = logging.getLogger(__name__)

_NEVER = 2**31 - 1  # gen1 collections before an automatic full one: never, in practice


# The policy is the process's: with several services in one process (tests, benches), the first
# start applies it and the last stop restores CPython's.
class _Process:
    lock = threading.Lock()
    users = 0
    saved: tuple[int, int, int] | None = None  # CPython's thresholds, restored at the end


class CollectorPolicy:
    """Applies the policy above to this process between `start()` and `stop()`."""

    def __init__(self, interval_s: float, metrics: Metrics) -> None:
        self._interval = interval_s
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._interval <= 0 or self._thread is not None:
            return
        with _Process.lock:
            _Process.users += 1
            if _Process.users == 1:
                _Process.saved = young, middle, _ = gc.get_threshold()
                self.collect()
                gc.freeze()
                gc.set_threshold(young, middle, _NEVER)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gc", daemon=True)
        self._thread.start()
        log.debug(
            "gc: %d objects frozen, full collections every %g s",
            gc.get_freeze_count(),
            self._interval,
        )

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.collect()

    def collect(self) -> float:
        """One full collection now; returns its duration in seconds."""
        started = time.perf_counter()
        found = gc.collect()
        elapsed = time.perf_counter() - started
        self._metrics.gc_full_seconds.observe(elapsed)
        self._metrics.gc_full_collected.inc(found)
        return elapsed

    def stop(self) -> None:
        """Stop the thread; the last user gives the process CPython's policy back."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with _Process.lock:
            _Process.users -= 1
            if _Process.users == 0 and _Process.saved is not None:
                gc.set_threshold(*_Process.saved)
                gc.unfreeze()
                _Process.saved = None
