"""A shard: one pykka thread hosting the vessel entities of its MMSI range.

Real pykka threads per vessel do not scale, so vessels are plain objects here, each touched only
by this shard's thread. The shard turns a `RawBatch` into one `Decisions` message for the
batcher (every accepted observation: history) and one for the live writer (changed live
decisions), and tells the source-quality actor what each source's messages came to.

Lifecycle of the vessel entities (virtual actors): created on the first message of their MMSI,
rehydrated from the live record in Redis when one exists (through the storage bridge, one
pipelined read per batch, only for MMSIs known to have a record: those in the activity index
at start, given by the app, and those passivated since), passivated when idle for a few of
their reporting intervals (an anchored ship reports every 3 minutes, a fast one every 2 seconds)
and, least recently used first, when the shard holds more than its share of
`actors.max_vessels`. A passivated vessel's decision is its live record; the last few thousand
are also kept in memory (with their static data), so a vessel that comes back before the live
writer's next flush never sees an older record.

Static data (name, ship type, ...) of a vessel created without it in memory is read back from
PostgreSQL without holding up ingest (`actors.static_loader`).

In a worker process (workers.mode = "jetstream") vessels move between processes with their
log partitions: a `Claim` names the vessels of a partition taken over that have a live record
(looked up in Redis when they first report here, as at start), a `Release` drops the vessels of
partitions given away, and a `Mark` travels behind the batches it covers to the batcher, which
tells storage how far the log may be acknowledged.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
import pykka

from aisfusion.actors.batch import Batch
from aisfusion.actors.sources import Subscribe, WeightBoard, base_weight
from aisfusion.actors.static_loader import StaticLoaded, StaticLoader
from aisfusion.actors.vessel import Vessel
from aisfusion.config import ActorsConfig, FusionConfig, SourcesConfig
from aisfusion.messages import (
    Claim,
    Decisions,
    Mark,
    Position,
    RawBatch,
    Release,
    SourceOutcomes,
    SourceWeights,
    StaticReport,
    Tick,
    VesselSeen,
)
from aisfusion.metrics import Metrics
from aisfusion.router import shard_of
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.postgres import PostgresStore
from aisfusion.storage.redis import RedisStore
from aisfusion.supervisors.supervisor import EscalatingActor

log = logging.getLogger(__name__)

_PARKED_MAX = 4096  # recently passivated decisions kept in memory
_SWEEP_INTERVAL_S = 1.0
_REHYDRATE_TIMEOUT_S = 2.0
_REHYDRATE_BACKOFF_S = 5.0  # after a failed read, new vessels start fresh for this long


class VesselQuery(msgspec.Struct, frozen=True):
    """Control (ask): a snapshot of one vessel's state, or None if the shard does not host it."""

    mmsi: int


class ShardStats(msgspec.Struct, frozen=True):
    """Control (ask): the shard's own statistics."""


def known_by_shard(mmsis: list[int], shards: int) -> list[set[int]]:
    """MMSIs with a live record (`RedisStore.live_mmsis`), split by the shard that owns them."""
    out: list[set[int]] = [set() for _ in range(shards)]
    for mmsi in mmsis:
        out[shard_of(mmsi, shards)].add(mmsi)
    return out


def position_from_record(mmsi: int, record: dict[str, str]) -> Position | None:
    """A live record (see `storage.redis.live_record`) back as the decision it was."""
    try:
        ts = float(record["ts"])
        return Position(
            mmsi=mmsi,
            ts=ts,
            lat=float(record["lat"]),
            lon=float(record["lon"]),
            sog=float(record["sog"]) if "sog" in record else None,
            cog=float(record["cog"]) if "cog" in record else None,
            heading=int(record["hdg"]) if "hdg" in record else None,
            nav_status=int(record["nav"]) if "nav" in record else None,
            msg_type=int(record.get("typ", 0)),  # not in the record: class unknown
            source=record["src"],
            station=record.get("stn"),
            arrival=ts,
            payload_crc=int(record.get("crc", 0)),
        )
    except (KeyError, ValueError):
        return None


