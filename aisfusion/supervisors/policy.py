"""Restart policy in Erlang/OTP terms: strategy, restart intensity, backoff between restarts.

A supervisor may restart its children at most `max_restarts` times within `within_s` seconds;
one more failure in that window escalates to its parent (the root stops the service with a
non-zero exit, so the OS supervisor can take over).
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum

import msgspec


class Strategy(StrEnum):
    ONE_FOR_ONE = "one_for_one"  # restart only the child that failed
    ONE_FOR_ALL = "one_for_all"  # restart every child when one fails


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    within_s: float = 60.0
    backoff_min_s: float = 0.1
    backoff_max_s: float = 5.0


class RestartIntensity:
    """Counts restarts in a sliding window and says how long to wait before the next."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._times: deque[float] = deque()
        self.total = 0

    def allow(self, now: float) -> bool:
        """Record a restart at `now`; False means the intensity is exceeded: escalate."""
        window = self._policy.within_s
        while self._times and now - self._times[0] > window:
            self._times.popleft()
        if len(self._times) >= self._policy.max_restarts:
            return False
        self._times.append(now)
        self.total += 1
        return True

    def backoff_s(self) -> float:
        """Delay before the restart just allowed: doubles with each restart in the window."""
        p = self._policy
        recent = max(0, len(self._times) - 1)
        return float(min(p.backoff_max_s, p.backoff_min_s * 2**recent))
