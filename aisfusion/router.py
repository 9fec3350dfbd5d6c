"""The seam between the feed loop and the shards: raw messages grouped by MMSI.

Routing uses only the MMSI extracted from the payload, so the contract (`RawBatch` to the shard
owning `mmsi % shards`) stays the same if a shard later lives in another process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pykka

from aisfusion.messages import RawBatch, RawMessage
from aisfusion.metrics import Metrics


def shard_of(mmsi: int, shards: int) -> int:
    return mmsi % shards


class Router:
    """Called on the feed loop with each chunk's messages; never blocks (pykka tell)."""

    def __init__(self, shards: Sequence[pykka.ActorRef[Any]], metrics: Metrics) -> None:
        self._shards = list(shards)
        self._stage = metrics.stage_seconds.labels("routing")
        self._dropped = metrics.router_dropped

    def __call__(
        self,
        messages: list[RawMessage],
        epochs: dict[int, int] | None = None,
        of: int = 0,
        *,
        now: float | None = None,
    ) -> None:
        """Hand `messages` to their shards; `epochs` (partition -> ownership epoch, of `of`
        partitions) travels with them when they come from the log, `now` (event time) when
        they come from an archive."""
        started = time.perf_counter()
        n = len(self._shards)
        if n == 1:
            self._tell(self._shards[0], RawBatch(messages, epochs, of, now))
        else:
            groups: list[list[RawMessage]] = [[] for _ in range(n)]
            for msg in messages:
                groups[msg.mmsi % n].append(msg)
            for shard, group in zip(self._shards, groups, strict=True):
                if group:
                    self._tell(shard, RawBatch(group, epochs, of, now))
        self._stage.inc(time.perf_counter() - started)

    def _tell(self, shard: pykka.ActorRef[Any], batch: RawBatch) -> None:
        try:
            shard.tell(batch)
        except pykka.ActorDeadError:
            # It crashed and the service is stopping: the other shards still get theirs.
            self._dropped.inc(len(batch.messages))