class ShardActor(EscalatingActor):
    def __init__(
        self,
        index: int,
        config: ActorsConfig,
        history: pykka.ActorRef[Any],
        live: pykka.ActorRef[Any],
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        *,
        fusion: FusionConfig | None = None,
        sources_config: SourcesConfig | None = None,
        sources: pykka.ActorRef[Any] | None = None,
        store: RedisStore | None = None,
        bridge: AsyncBridge | None = None,
        static_store: tuple[PostgresStore, AsyncBridge] | None = None,
        shards: int = 1,
        known: set[int] | None = None,
        weights: WeightBoard | None = None,
        escalate: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(f"shard-{index}", escalate)
        self.index = index
        self._config = config
        self._fusion = fusion if fusion is not None else FusionConfig()
        self._sources_config = sources_config if sources_config is not None else SourcesConfig()
        self._history = history
        self._live = live
        self._sources = sources
        self._store = store
        self._bridge = bridge
        self._statics = (
            StaticLoader(*static_store, metrics, self._count, index)
            if static_store is not None
            else None
        )
        self._metrics = metrics
        self._clock = clock
        # Event time (`aisfusion import`): the watermark the last batch carried. Once set, it
        # is this shard's clock, for lateness, idleness and passivation alike.
        self._event_now: float | None = None
        self._max_vessels = max(1, math.ceil(config.max_vessels / max(1, shards)))
        self.vessels: OrderedDict[int, Vessel] = OrderedDict()  # least recently used first
        self._parked: OrderedDict[int, tuple[Position | None, StaticReport | None]] = OrderedDict()
        # MMSIs that have a live record to rehydrate from.
        self._known: set[int] = known if known is not None else set()
        # In a worker another process may have decided any vessel: look every new one up.
        self._board = weights
        self._weights = SourceWeights(0, {})
        self._fallback: dict[str, float] = {}
        self._next_sweep = -math.inf
        self._redis_retry_at = -math.inf
        self.processed = 0
        self.stats: Counter[str] = Counter()

    def on_start(self) -> None:
        # With a board the weights are read from it; else they are told.
        if self._sources is not None and self._board is None:
            self._sources.tell(Subscribe(self.actor_ref))

    def on_receive(self, message: Any) -> Any:
        match message:
            case RawBatch(messages=messages, epochs=epochs, partitions=partitions, now=now):
                if now is not None:
                    self._event_now = now  # not the max: each archive file has its own clock
                self._ingest(messages, epochs, partitions)
                return None
            case Mark(upto=upto):
                self._history.tell(Mark(upto, self.index))
                return None
            case Claim(known=known):
                self._known |= known
                return None
            case Release(partitions=partitions, of=of):
                return self._release(partitions, of)
            case SourceWeights():
                self._weights = message  # a fresh immutable snapshot: swap the reference
                return None
            case StaticLoaded():
                if self._statics is not None:
                    self._statics.loaded(message, self.vessels, self._now(), self.actor_ref)
                return None
            case Tick():
                self._sweep(self._now())
                return None
            case VesselQuery(mmsi=mmsi):
                return self._snapshot(mmsi)
            case ShardStats():
                return {
                    "shard": self.index,
                    "vessels": len(self.vessels),
                    "processed": self.processed,
                    **dict(sorted(self.stats.items())),
                }
            case _:
                raise TypeError(f"shard {self.index}: unexpected message {message!r}")

    def _now(self) -> float:
        return self._clock() if self._event_now is None else self._event_now

    def _fallback_weight(self, key: str) -> float:
        """Weight of a source the quality actor has not published yet."""
        w = self._fallback.get(key)
        if w is None:
            cfg = self._sources_config
            w = self._fallback[key] = base_weight(cfg, key) * cfg.initial_quality
        return w

    def _ingest(
        self, messages: list[Any], epochs: dict[int, int] | None = None, partitions: int = 0
    ) -> None:
        started = time.perf_counter()
        now = self._now()
        stages = [0.0, 0.0, 0.0]
        weights = self._board.snapshot if self._board is not None else self._weights
        b = Batch(
            now,
            self._config,
            self._fusion,
            weights.weights,
            weights.demoted,
            self._fallback_weight,
            stages,
            epochs,
            partitions,
        )
        vessels = self.vessels
        missing = {msg.mmsi for msg in messages if msg.mmsi not in vessels}
        if missing:
            self._activate(missing, now)
        touched: dict[int, Vessel] = {}
        for msg in messages:
            vessel = vessels[msg.mmsi]
            vessels.move_to_end(msg.mmsi)
            vessel.touched = now
            accepted = len(b.history) + b.statics
            vessel.ingest(msg, b)
            if len(b.history) + b.statics != accepted:
                touched[vessel.mmsi] = vessel
        self.processed += len(messages)
        seen = [VesselSeen(v.mmsi, v.first_seen, v.last_seen, v.static) for v in touched.values()]
        if b.history or seen:
            self._history.tell(Decisions(b.history, seen))
        if b.live:
            self._live.tell(Decisions(b.live, []))
        if b.tallies and self._sources is not None:
            self._sources.tell(SourceOutcomes([t.freeze(k) for k, t in b.tallies.items()]))
        if len(vessels) > self._max_vessels:
            for _ in range(len(vessels) - self._max_vessels):
                self._passivate(next(iter(vessels)), "lru")
        self._sweep(now)
        m = self._metrics
        if b.history:
            m.decisions.inc(len(b.history))
        if b.live:
            m.live_decisions.inc(len(b.live))
        if b.statics:
            m.static_reports.inc(b.statics)
        if b.corroborated:
            m.corroborated.inc(b.corroborated)
        for reason, count in b.rejects.items():
            m.vessel_rejected.labels(reason).inc(count)
        for (source, other), count in b.overlap.items():
            m.feed_overlap.labels(source, other).inc(count)
        for stage, seconds in zip(("dedup", "decode", "decide"), stages, strict=True):
            m.stage_seconds.labels(stage).inc(seconds)
        # What the shard itself spends around its vessels: lookups, batching, metrics.
        m.stage_seconds.labels("shard").inc(time.perf_counter() - started - sum(stages))

    # -- lifecycle -------------------------------------------------------------------------

    def _activate(self, mmsis: set[int], now: float) -> None:
        saved: dict[int, tuple[Position | None, StaticReport | None]] = {}
        lookup: list[int] = []
        hits = misses = 0
        for mmsi in mmsis:
            parked = self._parked.pop(mmsi, None)
            if parked is not None:
                saved[mmsi] = parked
                hits += 1
            elif mmsi in self._known:
                lookup.append(mmsi)
            else:
                misses += 1  # never saved: a new vessel
        if lookup and now < self._redis_retry_at:
            misses += len(lookup)  # Redis failed a moment ago: start fresh for now
            self._count("rehydrate_skipped", len(lookup))
        elif lookup:
            found = self._read_live(sorted(lookup), now)  # None: the read failed (counted)
            if found is not None:
                hits += len(found)
                misses += len(lookup) - len(found)
                saved.update((mmsi, (position, None)) for mmsi, position in found.items())
        cfg = self._config
        for mmsi in mmsis:
            vessel = Vessel(mmsi, cfg.window_size, self._fusion.quarantine_size)
            position, static = saved.get(mmsi, (None, None))
            if position is not None:
                vessel.restore(position)
            vessel.static = static
            vessel.touched = now
            self.vessels[mmsi] = vessel
        m = self._metrics
        m.vessel_activations.inc(len(mmsis))
        m.vessels_active.inc(len(mmsis))
        self._count("activations", len(mmsis))
        if hits:
            m.vessel_rehydrations.labels("hit").inc(hits)
            self._count("rehydrate_hits", hits)
        if misses:
            m.vessel_rehydrations.labels("miss").inc(misses)
            self._count("rehydrate_misses", misses)
        if self._statics is not None:
            wanted = [mmsi for mmsi in mmsis if self.vessels[mmsi].static is None]
            self._statics.want(wanted, now, self.actor_ref)

    def _read_live(self, mmsis: list[int], now: float) -> dict[int, Position] | None:
        """The saved decisions of `mmsis` found in Redis; None if Redis cannot be read."""
        store, bridge = self._store, self._bridge
        if store is None or bridge is None:
            return {}
        try:
            records = bridge.run(store.live_records(mmsis), _REHYDRATE_TIMEOUT_S)
        except Exception as exc:  # storage trouble must not stop ingest: start fresh
            self._redis_retry_at = now + _REHYDRATE_BACKOFF_S
            self._metrics.vessel_rehydrations.labels("error").inc(len(mmsis))
            self._count("rehydrate_errors", len(mmsis))
            log.warning(
                "shard %d: cannot read %d live records, new vessels start fresh for %.0f s: %r",
                self.index,
                len(mmsis),
                _REHYDRATE_BACKOFF_S,
                exc,
            )
            return None
        found = {mmsi: position_from_record(mmsi, record) for mmsi, record in records.items()}
        return {mmsi: position for mmsi, position in found.items() if position is not None}

    def _sweep(self, now: float) -> None:
        """Passivate vessels idle for longer than their class allows (oldest first)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL_S
        cfg = self._config
        expired = []
        for mmsi, vessel in self.vessels.items():
            idle = now - vessel.touched
            if idle < cfg.passivate_min_s:
                break  # least recently used first: the rest are busier still
            if idle >= cfg.passivate_intervals * vessel.interval_s:
                expired.append(mmsi)
        for mmsi in expired:
            self._passivate(mmsi, "idle")

    def _passivate(self, mmsi: int, reason: str) -> None:
        vessel = self.vessels.pop(mmsi)
        self._parked[mmsi] = (vessel.last, vessel.static)
        if vessel.last is not None:
            self._known.add(mmsi)
        if len(self._parked) > _PARKED_MAX:
            self._parked.popitem(last=False)
        self._metrics.vessel_passivations.labels(reason).inc()
        self._metrics.vessels_active.dec()
        self._count(f"passivations_{reason}", 1)

    def _release(self, partitions: frozenset[int], of: int) -> int:
        """Forget the vessels of `partitions` (live and parked); returns how many were live."""
        gone = [mmsi for mmsi in self.vessels if mmsi % of in partitions]
        for mmsi in gone:
            del self.vessels[mmsi]
        for mmsi in [mmsi for mmsi in self._parked if mmsi % of in partitions]:
            del self._parked[mmsi]
        if gone:
            self._metrics.vessels_active.dec(len(gone))
            self._count("released", len(gone))
        return len(gone)

    def _count(self, name: str, n: int) -> None:
        self.stats[name] += n

    def _snapshot(self, mmsi: int) -> dict[str, Any] | None:
        vessel = self.vessels.get(mmsi)
        if vessel is None:
            return None
        static: StaticReport | None = vessel.static
        return {
            "mmsi": mmsi,
            "shard": self.index,
            "last": msgspec.to_builtins(vessel.last) if vessel.last else None,
            "static": msgspec.to_builtins(static) if static else None,
            **vessel.snapshot(),
        }
