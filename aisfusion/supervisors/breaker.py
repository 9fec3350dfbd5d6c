"""Circuit breaker for one storage dependency.

closed ──(failure_threshold consecutive failures)──▶ open ──(reset delay)──▶ half-open
  ▲                                                   ▲                          │
  └────────────────(the probe succeeds)───────────────┼──────────────────────────┤
                                                      └──(the probe fails)───────┘

Open fails fast; half-open lets exactly one probe through. The reset delay doubles with every
consecutive opening, with jitter, up to a cap, so a struggling database is not stampeded.
An operator can force it open (`trip`, it then stays open until `reset`) or close it (`reset`).
It is shared by the threads that use the dependency, hence the lock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


Listener = Callable[[str, BreakerState, BreakerState, float], None]


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 3,
        reset_base_s: float = 1.0,
        reset_max_s: float = 60.0,
        jitter: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.name = name
        self._threshold = failure_threshold
        self._base = reset_base_s
        self._max = reset_max_s
        self._jitter = jitter
        self._clock = clock
        self._rng = rng or random.Random()
        self._listener = listener
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._since = clock()
        self._failures = 0  # consecutive failures while closed
        self._openings = 0  # consecutive openings without a successful probe
        self._probe_at = 0.0
        self._probing = False
        self._forced = False
        self.transitions = 0
        self.last_error: str | None = None

    def _move(self, to: BreakerState) -> None:
        old, now = self._state, self._clock()
        if old is to:
            return
        spent = now - self._since
        self._state, self._since = to, now
        self.transitions += 1
        if self._listener is not None:
            self._listener(self.name, old, to, spent)

    def _open(self) -> None:
        self._openings += 1
        delay = min(self._max, self._base * 2 ** (self._openings - 1))
        delay *= 1 + self._rng.uniform(-self._jitter, self._jitter)
        self._probe_at = self._clock() + delay
        self._probing = False
        self._move(BreakerState.OPEN)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open, True once for the single probe."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._forced:
                return False
            if self._state is BreakerState.OPEN and self._clock() >= self._probe_at:
                self._move(BreakerState.HALF_OPEN)
            if self._state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            if self._state is not BreakerState.CLOSED and not self._forced:
                self._openings = 0
                self._probing = False
                self._move(BreakerState.CLOSED)

    def failure(self, error: str | None = None) -> None:
        with self._lock:
            self.last_error = error
            if self._state is BreakerState.HALF_OPEN:
                self._open()
            elif self._state is BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self._threshold:
                    self._failures = 0
                    self._open()

    def trip(self) -> None:
        """Operator: force open until `reset`."""
        with self._lock:
            self._forced = True
            self._probing = False
            self._move(BreakerState.OPEN)

    def reset(self) -> None:
        """Operator: close now."""
        with self._lock:
            self._forced = False
            self._failures = self._openings = 0
            self._probing = False
            self._move(BreakerState.CLOSED)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            return {
                "name": self.name,
                "state": str(self._state),
                "forced": self._forced,
                "seconds_in_state": now - self._since,
                "consecutive_failures": self._failures,
                "openings": self._openings,
                "next_probe_in_s": max(0.0, self._probe_at - now)
                if self._state is BreakerState.OPEN and not self._forced
                else None,
                "transitions": self.transitions,
                "last_error": self.last_error,
            }
