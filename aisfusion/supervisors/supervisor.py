"""A supervisor actor in Erlang/OTP terms.

It starts its children, restarts a child that crashed (one-for-one) or all of them
(one-for-all) after a backoff, and escalates to its parent when the restart intensity is
exceeded. Crashes are reported by the children themselves (`SupervisedActor.on_failure`); since
pykka does not call `on_failure` when `on_start` raises, every `Tick` also checks liveness.

Others reach a child through its `Slot`, which always holds the current incarnation.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import msgspec
import pykka

from aisfusion.messages import ChildExited, Tick
from aisfusion.metrics import Metrics
from aisfusion.supervisors.policy import RestartIntensity, RestartPolicy, Strategy

log = logging.getLogger(__name__)


class RestartChild(msgspec.Struct, frozen=True):
    """Control (ask): restart one child now, as an operator."""

    name: str


class SupervisionTree(msgspec.Struct, frozen=True):
    """Control (ask): this supervisor's children and their state."""


class Slot:
    """The current incarnation of a supervised child; a plain reference swap, no lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ref: pykka.ActorRef[Any] | None = None

    def tell(self, message: Any) -> bool:
        """Tell the current child; False if it is down (being restarted)."""
        ref = self.ref
        if ref is None:
            return False
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            return False
        return True


class _CrashReporting(pykka.ThreadingActor):
    """An actor that logs its crash and reports it (`_report`) before pykka stops it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.child_name = name

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        error = repr(exception_value)
        log.error("%s crashed: %s", self.child_name, error)
        self._report(error)

    def _report(self, error: str) -> None:
        raise NotImplementedError


class SupervisedActor(_CrashReporting):
    """Base of supervised children: a crash is reported to the supervisor."""

    def __init__(self, name: str, supervisor: pykka.ActorRef[Any]) -> None:
        super().__init__(name)
        self._supervisor = supervisor

    def _report(self, error: str) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # the supervisor is stopping too
            self._supervisor.tell(ChildExited(self.child_name, error, self.actor_ref))


class EscalatingActor(_CrashReporting):
    """Base of the actors the root supervises directly (shards, batcher, source quality): a
    crash escalates at once, stopping the service with exit 1 for the process manager to
    restart (their state is rebuilt at start: vessels from Redis, history rows were handed on
    or are lost with the crash, like the writers' in-flight work)."""

    def __init__(self, name: str, escalate: Callable[[str], None] | None) -> None:
        super().__init__(name)
        self._escalate_to = escalate

    def _report(self, error: str) -> None:
        if self._escalate_to is not None:
            self._escalate_to(f"{self.child_name} crashed: {error}")


@dataclass
class ChildSpec:
    name: str
    start: Callable[[pykka.ActorRef[Any]], pykka.ActorRef[Any]]  # given the supervisor's ref


class _Child:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.slot = Slot(spec.name)
        self.restarts = 0
        self.restart_at: float | None = None
        self.last_error: str | None = None


