"""Prometheus metrics, built in one place against a registry passed in (a fresh one per test).

Conventions: one ``aisfusion_`` prefix, base units in names, ``_total`` counters, ``_seconds``
histograms, dimensions in labels, never an MMSI label. Hot paths count in plain ints and add
to these once per chunk or batch.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
        self.writer_restarts = Counter(
            "aisfusion_writer_restarts_total",
            "Storage writer restarts by their supervisor",
            ["writer"],
            registry=r,
        )
