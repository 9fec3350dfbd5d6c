"""The source-quality actor: how much each source is trusted, measured from outcomes.

A source is a feed, or one station of a feed (``feed/station``) when its messages carry a
tag-block ``s:``. Shards tell `SourceOutcomes` (one `SourceTally` per source per batch); the
book keeps, per source, an exponentially weighted quality in [0, 1] from the graded outcomes
(1: agreed with the fused track, 0: a jump or a clock error), an estimate of its clock skew
(receive time minus the messages' own UTC second), and its counters. A source whose quality
falls below `demote_below` (after `min_outcomes`) is demoted: its weight is multiplied by
`demoted_factor` until its quality recovers above `promote_above`.

Weights go back to the shards as `SourceWeights`: a new immutable snapshot each time, never
mutated after. In one process it is published on a `WeightBoard`, a reference the actor swaps
and every shard reads at the start of each batch (one attribute read: no lock, and no waiting
behind a deep mailbox when the feed is busy, which is when a bad source does the most harm);
subscribers (`Subscribe`) are told each snapshot too, for shards elsewhere. Snapshots are
published at most every `publish_interval_s`, and at once when a source is demoted or promoted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pykka

from aisfusion.actors.fusion import ewma
from aisfusion.config import SourcesConfig
from aisfusion.messages import SourceOutcomes, SourceTally, SourceWeights
from aisfusion.metrics import Metrics
from aisfusion.supervisors.supervisor import EscalatingActor

log = logging.getLogger(__name__)


class Subscribe(msgspec.Struct, frozen=True):
    """Control (tell): send weight snapshots to this actor (a shard, at its start)."""

    ref: Any


class SourceTable(msgspec.Struct, frozen=True):
    """Control (ask): the quality table, one dict per source."""


class WeightBoard:
    """The latest published `SourceWeights`. Only the source-quality actor assigns it; a
    reader gets one whole snapshot or the next, never a mix (a reference is swapped)."""

    __slots__ = ("snapshot",)

    def __init__(self) -> None:
        self.snapshot = SourceWeights(0, {})


_KEYS: dict[tuple[str, str], str] = {}
_KEYS_MAX = 65536  # distinct feed/station pairs remembered (a hostile feed may invent many)


def source_key(feed: str, station: str | None) -> str:
    """The source a message is attributed to.

    One string per source, shared: every window entry of every vessel holds its key, and a new
    string per message cost about 60 bytes each (`bench/soak.py`'s heap profile).
    """
    if not station:
        return feed
    key = _KEYS.get((feed, station))
    if key is None:
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()  # shards race here harmlessly: at worst a key is built twice
        key = _KEYS[feed, station] = f"{feed}/{station}"
    return key


def feed_of(key: str) -> str:
    return key.partition("/")[0]


def base_weight(config: SourcesConfig, key: str) -> float:
    """Configured base weight: by source key, else by station, else by feed, else default."""
    weights = config.weights
    if key in weights:
        return weights[key]
    feed, sep, station = key.partition("/")
    if sep and station in weights:
        return weights[station]
    return weights.get(feed, config.default_weight)


@dataclass(slots=True)
class SourceState:
    source: str
    base: float
    quality: float
    scored: int = 0
    demoted: bool = False
    skew_s: float | None = None
    skew_samples: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    demotions: int = 0
    promotions: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    # Observation time and graded outcomes of the latest demotion: how fast it was caught.
    demoted_at: float | None = None
    demoted_after: int | None = None


class SourceBook:
    """The quality table itself: pure bookkeeping, no actor, no clock."""

    def __init__(self, config: SourcesConfig) -> None:
        self.config = config
        self.sources: dict[str, SourceState] = {}

    def state(self, key: str) -> SourceState:
        state = self.sources.get(key)
        if state is None:
            if len(self.sources) >= self.config.max_sources and key != feed_of(key):
                return self.state(feed_of(key))
            cfg = self.config
            state = SourceState(key, base_weight(cfg, key), cfg.initial_quality)
            self.sources[key] = state
        return state

    def weight(self, state: SourceState) -> float:
        factor = self.config.demoted_factor if state.demoted else 1.0
        return state.base * state.quality * factor

    def apply(self, tally: SourceTally) -> str | None:
        """Fold one tally in; return "demoted" or "promoted" when the state changed."""
        cfg = self.config
        s = self.state(tally.source)
        s.outcomes.update(tally.outcomes)
        if tally.last_ts:
            s.last_ts = tally.last_ts if s.last_ts is None else max(s.last_ts, tally.last_ts)
            s.first_ts = tally.last_ts if s.first_ts is None else min(s.first_ts, tally.last_ts)
        if tally.skew_n:
            mean = tally.skew_sum / tally.skew_n
            if s.skew_s is None:
                s.skew_s = mean
            else:
                s.skew_s = ewma(s.skew_s, mean, cfg.ewma_alpha, tally.skew_n)
            s.skew_samples += tally.skew_n
        if tally.scored <= 0:
            return None
        mean = min(1.0, max(0.0, tally.score_sum / tally.scored))
        s.quality = min(1.0, max(0.0, ewma(s.quality, mean, cfg.ewma_alpha, tally.scored)))
        s.scored += tally.scored
        if not s.demoted and s.scored >= cfg.min_outcomes and s.quality < cfg.demote_below:
            s.demoted = True
            s.demotions += 1
            s.demoted_at = s.last_ts
            s.demoted_after = s.scored
            return "demoted"
        if s.demoted and s.quality >= max(cfg.promote_above, cfg.demote_below):
            s.demoted = False
            s.promotions += 1
            return "promoted"
        return None

    def snapshot(self, version: int) -> SourceWeights:
        return SourceWeights(
            version,
            {key: self.weight(s) for key, s in self.sources.items()},
            frozenset(key for key, s in self.sources.items() if s.demoted),
        )

    def table(self) -> list[dict[str, Any]]:
        return [
            {
                "source": s.source,
                "base_weight": s.base,
                "quality": round(s.quality, 4),
                "weight": round(self.weight(s), 4),
                "demoted": s.demoted,
                "graded": s.scored,
                "clock_skew_s": None if s.skew_s is None else round(s.skew_s, 3),
                "demotions": s.demotions,
                "promotions": s.promotions,
                "demoted_at": s.demoted_at,
                "demoted_after": s.demoted_after,
                "first_ts": s.first_ts,
                "last_ts": s.last_ts,
                "outcomes": dict(sorted(s.outcomes.items())),
            }
            for s in sorted(self.sources.values(), key=lambda s: s.source)
        ]


class SourcesActor(EscalatingActor):
    def __init__(
        self,
        config: SourcesConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        board: WeightBoard | None = None,
        escalate: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__("sources", escalate)
        self.book = SourceBook(config)
        self._board = board
        self._metrics = metrics
        self._clock = clock
        self._subscribers: list[pykka.ActorRef[Any]] = []
        self._version = 0
        self._published = -float("inf")
        self._dirty = False

    def on_receive(self, message: Any) -> Any:
        match message:
            case SourceOutcomes(tallies=tallies):
                self._apply(tallies)
                return None
            case Subscribe(ref=ref):
                self._subscribers.append(ref)
                ref.tell(self.book.snapshot(self._version))
                return None
            case SourceTable():
                return self.book.table()
            case _:
                raise TypeError(f"sources: unexpected message {message!r}")

    def _apply(self, tallies: list[SourceTally]) -> None:
        m = self._metrics
        changed = False
        touched: set[str] = set()
        for tally in tallies:
            event = self.book.apply(tally)
            state = self.book.state(tally.source)
            touched.add(state.source)
            for outcome, count in tally.outcomes.items():
                m.source_outcomes.labels(state.source, outcome).inc(count)
            if event == "demoted":
                changed = True
                m.source_demotions.labels(state.source).inc()
                log.warning(
                    "sources: %s demoted (quality %.3f after %d graded outcomes)",
                    state.source,
                    state.quality,
                    state.scored,
                )
            elif event == "promoted":
                changed = True
                m.source_promotions.labels(state.source).inc()
                log.info("sources: %s promoted (quality %.3f)", state.source, state.quality)
        for key in touched:
            state = self.book.sources[key]
            m.source_quality.labels(key).set(state.quality)
            m.source_weight.labels(key).set(self.book.weight(state))
            m.source_demoted.labels(key).set(1.0 if state.demoted else 0.0)
            if state.skew_s is not None:
                m.source_clock_skew.labels(key).set(state.skew_s)
        self._dirty = self._dirty or bool(touched)
        now = self._clock()
        due = now - self._published >= self.book.config.publish_interval_s
        if changed or (self._dirty and due):
            self._publish(now)

    def _publish(self, now: float) -> None:
        self._version += 1
        snapshot = self.book.snapshot(self._version)
        if self._board is not None:
            self._board.snapshot = snapshot
        for ref in self._subscribers:
            ref.tell(snapshot)
        self._published = now
        self._dirty = False
