"""Source quality: the EWMA book (demotion, promotion, skew) and the actor publishing weights."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pykka
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aisfusion.actors.sources import (
    SourceBook,
    SourcesActor,
    SourceTable,
    Subscribe,
    base_weight,
    source_key,
)
from aisfusion.config import SourcesConfig
from aisfusion.messages import SourceOutcomes, SourceTally, SourceWeights
from aisfusion.metrics import Metrics

CFG = SourcesConfig()


def tally(source: str, good: int, bad: int = 0, *, skew: float | None = None) -> SourceTally:
    outcomes = {k: v for k, v in (("agreed", good), ("jump", bad)) if v}
    n = good + bad
    return SourceTally(
        source,
        n,
        float(good),
        outcomes,
        skew_n=n if skew is not None else 0,
        skew_sum=(skew or 0.0) * n,
        last_ts=1000.0 + n,
    )


def test_source_keys_and_base_weights() -> None:
    assert source_key("tcp", None) == "tcp"
    assert source_key("tcp", "rx-1") == "tcp/rx-1"
    cfg = SourcesConfig(default_weight=1.0, weights={"sat": 0.5, "rx-9": 0.2, "tcp/rx-1": 2.0})
    assert base_weight(cfg, "tcp/rx-1") == 2.0  # by key
    assert base_weight(cfg, "tcp/rx-9") == 0.2  # by station
    assert base_weight(cfg, "sat/anything") == 0.5  # by feed
    assert base_weight(cfg, "tcp") == 1.0  # default


def test_a_bad_source_is_demoted_after_enough_outcomes_and_promoted_when_it_recovers() -> None:
    book = SourceBook(CFG)
    events = [book.apply(tally("bad", 0, 1)) for _ in range(CFG.min_outcomes)]
    assert events[:-1] == [None] * (CFG.min_outcomes - 1)  # never before min_outcomes
    assert events[-1] == "demoted"
    state = book.sources["bad"]
    assert state.demoted and state.quality < CFG.demote_below
    assert (state.demoted_at, state.demoted_after) == (1001.0, CFG.min_outcomes)
    assert book.weight(state) == pytest.approx(state.quality * CFG.demoted_factor)
    # Recovery: promoted only above promote_above (hysteresis), not at demote_below.
    event = None
    while event is None:
        event = book.apply(tally("bad", 1))
        if book.sources["bad"].quality < CFG.promote_above:
            assert event is None and book.sources["bad"].demoted
    assert event == "promoted"
    assert not book.sources["bad"].demoted
    assert book.sources["bad"].promotions == 1


def test_outcomes_in_one_tally_count_like_single_ones() -> None:
    one, many = SourceBook(CFG), SourceBook(CFG)
    for _ in range(10):
        one.apply(tally("s", 0, 1))
    many.apply(tally("s", 0, 10))
    assert one.sources["s"].quality == pytest.approx(many.sources["s"].quality)


def test_clock_skew_is_estimated() -> None:
    book = SourceBook(CFG)
    book.apply(tally("late", 5, skew=20.0))
    assert book.sources["late"].skew_s == 20.0
    for _ in range(100):
        book.apply(tally("late", 5, skew=19.0))
    assert book.sources["late"].skew_s == pytest.approx(19.0, abs=0.01)


def test_ungraded_outcomes_leave_the_quality_alone() -> None:
    book = SourceBook(CFG)
    book.apply(SourceTally("s", 0, 0.0, {"late": 3, "repeat": 2}))
    state = book.sources["s"]
    assert state.quality == CFG.initial_quality
    assert state.outcomes == {"late": 3, "repeat": 2}


def test_stations_beyond_max_sources_count_under_their_feed() -> None:
    book = SourceBook(msgspec.structs.replace(CFG, max_sources=2))
    for station in ("a", "b", "c", "d"):
        book.apply(tally(f"tcp/{station}", 1))
    assert set(book.sources) == {"tcp/a", "tcp/b", "tcp"}
    assert book.sources["tcp"].outcomes["agreed"] == 2


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 50),
            st.floats(0.0, 1.0),
        ),
        max_size=60,
    ),
    st.floats(0.001, 1.0),
    st.floats(0.0, 1.0),
)
def test_quality_and_weights_stay_within_bounds(
    tallies: list[tuple[str, int, float]], alpha: float, initial: float
) -> None:
    cfg = msgspec.structs.replace(CFG, ewma_alpha=alpha, initial_quality=initial)
    book = SourceBook(cfg)
    for source, n, mean in tallies:
        book.apply(SourceTally(source, n, mean * n, {"x": n}))
        state = book.sources[source]
        assert 0.0 <= state.quality <= 1.0
        assert 0.0 <= book.weight(state) <= state.base
    snapshot = book.snapshot(1)
    assert snapshot.demoted == {k for k, s in book.sources.items() if s.demoted}


# -- the actor ----------------------------------------------------------------------------


class Inbox:
    """Stands in for a shard: records what it is told."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.event = threading.Event()

    def tell(self, message: Any) -> None:
        self.items.append(message)
        self.event.set()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def actor() -> Iterator[tuple[pykka.ActorRef[Any], Inbox, Clock, Metrics]]:
    metrics, clock, inbox = Metrics(), Clock(), Inbox()
    ref = SourcesActor.start(CFG, metrics, clock)
    ref.tell(Subscribe(inbox))
    try:
        yield ref, inbox, clock, metrics
    finally:
        pykka.ActorRegistry.stop_all()


