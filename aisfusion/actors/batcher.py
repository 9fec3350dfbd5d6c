"""The batcher: collects decided positions into bulk history batches for the Postgres writer.

A batch is flushed when it holds `max_rows` positions or its oldest row is `flush_interval_s`
old (checked on every `Tick`). Vessel activity is reduced per MMSI while it waits.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pykka

from aisfusion.config import BatcherConfig
from aisfusion.messages import Decisions, Flush, HistoryBatch, Position, Tick, VesselSeen
from aisfusion.storage.postgres import reduce_vessels
from aisfusion.supervisors.supervisor import EscalatingActor


class BatcherActor(EscalatingActor):
    def __init__(
        self,
        config: BatcherConfig,
        writer: pykka.ActorRef[Any],
        clock: Callable[[], float] = time.monotonic,
        escalate: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__("batcher", escalate)
        self._config = config
        self._writer = writer
        self._clock = clock
        self._positions: list[Position] = []
        self._vessels: list[VesselSeen] = []
        self._oldest: float | None = None
        self._ids = itertools.count(1)

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
        if not self._positions and not self._vessels:
            return
        batch = HistoryBatch(next(self._ids), self._positions, reduce_vessels(self._vessels))
        self._positions, self._vessels = [], []
        self._writer.tell(batch)
