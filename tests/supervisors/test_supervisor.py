"""Supervisor semantics with real pykka actors: restart, backoff, intensity, escalation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from aisfusion.messages import Tick
from aisfusion.metrics import Metrics
from aisfusion.supervisors.policy import RestartPolicy, Strategy
from aisfusion.supervisors.supervisor import (
    ChildSpec,
    RestartChild,
    SupervisedActor,
    SupervisionTree,
    Supervisor,
)
from tests.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Worker(SupervisedActor):
    starts: dict[str, int] = {}  # noqa: RUF012 - shared test bookkeeping

    def __init__(
        self, name: str, supervisor: pykka.ActorRef[Any], fail_start: bool = False
    ) -> None:
        super().__init__(name, supervisor)
        self._fail_start = fail_start

    def on_start(self) -> None:
        Worker.starts[self.child_name] = Worker.starts.get(self.child_name, 0) + 1
        if self._fail_start:
            raise RuntimeError("cannot start")

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise ValueError("boom")
        return message


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    Worker.starts = {}
    yield
    pykka.ActorRegistry.stop_all()


def start(
    policy: RestartPolicy,
    clock: Clock,
    escalations: list[str],
    names: tuple[str, ...] = ("a",),
    fail_start: bool = False,
) -> pykka.ActorRef[Any]:
    specs = [ChildSpec(n, lambda sup, n=n: Worker.start(n, sup, fail_start)) for n in names]
    return Supervisor.start("sup", policy, specs, escalations.append, Metrics(), clock)


def tree(sup: pykka.ActorRef[Any]) -> dict[str, Any]:
    return {c["name"]: c for c in sup.ask(SupervisionTree())["children"]}


def tick(sup: pykka.ActorRef[Any]) -> dict[str, Any]:
    sup.tell(Tick(0.0))
    return tree(sup)


def crash(sup: pykka.ActorRef[Any], name: str) -> None:
    """Crash child `name` and wait until its supervisor has its report (no tick meanwhile)."""
    slot = sup.proxy().slot(name).get()
    ref = slot.ref
    before = tree(sup)[name]["restarts"]
    ref.tell("crash")
    ref.actor_stopped.wait(5)
    wait_until(
        lambda: tree(sup)[name]["restarts"] != before or sup.ask(SupervisionTree())["escalated"],
        "the crash to be reported",
    )


class SlowReporter(Worker):
    """Reports its crash only when allowed: pykka has marked it stopped long before."""

    report = threading.Event()

    def _report(self, error: str) -> None:
        SlowReporter.report.wait(5)
        super()._report(error)


def test_a_crash_seen_first_by_the_liveness_check_keeps_its_cause_and_counts_once() -> None:
    clock, escalations = Clock(), []
    SlowReporter.report.clear()
    spec = ChildSpec("a", lambda sup: SlowReporter.start("a", sup))
    policy = RestartPolicy(max_restarts=3, within_s=60, backoff_min_s=1.0)
    sup = Supervisor.start("sup", policy, [spec], escalations.append, Metrics(), clock)
    ref = sup.proxy().slot("a").get().ref
    ref.tell("crash")
    ref.actor_stopped.wait(5)
    seen = tick(sup)["a"]  # before the crash report: only "not alive" is known
    assert (seen["state"], seen["restarts"], seen["last_error"]) == ("restarting", 1, "not alive")
    SlowReporter.report.set()
    wait_until(lambda: tree(sup)["a"]["last_error"] != "not alive", "the crash report")
    after = tree(sup)["a"]
    assert (after["state"], after["restarts"]) == ("restarting", 1)
    assert "boom" in after["last_error"]
    clock.now += 1.1
    assert (tick(sup)["a"]["state"], Worker.starts["a"]) == ("running", 2)


def test_crashed_child_is_restarted_after_backoff() -> None:
    clock, escalations = Clock(), []
    sup = start(RestartPolicy(max_restarts=3, within_s=60, backoff_min_s=1.0), clock, escalations)
    crash(sup, "a")
    assert tick(sup)["a"]["state"] == "restarting"
    clock.now += 0.5
    assert tick(sup)["a"]["state"] == "restarting"  # backoff not over
    clock.now += 0.6
    after = tick(sup)["a"]
    assert (after["state"], after["restarts"]) == ("running", 1)
    assert Worker.starts["a"] == 2
    assert "boom" in after["last_error"]
    assert escalations == []
    slot = sup.proxy().slot("a").get()
    assert slot.ref.ask("ping") == "ping"  # the slot holds the new incarnation


def test_too_many_restarts_escalate_once() -> None:
    clock, escalations = Clock(), []
    sup = start(RestartPolicy(max_restarts=2, within_s=60, backoff_min_s=0.1), clock, escalations)
    for _ in range(2):
        crash(sup, "a")
        tick(sup)
        clock.now += 1
        assert tick(sup)["a"]["state"] == "running"
    crash(sup, "a")
    tick(sup)
    clock.now += 1
    tick(sup)
    assert len(escalations) == 1
    assert "failed more than 2 times within 60 s" in escalations[0]
    assert sup.ask(SupervisionTree())["escalated"]


def test_child_failing_in_on_start_is_caught_by_liveness() -> None:
    clock, escalations = Clock(), []
    sup = start(
        RestartPolicy(max_restarts=1, within_s=60, backoff_min_s=0.1),
        clock,
        escalations,
        fail_start=True,
    )

    def wait_dead() -> None:
        ref = sup.proxy().slot("a").get().ref
        assert ref.actor_stopped.wait(5)

    wait_dead()
    tick(sup)  # pykka does not call on_failure for on_start: liveness finds it
    clock.now += 1
    tick(sup)  # restarted, fails again
    wait_dead()
    clock.now += 1
    tick(sup)
    assert Worker.starts["a"] == 2
    assert len(escalations) == 1


def test_one_for_all_restarts_every_child() -> None:
    clock, escalations = Clock(), []
    policy = RestartPolicy(strategy=Strategy.ONE_FOR_ALL, max_restarts=3, backoff_min_s=0.1)
    sup = start(policy, clock, escalations, names=("a", "b"))
    crash(sup, "a")
    states = tick(sup)
    assert states["a"]["state"] == states["b"]["state"] == "restarting"
    clock.now += 1
    states = tick(sup)
    assert states["a"]["state"] == states["b"]["state"] == "running"
    assert Worker.starts == {"a": 2, "b": 2}


def test_operator_restart() -> None:
    clock, escalations = Clock(), []
    sup = start(RestartPolicy(), clock, escalations)
    assert sup.ask(RestartChild("a"))
    assert Worker.starts["a"] == 2
    assert tree(sup)["a"]["state"] == "running"


class Resending(Supervisor):
    """Records when the supervisor asks itself to resend what a child lost."""

    restarted: list[str] = []  # noqa: RUF012 - shared test bookkeeping

    def on_child_restarted(self, name: str) -> None:
        Resending.restarted.append(name)


def test_every_restart_asks_to_resend_what_the_child_lost() -> None:
    Resending.restarted = []
    clock, escalations = Clock(), []
    specs = [ChildSpec("a", lambda sup: Worker.start("a", sup))]
    policy = RestartPolicy(max_restarts=3, backoff_min_s=0.1)
    sup = Resending.start("sup", policy, specs, escalations.append, Metrics(), clock)
    crash(sup, "a")
    tick(sup)
    clock.now += 1
    tick(sup)  # restarted after a crash
    assert sup.ask(RestartChild("a"))  # restarted by an operator
    assert Resending.restarted == ["a", "a"]
