"""The garbage-collection policy (heap.py): no automatic full collections while it is on, cyclic
garbage in the oldest generation reclaimed by the timed one, CPython's policy given back by the
last user."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from aisfusion.heap import CollectorPolicy
from aisfusion.metrics import Metrics
from tests.waiting import wait_until


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def old_cycle() -> weakref.ref[Node]:
    """A cycle that reached the oldest generation, then became garbage."""
    node = Node()
    gc.collect(1)  # survives the young generations: promoted to the oldest
    ref = weakref.ref(node)
    del node
    return ref


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    assert gc.get_threshold() == before, "a test left the process's policy changed"
    assert gc.get_freeze_count() == 0


def test_full_collections_are_timed_not_automatic(thresholds: tuple[int, int, int]) -> None:
    metrics = Metrics()
    slow = CollectorPolicy(3600.0, metrics)
    slow.start()
    try:
        assert gc.get_freeze_count() > 0  # what existed at start is frozen out of collections
        assert gc.get_threshold()[:2] == thresholds[:2]  # the young generations as before
        garbage = old_cycle()
        full: list[int] = []

        def count_full(phase: str, info: dict[str, int]) -> None:
            if phase == "start" and info["generation"] == 2:
                full.append(1)

        gc.callbacks.append(count_full)
        try:
            # Enough long-lived containers that CPython's own policy would run full
            # collections meanwhile (two, measured); young ones still run.
            keep = [[] for _ in range(200_000)]
        finally:
            gc.callbacks.remove(count_full)
        assert len(keep) == 200_000
        assert full == []
        assert garbage() is not None  # young collections do not reach it
        slow.collect()  # the timed collection does
        assert garbage() is None
        found = metrics.registry.get_sample_value("aisfusion_gc_full_collected_objects_total")
        assert found is not None and found >= 1
    finally:
        slow.stop()


def test_the_timer_collects(thresholds: tuple[int, int, int]) -> None:
    metrics = Metrics()
    policy = CollectorPolicy(0.05, metrics)
    policy.start()
    try:
        garbage = old_cycle()
        wait_until(lambda: garbage() is None, "the timed collection")
        runs = metrics.registry.get_sample_value("aisfusion_gc_full_collection_seconds_count")
        assert runs is not None and runs >= 2  # at start, then on the timer
    finally:
        policy.stop()


def test_the_last_user_restores_cpythons_policy(thresholds: tuple[int, int, int]) -> None:
    a, b = CollectorPolicy(3600.0, Metrics()), CollectorPolicy(3600.0, Metrics())
    a.start()
    b.start()
    a.stop()
    assert gc.get_threshold() != thresholds  # b still runs: the policy stays
    b.stop()
    b.stop()  # idempotent
    assert gc.get_threshold() == thresholds


def test_zero_keeps_cpythons_policy(thresholds: tuple[int, int, int]) -> None:
    policy = CollectorPolicy(0.0, Metrics())
    policy.start()
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0
    policy.stop()
