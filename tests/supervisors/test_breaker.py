"""Circuit breaker and restart intensity rules, with an injected clock."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from aisfusion.supervisors.breaker import BreakerState, CircuitBreaker
from aisfusion.supervisors.policy import RestartIntensity, RestartPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **kw: float) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    moves: list[tuple[str, str]] = []
    b = CircuitBreaker(
        "pg",
        failure_threshold=3,
        reset_base_s=1.0,
        reset_max_s=8.0,
        jitter=0.0,
        clock=clock,
        listener=lambda _n, old, new, _s: moves.append((str(old), str(new))),
        **kw,  # type: ignore[arg-type]
    )
    return b, moves


def test_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = Clock()
    b, moves = breaker(clock)
    b.failure()
    b.failure()
    b.success()  # a success resets the count
    b.failure()
    b.failure()
    assert b.state is BreakerState.CLOSED
    b.failure("boom")
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert moves == [("closed", "open")]
    assert b.snapshot()["last_error"] == "boom"


def test_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    b, moves = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.now += 1.0
    assert b.allow()  # the probe
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # only one
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_reset_delay_doubles_up_to_the_cap() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    for _ in range(3):
        b.failure()
    delays = []
    for _ in range(6):
        start = clock.now
        while not b.allow():
            clock.now += 0.25
        delays.append(clock.now - start)
        b.failure()  # the probe fails: open again, longer
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_jitter_stays_within_bounds() -> None:
    clock = Clock()
    b = CircuitBreaker(
        "r", failure_threshold=1, reset_base_s=10, jitter=0.2, clock=clock, rng=random.Random(3)
    )
    b.failure()
    next_probe = b.snapshot()["next_probe_in_s"]
    assert 8.0 <= next_probe <= 12.0


def test_operator_trip_and_reset() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    b.trip()
    clock.now += 1000
    assert not b.allow()  # forced open never probes
    b.success()
    assert b.state is BreakerState.OPEN
    b.reset()
    assert b.state is BreakerState.CLOSED
    assert b.allow()


@given(st.lists(st.sampled_from(["ok", "fail", "allow", "wait"]), max_size=60))
def test_half_open_never_allows_two_probes(ops: list[str]) -> None:
    clock = Clock()
    b, _ = breaker(clock)
    for op in ops:
        if op == "ok":
            b.success()
        elif op == "fail":
            b.failure()
        elif op == "wait":
            clock.now += 3
        elif b.state is BreakerState.HALF_OPEN:
            assert not b.allow()
        else:
            was_open = b.state is BreakerState.OPEN
            allowed = b.allow()
            if was_open and allowed:
                assert b.state is BreakerState.HALF_OPEN


def test_restart_intensity_window_and_backoff() -> None:
    intensity = RestartIntensity(
        RestartPolicy(max_restarts=3, within_s=10, backoff_min_s=0.5, backoff_max_s=1.5)
    )
    assert intensity.allow(0.0)
    assert intensity.backoff_s() == 0.5
    assert intensity.allow(1.0)
    assert intensity.backoff_s() == 1.0
    assert intensity.allow(2.0)
    assert intensity.backoff_s() == 1.5
    assert not intensity.allow(3.0)  # 4th within 10 s: escalate
    assert intensity.allow(11.5)  # the first two left the window
    assert intensity.total == 4
