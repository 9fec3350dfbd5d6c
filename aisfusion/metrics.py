"""Prometheus metrics, built in one place against a registry passed in (a fresh one per test).

Conventions: one ``aisfusion_`` prefix, base units in names, ``_total`` counters, ``_seconds``
histograms, dimensions in labels, never an MMSI label. Hot paths count in plain ints and add
to these once per chunk or batch.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily

from aisfusion import __version__

_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Socket read -> stored: milliseconds when healthy, minutes to hours when replayed from the DLQ.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)  # fmt: skip


class _Arrived(Protocol):
    @property
    def arrival(self) -> float: ...


class BulkHistogram:
    """A histogram with one label that takes a whole batch of observations at once.

    `prometheus_client.Histogram.observe` costs a lock and a bucket scan per value; the
    writers see thousands of positions per batch, so they count into local buckets and merge
    once (`observe_many`). Exposed as an ordinary Prometheus histogram.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelname: str,
        buckets: Sequence[float],
        labels: Iterable[str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._doc = documentation
        self._labelname = labelname
        self._bounds = sorted(buckets)
        self._lock = threading.Lock()
        self._series: dict[str, tuple[list[int], float]] = {}
        for label in labels:  # series exist (at zero) before the first observation
            self._series[label] = ([0] * (len(self._bounds) + 1), 0.0)
        registry.register(self)

    def observe_many(self, label: str, values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = [0] * (len(bounds) + 1)
        total = 0.0
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
            total += value
        with self._lock:
            old, old_total = self._series.get(label, ([0] * len(counts), 0.0))
            self._series[label] = (
                [a + b for a, b in zip(old, counts, strict=True)],
                old_total + total,
            )

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._doc, labels=[self._labelname])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=[self._labelname])
        with self._lock:
            series = dict(self._series)
        for label, (counts, total) in sorted(series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip([*self._bounds, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric([label], buckets, total)
        yield family


class Metrics:
    """Every metric the service exposes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.feed_connections = Gauge(
            "aisfusion_feed_connections", "Open feed connections", ["source"], registry=r
        )
        self.feed_bytes = Counter(
            "aisfusion_feed_bytes_total", "Bytes read from feeds", ["source"], registry=r
        )
        self.feed_lines = Counter(
            "aisfusion_feed_lines_total", "Lines read from feeds", ["source"], registry=r
        )
        self.feed_messages = Counter(
            "aisfusion_feed_messages_total",
            "Complete AIS messages (fragments joined) handed to the shards",
            ["source"],
            registry=r,
        )
        self.feed_rejected = Counter(
            "aisfusion_feed_rejected_total",
            "Lines or fragment groups skipped, by reason",
            ["source", "reason"],
            registry=r,
        )
        self.vessel_rejected = Counter(
            "aisfusion_vessel_rejected_total",
            "Messages a vessel actor did not accept, by reason",
            ["reason"],
            registry=r,
        )
        self.decisions = Counter(
            "aisfusion_decisions_total", "Positions decided by vessel actors", registry=r
        )
        self.static_reports = Counter(
            "aisfusion_static_reports_total", "Static/voyage reports decoded", registry=r
        )
        self.vessels_active = Gauge(
            "aisfusion_vessels_active", "Vessel entities live in the shards", registry=r
        )
        self.batch_flushes = Counter(
            "aisfusion_batch_flushes_total",
            "Batches written to a store",
            ["store", "outcome"],
            registry=r,
        )
        self.batch_rows = Counter(
            "aisfusion_batch_rows_total", "Rows written to a store", ["store"], registry=r
        )
        self.batch_duration = Histogram(
            "aisfusion_batch_flush_duration_seconds",
            "Time to write one batch to a store",
            ["store"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Counter(
            "aisfusion_stage_seconds_total",
            "CPU-side time spent per pipeline stage",
            ["stage"],
            registry=r,
        )
        # supervision
        self.writer_restarts = Counter(
            "aisfusion_writer_restarts_total",
            "Storage writer restarts by their supervisor",
            ["writer"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "aisfusion_breaker_state",
            "1 for the current state of each circuit breaker, 0 for the others",
            ["breaker", "state"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "aisfusion_breaker_transitions_total",
            "Circuit breaker state changes",
            ["breaker", "to"],
            registry=r,
        )
        self.breaker_open_seconds = Counter(
            "aisfusion_breaker_open_seconds_total",
            "Time circuit breakers spent open or half-open (counted when they leave the state)",
            ["breaker"],
            registry=r,
        )
        self.dead_letter_diverted = Counter(
            "aisfusion_dead_letter_diverted_batches_total",
            "History batches diverted away from PostgreSQL, by where they went",
            ["target"],
            registry=r,
        )
        self.dead_letter_batches = Gauge(
            "aisfusion_dead_letter_batches",
            "Batches in the dead-letter queue, by state",
            ["state"],
            registry=r,
        )
        self.spool_batches = Gauge(
            "aisfusion_spool_batches", "Batches in the local spool", registry=r
        )
        self.inflight_batches = Gauge(
            "aisfusion_inflight_batches",
            "History batches handed to the Postgres writer and not yet confirmed",
            registry=r,
        )
        # feeds
        self.feed_reconnects = Counter(
            "aisfusion_feed_reconnects_total",
            "Connection attempts of a TCP client feed after its first (drop, failure, idle)",
            ["source"],
            registry=r,
        )
        self.feed_idle_closed = Counter(
            "aisfusion_feed_idle_closed_total",
            "Feed connections closed for sending no complete line within idle_timeout_s",
            ["source"],
            registry=r,
        )
        self.feed_last_message_age = Gauge(
            "aisfusion_feed_last_message_age_seconds",
            "Seconds since the source's last message (since its start if none yet)",
            ["source"],
            registry=r,
        )
        self.feed_overlap = Counter(
            "aisfusion_feed_overlap_total",
            "Messages from source dropped as duplicates of the same payload first heard "
            "from other within the dedup window",
            ["source", "other"],
            registry=r,
        )
        # fusion
        self.live_decisions = Counter(
            "aisfusion_live_decisions_total",
            "Changes of a vessel's live position decided by its vessel actor",
            registry=r,
        )
        self.corroborated = Counter(
            "aisfusion_fusion_corroborated_total",
            "Quarantined jumps accepted after another source corroborated them",
            registry=r,
        )
        self.vessel_activations = Counter(
            "aisfusion_vessel_activations_total",
            "Vessel actors created in a shard (new or rehydrated)",
            registry=r,
        )
        self.vessel_passivations = Counter(
            "aisfusion_vessel_passivations_total",
            "Vessel actors passivated, by reason (idle, lru)",
            ["reason"],
            registry=r,
        )
        self.vessel_rehydrations = Counter(
            "aisfusion_vessel_rehydrations_total",
            "Lookups of a saved decision when a vessel actor is created, by result "
            "(hit, miss, error)",
            ["result"],
            registry=r,
        )
        self.vessel_static_loads = Counter(
            "aisfusion_vessel_static_loads_total",
            "Static data of a new vessel actor read from PostgreSQL, by result (hit, miss, error)",
            ["result"],
            registry=r,
        )
        self.source_quality = Gauge(
            "aisfusion_source_quality",
            "Exponentially weighted quality of a source, 0..1",
            ["source"],
            registry=r,
        )
        self.source_weight = Gauge(
            "aisfusion_source_weight",
            "Effective weight of a source in fusion scores (base x quality, reduced if demoted)",
            ["source"],
            registry=r,
        )
        self.source_demoted = Gauge(
            "aisfusion_source_demoted",
            "1 while a source is demoted, else 0",
            ["source"],
            registry=r,
        )
        self.source_demotions = Counter(
            "aisfusion_source_demotions_total", "Demotions of a source", ["source"], registry=r
        )
        self.source_promotions = Counter(
            "aisfusion_source_promotions_total",
            "Promotions of a demoted source that recovered",
            ["source"],
            registry=r,
        )
        self.source_clock_skew = Gauge(
            "aisfusion_source_clock_skew_seconds",
            "Estimated receive-time skew of a source against the messages' own UTC seconds",
            ["source"],
            registry=r,
        )
        self.source_outcomes = Counter(
            "aisfusion_source_outcomes_total",
            "Outcomes of a source's messages in the vessel actors",
            ["source", "outcome"],
            registry=r,
        )
        # operations
        self.end_to_end_latency = BulkHistogram(
            "aisfusion_end_to_end_latency_seconds",
            "Time from reading a position's line off the socket until it was stored: "
            "store=redis the live record written, store=postgres the history row committed",
            "store",
            _LATENCY_BUCKETS,
            ("redis", "postgres"),
            r,
        )
        self.newest_stored_arrival = Gauge(
            "aisfusion_stored_arrival_timestamp_seconds",
            "Socket-read time (UNIX seconds) of the newest position stored in each store",
            ["store"],
            registry=r,
        )
        self.mailbox_messages = Gauge(
            "aisfusion_actor_mailbox_messages",
            "Messages waiting in the mailboxes of each kind of actor (summed over shards)",
            ["actor"],
            registry=r,
        )
        self.ready = Gauge(
            "aisfusion_ready", "1 while the service is ready (as /readyz), else 0", registry=r
        )
        self.dead_letter_rows = Gauge(
            "aisfusion_dead_letter_rows", "Positions held in the dead-letter queue", registry=r
        )
        self.dead_letter_oldest_age = Gauge(
            "aisfusion_dead_letter_oldest_age_seconds",
            "Age of the oldest dead-letter queue entry (0 when empty)",
            registry=r,
        )
        self.redis_memory_used = Gauge(
            "aisfusion_redis_memory_used_bytes",
            "Memory used by the Redis server (INFO used_memory), read at most every few seconds",
            registry=r,
        )
        self.redis_memory_max = Gauge(
            "aisfusion_redis_memory_max_bytes",
            "The Redis server's maxmemory (0: no limit configured)",
            registry=r,
        )
        self.control_commands = Counter(
            "aisfusion_control_commands_total",
            "Commands served on the control socket (aisfusion shell), by command and outcome",
            ["command", "outcome"],
            registry=r,
        )
        Info("aisfusion_build", "Version of the running aisfusion", registry=r).info(
            {"version": __version__}
        )
        ProcessCollector(namespace="aisfusion", registry=r)  # CPU, memory, open fds
        self.router_dropped = Counter(
            "aisfusion_router_dropped_messages_total",
            "Messages the router could not hand to their shard because it crashed (the "
            "crash stops the service)",
            registry=r,
        )
        self.gc_full_seconds = Histogram(
            "aisfusion_gc_full_collection_seconds",
            "Duration of the timed full garbage collections (runtime.gc_interval_s); the GIL "
            "is held throughout, so every thread waits this long",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.gc_full_collected = Counter(
            "aisfusion_gc_full_collected_objects_total",
            "Unreachable objects found by the timed full garbage collections",
            registry=r,
        )
        # Until the first write, "newest stored" is the start: lag counts from there.
        started = time.time()
        self._newest_stored = {"redis": started, "postgres": started}
        for store in self._newest_stored:
            self.newest_stored_arrival.labels(store).set(started)
        # storage
        self.maintenance_runs = Counter(
            "aisfusion_maintenance_runs_total",
            "Housekeeping steps run (storage/retention.py), by task and outcome",
            ["task", "outcome"],
            registry=r,
        )
        self.history_partitions = Gauge(
            "aisfusion_history_partitions", "Partitions of the positions history table", registry=r
        )
        self.history_partitions_changed = Counter(
            "aisfusion_history_partitions_changed_total",
            "Partitions of the positions history created (ahead or on demand) and dropped "
            "(retention)",
            ["change"],
            registry=r,
        )
        self.vessels_soft_deleted = Counter(
            "aisfusion_vessels_soft_deleted_total",
            "Vessels soft-deleted in PostgreSQL after retention.vessel_inactive_days",
            registry=r,
        )
        self.live_vessels_removed = Counter(
            "aisfusion_live_vessels_removed_total",
            "Vessels removed from the live picture (geo, activity index, record) after "
            "retention.live_inactive_s",
            registry=r,
        )
        self.redis_layout = Info(
            "aisfusion_redis_layout", "The live record layout and Redis mode in use", registry=r
        )
        # the JetStream log (jetstream/)
        self.log_published = Counter(
            "aisfusion_log_published_messages_total",
            "Raw messages the feeds published to the log and the server acknowledged",
            registry=r,
        )
        self.log_publish_errors = Counter(
            "aisfusion_log_publish_errors_total",
            "Publishes to the log that failed or timed out (sent again), by reason",
            ["reason"],
            registry=r,
        )
        self.log_buffered = Gauge(
            "aisfusion_log_buffered_messages",
            "Raw messages read from the feeds and not yet acknowledged by the log",
            registry=r,
        )
        self.log_dropped = Counter(
            "aisfusion_log_dropped_messages_total",
            "Raw messages dropped because the log was unreachable and the buffer full "
            "(nats.buffer_max_messages)",
            registry=r,
        )
        self.log_connected = Gauge(
            "aisfusion_log_connected",
            "1 while this process is connected to NATS (role: front or worker; absent in the "
            "direct mode, so that an alert on 0 never fires there)",
            ["role"],
            registry=r,
        )
        self.log_backpressure = Counter(
            "aisfusion_log_backpressure_waits_total",
            "Times this worker stopped fetching because storage was behind "
            "(workers.max_in_flight lines taken from the log and not yet committed)",
            registry=r,
        )
        self.log_consumed = Counter(
            "aisfusion_log_consumed_messages_total",
            "Raw messages this worker took from the log",
            registry=r,
        )
        self.log_acked = Counter(
            "aisfusion_log_acked_total",
            "Log messages this worker acknowledged after their positions were committed",
            registry=r,
        )
        self.log_undecodable = Counter(
            "aisfusion_log_undecodable_total",
            "Log messages that were not raw batches (skipped and acknowledged)",
            registry=r,
        )
        self.partitions_owned = Gauge(
            "aisfusion_partitions_owned", "Log partitions this worker holds a lease on", registry=r
        )
        self.partition_moves = Counter(
            "aisfusion_partition_moves_total",
            "Leases this worker took (acquired) or gave up (released, lost)",
            ["change"],
            registry=r,
        )
        self.partition_lag = Gauge(
            "aisfusion_partition_lag_messages",
            "Log messages of a partition not yet acknowledged by its owner (front's view)",
            ["partition"],
            registry=r,
        )
        self.partition_owned = Gauge(
            "aisfusion_partition_owned",
            "1 when a partition's lease is held by a live worker (front's view)",
            ["partition"],
            registry=r,
        )
        self.workers_alive = Gauge(
            "aisfusion_workers_alive", "Workers with a fresh heartbeat in the log", registry=r
        )

    def stored(self, store: str, positions: Sequence[_Arrived]) -> None:
        """Positions are in `store` now: observe their end-to-end latency (call per batch)."""
        if not positions:
            return
        now = time.time()
        self.end_to_end_latency.observe_many(store, [now - p.arrival for p in positions])
        # A batch replayed from the dead-letter queue is older: the gauge never goes back.
        newest = max(self._newest_stored.get(store, 0.0), *(p.arrival for p in positions))
        self._newest_stored[store] = newest
        self.newest_stored_arrival.labels(store).set(newest)
