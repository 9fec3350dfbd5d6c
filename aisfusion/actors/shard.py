"""A shard: one pykka thread hosting the vessel entities of its MMSI range.

Real pykka threads per vessel do not scale, so vessels are plain objects in a dict here, each
touched only by this shard's thread. The shard turns a `RawBatch` into one `Decisions` message
for the batcher (history) and one for the live writer, counting every outcome.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import pykka

from aisfusion.actors.vessel import Outcome, Vessel
from aisfusion.config import ActorsConfig
from aisfusion.messages import Decisions, Position, RawBatch, StaticReport, VesselSeen
from aisfusion.metrics import Metrics


class VesselQuery(msgspec.Struct, frozen=True):
    """Control (ask): a snapshot of one vessel's state, or None if the shard does not host it."""

    mmsi: int


class ShardStats(msgspec.Struct, frozen=True):
    """Control (ask): the shard's own statistics."""


class ShardActor(pykka.ThreadingActor):
    def __init__(
        self,
        index: int,
        config: ActorsConfig,
        history: pykka.ActorRef[Any],
        live: pykka.ActorRef[Any],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.index = index
        self._config = config
        self._history = history
        self._live = live
        self._metrics = metrics
        self._clock = clock
        self.vessels: dict[int, Vessel] = {}
        self.processed = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case RawBatch(messages=messages):
                self._ingest(messages)
                return None
            case VesselQuery(mmsi=mmsi):
                return self._snapshot(mmsi)
            case ShardStats():
                return {
                    "shard": self.index,
                    "vessels": len(self.vessels),
                    "processed": self.processed,
                }
            case _:
                raise TypeError(f"shard {self.index}: unexpected message {message!r}")

    def _ingest(self, messages: list[Any]) -> None:
        started = time.perf_counter()
        cfg = self._config
        now = self._clock()
        rejects: Counter[str] = Counter()
        live: list[Position] = []
        history: list[Position] = []
        touched: dict[int, Vessel] = {}
        static_count = 0
        new_vessels = 0
        stages = [0.0, 0.0, 0.0]
        for msg in messages:
            vessel = self.vessels.get(msg.mmsi)
            if vessel is None:
                vessel = self.vessels[msg.mmsi] = Vessel(msg.mmsi, cfg.window_size)
                new_vessels += 1
            outcome, result = vessel.ingest(
                msg,
                now=now,
                dedup_window_s=cfg.dedup_window_s,
                max_future_skew_s=cfg.max_future_skew_s,
                max_lateness_s=cfg.max_lateness_s,
                rejects=rejects,
                stages=stages,
            )
            if outcome is Outcome.REJECTED:
                continue
            touched[vessel.mmsi] = vessel
            if outcome is Outcome.LIVE:
                live.append(result)  # type: ignore[arg-type]
                history.append(result)  # type: ignore[arg-type]
            elif outcome is Outcome.HISTORY:
                history.append(result)  # type: ignore[arg-type]
            else:
                static_count += 1
        self.processed += len(messages)
        seen = [VesselSeen(v.mmsi, v.first_seen, v.last_seen, v.static) for v in touched.values()]
        if history or seen:
            self._history.tell(Decisions(history, seen))
        if live:
            self._live.tell(Decisions(live, []))
        m = self._metrics
        if history:
            m.decisions.inc(len(history))
        if static_count:
            m.static_reports.inc(static_count)
        if new_vessels:
            m.vessels_active.inc(new_vessels)
        for reason, count in rejects.items():
            m.vessel_rejected.labels(reason).inc(count)
        for stage, seconds in zip(("dedup", "decode", "decide"), stages, strict=True):
            m.stage_seconds.labels(stage).inc(seconds)
        # What the shard itself spends around its vessels: lookups, batching, metrics.
        m.stage_seconds.labels("shard").inc(time.perf_counter() - started - sum(stages))

    def _snapshot(self, mmsi: int) -> dict[str, Any] | None:
        vessel = self.vessels.get(mmsi)
        if vessel is None:
            return None
        static: StaticReport | None = vessel.static
        return {
            "mmsi": mmsi,
            "shard": self.index,
            "first_seen": vessel.first_seen,
            "last_seen": vessel.last_seen,
            "last": msgspec.to_builtins(vessel.last) if vessel.last else None,
            "static": msgspec.to_builtins(static) if static else None,
            "window": len(vessel.recent),
        }