def test_a_subscriber_gets_the_current_snapshot_then_updates_at_most_every_interval(
    actor: tuple[pykka.ActorRef[Any], Inbox, Clock, Metrics],
) -> None:
    ref, inbox, clock, _ = actor
    ref.tell(SourceOutcomes([tally("s", 3)]))
    ref.ask(SourceTable())  # the actor has handled everything told before
    assert [type(m) for m in inbox.items] == [SourceWeights, SourceWeights]
    assert inbox.items[1].weights == {
        "s": pytest.approx(CFG.initial_quality * 0.95**3 + 1 - 0.95**3)
    }
    ref.tell(SourceOutcomes([tally("s", 3)]))
    ref.ask(SourceTable())
    assert len(inbox.items) == 2  # within publish_interval_s: not yet
    clock.now += CFG.publish_interval_s
    ref.tell(SourceOutcomes([tally("s", 1)]))
    ref.ask(SourceTable())
    assert len(inbox.items) == 3
    versions = [m.version for m in inbox.items]
    assert versions == sorted(versions)
    # Each snapshot is its own dict: a shard holding an old one never sees it change.
    assert inbox.items[1].weights is not inbox.items[2].weights


def test_demotion_is_published_at_once_and_shows_in_metrics_and_table(
    actor: tuple[pykka.ActorRef[Any], Inbox, Clock, Metrics],
) -> None:
    ref, inbox, _, metrics = actor
    ref.tell(SourceOutcomes([tally("good", 5)]))
    ref.tell(SourceOutcomes([tally("bad", 0, CFG.min_outcomes)]))
    table = {row["source"]: row for row in ref.ask(SourceTable())}
    assert table["bad"]["demoted"] and not table["good"]["demoted"]
    assert table["bad"]["outcomes"] == {"jump": CFG.min_outcomes}
    last = inbox.items[-1]
    assert last.demoted == {"bad"}
    assert last.weights["bad"] < 0.1 * last.weights["good"]
    sample = metrics.registry.get_sample_value
    assert sample("aisfusion_source_demoted", {"source": "bad"}) == 1.0
    assert sample("aisfusion_source_demoted", {"source": "good"}) == 0.0
    assert sample("aisfusion_source_demotions_total", {"source": "bad"}) == 1.0
    assert sample("aisfusion_source_outcomes_total", {"source": "bad", "outcome": "jump"}) == float(
        CFG.min_outcomes
    )
    quality = sample("aisfusion_source_quality", {"source": "bad"})
    assert quality is not None and quality < CFG.demote_below
