"""The batcher: collects decided positions into bulk history batches for the Postgres writer.

A batch is flushed when it holds `max_rows` positions or its oldest row is `flush_interval_s`
old (checked on every `Tick`). Vessel activity is reduced per MMSI while it waits.

In a worker process every shard passes on the log intake's `Mark`s; the smallest mark all
shards have passed rides on the next batch as its `upto` (an empty batch when nothing else is
waiting), so storage can tell the intake which log messages are committed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pykka

from aisfusion.config import BatcherConfig
from aisfusion.messages import Decisions, Flush, HistoryBatch, Mark, Position, Tick, VesselSeen
from aisfusion.storage.postgres import reduce_vessels
from aisfusion.supervisors.supervisor import EscalatingActor


class BatcherActor(EscalatingActor):
    def __init__(
        self,
        config: BatcherConfig,
        writer: pykka.ActorRef[Any],
        clock: Callable[[], float] = time.monotonic,
        escalate: Callable[[str], None] | None = None,
        shards: int = 0,
    ) -> None:
        super().__init__("batcher", escalate)
        self._config = config
        self._writer = writer
        self._clock = clock
        self._positions: list[Position] = []
        self._vessels: list[VesselSeen] = []
        self._oldest: float | None = None
        self._ids = itertools.count(1)
        self._marks = [0] * shards  # the last mark from each shard (worker processes)
        self._upto = 0  # the smallest of them
        self._sent_upto = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case Decisions(positions=positions, vessels=vessels):
                if self._oldest is None:
                    self._oldest = self._clock()
                self._positions.extend(positions)
                self._vessels.extend(vessels)
                if len(self._positions) >= self._config.max_rows:
                    self._flush()
                elif len(self._vessels) >= 4 * self._config.max_rows:
                    self._vessels = reduce_vessels(self._vessels)
                return None
            case Mark(upto=upto, shard=shard):
                self._marks[shard] = upto
                self._upto = min(self._marks)
                if self._upto > self._sent_upto and self._oldest is None:
                    self._flush()  # nothing waits for a flush: carry the mark on its own
                return None
            case Tick():
                oldest = self._oldest
                if oldest is not None and self._clock() - oldest >= self._config.flush_interval_s:
                    self._flush()
                return None
            case Flush():
                # Flush, then wait until the writer has handled everything sent before.
                self._flush()
                return self._writer.ask(Flush())
            case _:
                raise TypeError(f"batcher: unexpected message {message!r}")

    def _flush(self) -> None:
        self._oldest = None
        if not self._positions and not self._vessels and self._upto == self._sent_upto:
            return
        batch = HistoryBatch(
            next(self._ids), self._positions, reduce_vessels(self._vessels), self._upto
        )
        self._sent_upto = self._upto
        self._positions, self._vessels = [], []
        self._writer.tell(batch)
