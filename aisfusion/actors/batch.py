"""The per-batch contract between a shard and its vessel entities.

A shard builds one `Batch` per `RawBatch`: what every vessel needs to decide (the time, the
settings, the source weights of the moment) and what they decide (history rows, live decisions,
reject reasons, per-source outcome tallies). Plain objects with slots: one is made per batch,
a `Tally` per source per batch, and vessels append to them without allocating.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from aisfusion.config import ActorsConfig, FusionConfig
from aisfusion.messages import Position, SourceTally


class Tally:
    """One source's outcomes within one batch (see `messages.SourceTally`)."""

    __slots__ = ("last_ts", "outcomes", "score_sum", "scored", "skew_n", "skew_sum")

    def __init__(self) -> None:
        self.scored = 0
        self.score_sum = 0.0
        self.outcomes: Counter[str] = Counter()
        self.skew_n = 0
        self.skew_sum = 0.0
        self.last_ts = 0.0

    def grade(self, outcome: str, value: float) -> None:
        self.scored += 1
        self.score_sum += value
        self.outcomes[outcome] += 1

    def freeze(self, source: str) -> SourceTally:
        return SourceTally(
            source,
            self.scored,
            self.score_sum,
            dict(self.outcomes),
            self.skew_n,
            self.skew_sum,
            self.last_ts,
        )


class Batch:
    """What a shard hands its vessels for one batch of messages, and what they hand back."""

    __slots__ = (
        "actors",
        "corroborated",
        "demoted",
        "epochs",
        "fallback_weight",
        "fusion",
        "history",
        "live",
        "now",
        "overlap",
        "partitions",
        "rejects",
        "stages",
        "statics",
        "tallies",
        "weights",
    )

    def __init__(
        self,
        now: float,
        actors: ActorsConfig,
        fusion_config: FusionConfig,
        weights: Mapping[str, float] | None = None,
        demoted: frozenset[str] = frozenset(),
        fallback_weight: Callable[[str], float] | None = None,
        stages: list[float] | None = None,
        epochs: dict[int, int] | None = None,
        partitions: int = 0,
    ) -> None:
        self.now = now
        # Log partition -> ownership epoch, stored with each position decided (worker only).
        self.epochs = epochs
        self.partitions = partitions
        self.actors = actors
        self.fusion = fusion_config
        self.weights: Mapping[str, float] = weights if weights is not None else {}
        self.demoted = demoted
        self.fallback_weight = fallback_weight
        self.stages = stages
        self.history: list[Position] = []
        self.live: list[Position] = []
        self.statics = 0
        self.corroborated = 0
        self.rejects: Counter[str] = Counter()
        self.tallies: dict[str, Tally] = {}
        self.overlap: Counter[tuple[str, str]] = Counter()

    def epoch(self, mmsi: int) -> int:
        """The ownership epoch under which `mmsi` is decided (0 without the log)."""
        return self.epochs.get(mmsi % self.partitions, 0) if self.epochs else 0

    def tally(self, key: str) -> Tally:
        t = self.tallies.get(key)
        if t is None:
            t = self.tallies[key] = Tally()
        return t

    def weight(self, key: str) -> float:
        w = self.weights.get(key)
        if w is None:
            w = self.fallback_weight(key) if self.fallback_weight is not None else 1.0
        return w