class Supervisor(pykka.ThreadingActor):
    def __init__(
        self,
        name: str,
        policy: RestartPolicy,
        children: list[ChildSpec],
        escalate: Callable[[str], None],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.name = name
        self._policy = policy
        self._children = {spec.name: _Child(spec) for spec in children}
        self._escalate = escalate
        self._metrics = metrics
        self._clock = clock
        self._intensity = RestartIntensity(policy)
        self._escalated = False

    def slot(self, name: str) -> Slot:
        return self._children[name].slot

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        for child in self._children.values():
            self._start_child(child)

    def on_stop(self) -> None:
        for child in reversed(list(self._children.values())):
            self._stop_child(child)

    def _start_child(self, child: _Child) -> None:
        child.restart_at = None
        try:
            child.slot.ref = child.spec.start(self.actor_ref)
        except Exception as exc:  # a child that cannot start counts as a crash
            child.slot.ref = None
            self._failed(child, repr(exc))

    @staticmethod
    def _stop_child(child: _Child) -> None:
        ref, child.slot.ref = child.slot.ref, None
        if ref is not None and ref.is_alive():
            ref.stop()

    # -- messages ----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case ChildExited(name=name, error=error, ref=ref):
                child = self._children.get(name)
                if child is None:
                    return None
                if child.restart_at is None and child.slot.ref is ref:
                    child.slot.ref = None
                    self._failed(child, error)
                else:
                    # pykka marks a crashed actor stopped before it calls on_failure, so the
                    # liveness check on a tick may have seen this exit first ("not alive"):
                    # keep the real cause, without counting the failure twice.
                    child.last_error = error
                return None
            case Tick():
                self._check_children()
                return self.on_tick()
            case RestartChild(name=name):
                child = self._children[name]
                self._stop_child(child)
                self._start_child(child)
                if child.slot.ref is not None:
                    # What the old incarnation had queued is gone with it: resend, as after
                    # a crash (writes are idempotent, so a batch written twice is harmless).
                    self.on_child_restarted(name)
                return True
            case SupervisionTree():
                return self.tree()
            case _:
                return self.handle(message)

    def handle(self, message: Any) -> Any:
        """Messages other than supervision; subclasses override."""
        raise TypeError(f"{self.name}: unexpected message {message!r}")

    def on_tick(self) -> None:
        """Periodic work of subclasses."""

    def on_child_restarted(self, name: str) -> None:
        """Called after a child was restarted; subclasses resend what it lost."""

    # -- supervision -------------------------------------------------------------------

    def _check_children(self) -> None:
        now = self._clock()
        for child in self._children.values():
            if child.restart_at is not None:
                if now >= child.restart_at and not self._escalated:
                    self._start_child(child)
                    if child.slot.ref is not None:
                        log.warning("%s: restarted %s", self.name, child.spec.name)
                        self.on_child_restarted(child.spec.name)
            elif child.slot.ref is None or not child.slot.ref.is_alive():
                child.slot.ref = None
                self._failed(child, "not alive")

    def _failed(self, child: _Child, error: str) -> None:
        child.last_error = error
        if self._escalated:
            return
        now = self._clock()
        if not self._intensity.allow(now):
            self._escalated = True
            p = self._policy
            reason = (
                f"{self.name}: {child.spec.name} failed more than {p.max_restarts} times "
                f"within {p.within_s:g} s (last: {error})"
            )
            log.error("%s; escalating", reason)
            self._escalate(reason)
            return
        delay = self._intensity.backoff_s()
        targets = (
            list(self._children.values())
            if self._policy.strategy is Strategy.ONE_FOR_ALL
            else [child]
        )
        for target in targets:
            if target is not child:
                self._stop_child(target)
            target.restarts += 1
            target.restart_at = now + delay
            self._metrics.writer_restarts.labels(target.spec.name).inc()
        log.warning(
            "%s: %s failed (%s); restarting in %.2f s", self.name, child.spec.name, error, delay
        )

    def tree(self) -> dict[str, Any]:
        children = []
        for child in self._children.values():
            ref = child.slot.ref
            if child.restart_at is not None:
                state = "restarting"
            elif ref is not None and ref.is_alive():
                state = "running"
            else:
                state = "dead"
            children.append(
                {
                    "name": child.spec.name,
                    "state": state,
                    "restarts": child.restarts,
                    "mailbox": mailbox_depth(ref),
                    "last_error": child.last_error,
                }
            )
        return {
            "name": self.name,
            "strategy": str(self._policy.strategy),
            "max_restarts": self._policy.max_restarts,
            "within_s": self._policy.within_s,
            "escalated": self._escalated,
            "children": children,
        }


def mailbox_depth(ref: pykka.ActorRef[Any] | None) -> int | None:
    """Messages waiting in an actor's inbox (a stdlib queue under pykka's threading actors)."""
    if ref is None:
        return None
    inbox = getattr(ref.actor_inbox, "qsize", None)
    return int(inbox()) if inbox is not None else None
