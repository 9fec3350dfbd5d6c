"""What the benchmarks share: the service as they run it (in this process, on its own embedded
servers in a temporary directory, on free ports, without a control socket; cleaned up
afterwards), the simulated two-receiver feed, waiting until the service has read what was
sent, and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.storage.embedded import discard_moved_data
from aisfusion.traffic.nmea_out import tag_block
from aisfusion.traffic.simulator import Fleet


@contextlib.asynccontextmanager
async def embedded_service(prefix: str, **sections: dict[str, Any]) -> AsyncIterator[Service]:
    """A started Service; `sections` override settings, e.g. actors={"shards": 2}."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        raw = msgspec.to_builtins(Config())
        raw["feed"].update(host="127.0.0.1", port=0)
        raw["metrics"]["port"] = 0
        raw["embedded"]["data_dir"] = tmp
        raw["spool"]["dir"] = str(Path(tmp) / "spool")
        raw["control"]["socket"] = ""
        raw["log"]["level"] = "WARNING"
        for section, values in sections.items():
            raw[section].update(values)
        service = Service(msgspec.convert(raw, Config))
        try:
            await service.start()
            yield service
        finally:
            await service.stop()
            # As root the embedded PostgreSQL data may have been placed outside `tmp`.
            discard_moved_data(tmp)


def sample(service: Service, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of the service's metrics (0 while the series does not exist)."""
    return service.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def two_receivers(lines: int, vessels: int, seed: int, back_s: float) -> list[tuple[int, str]]:
    """`lines` lines of a simulated fleet (its clock starting `back_s` ago) as two receivers
    hear it, in send order, as (connection, line): rx-a hears everything (connection 0), rx-b
    about half of it again, stamped one second later (connection 1)."""
    fleet = Fleet(vessels, seed=seed, start_time=time.time() - back_s)
    rng = random.Random(seed)
    out: list[tuple[int, str]] = []
    while len(out) < lines:
        for report in fleet.step(1.0):
            echo = rng.random() < 0.5
            for s in report.sentences:
                out.append((0, tag_block(s, station="rx-a", t=report.t)))
                if echo:
                    out.append((1, tag_block(s, station="rx-b", t=report.t + 1)))
    return out[:lines]


async def wait_read(service: Service, lines: float, limit_s: float = 120.0) -> None:
    """Wait until the service has read `lines` lines from its feed (all it was sent so far)."""
    source = service.config.feed.source
    deadline = time.monotonic() + limit_s
    while sample(service, "aisfusion_feed_lines_total", {"source": source}) < lines:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not read {lines:,.0f} lines in {limit_s:g} s")
        await asyncio.sleep(0.005)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank `q` quantile (0 < q <= 1) of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
