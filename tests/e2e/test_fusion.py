"""Fusion on real servers: simulated receivers, one of them bad, through the whole tree.

The bad receiver displaces every position it passes on by 1.5 km. The service must demote it
(visible in the metrics and in /status) and keep the live picture on the honest receivers.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aisfusion.actors.fusion import distance_m
from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.traffic.receivers import Network, Receiver
from aisfusion.traffic.simulator import Fleet
from tests.dbs import fresh_database, unique_name

SOURCE = "sim"


@pytest.fixture
async def service(servers: Any, tmp_path: Path) -> AsyncIterator[Service]:
    raw = msgspec.to_builtins(Config())
    raw["feed"].update(host="127.0.0.1", port=0, source=SOURCE)
    raw["metrics"]["port"] = 0
    raw["spool"]["dir"] = str(tmp_path / "spool")
    raw["postgres"]["url"] = await fresh_database(servers.postgres_url)
    raw["redis"].update(url=servers.redis_url, key_prefix=unique_name("fusion") + ":")
    raw["actors"]["shards"] = 2
    svc = Service(msgspec.convert(raw, Config))
    await svc.start()
    yield svc
    await svc.stop()


def get(service: Service, path: str) -> str:
    url = f"http://127.0.0.1:{service.metrics_port}{path}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: str = resp.read().decode()
        return body


async def test_a_bad_source_is_demoted_and_kept_off_the_live_picture(service: Service) -> None:
    fleet = Fleet(120, seed=11, start_time=time.time() - 400)
    honest = [
        Receiver("rx-1", loss=0.1, delay_s=0.3),
        Receiver("rx-2", loss=0.3, delay_s=1.0, skew_s=1.0),
    ]
    bad = Receiver("rx-bad", loss=0.2, delay_s=0.5, fault="offset", fault_offset_m=1500.0)
    net = Network(fleet, [*honest, bad], seed=11)
    lines = [line for _ in range(300) for d in net.step(1.0) for line in d.lines]
    truth = {v.mmsi: fleet.truth(v.mmsi) for v in fleet.vessels}

    _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
    writer.write("".join(line + "\r\n" for line in lines).encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    reg = service.metrics.registry
    deadline = time.monotonic() + 60
    while (reg.get_sample_value("aisfusion_feed_lines_total", {"source": SOURCE}) or 0) < len(
        lines
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await service.drain()

    loop = asyncio.get_running_loop()
    status = json.loads(await loop.run_in_executor(None, get, service, "/status"))
    table = {row["source"]: row for row in status["sources"]}
    assert set(table) == {f"{SOURCE}/rx-1", f"{SOURCE}/rx-2", f"{SOURCE}/rx-bad"}
    assert table[f"{SOURCE}/rx-bad"]["demoted"] is True
    assert table[f"{SOURCE}/rx-bad"]["quality"] < 0.6
    assert table[f"{SOURCE}/rx-bad"]["demoted_after"] >= 20
    for name in ("rx-1", "rx-2"):
        assert table[f"{SOURCE}/{name}"]["demoted"] is False
        assert table[f"{SOURCE}/{name}"]["quality"] > 0.9
    assert table[f"{SOURCE}/rx-2"]["clock_skew_s"] == pytest.approx(1.0, abs=0.2)

    metrics = await loop.run_in_executor(None, get, service, "/metrics")
    assert f'aisfusion_source_demoted{{source="{SOURCE}/rx-bad"}} 1.0' in metrics
    assert f'aisfusion_source_demoted{{source="{SOURCE}/rx-1"}} 0.0' in metrics
    assert f'aisfusion_source_demotions_total{{source="{SOURCE}/rx-bad"}} 1.0' in metrics
    assert "aisfusion_vessel_activations_total 120.0" in metrics

    # The live picture stays with the honest receivers: nowhere near 1.5 km off.
    redis = service.redis
    assert redis is not None
    live = await asyncio.wrap_future(service.bridge.submit(redis.live_records(sorted(truth))))
    assert len(live) == len(truth)
    errors = [
        distance_m(float(r["lat"]), float(r["lon"]), *truth[mmsi]) for mmsi, r in live.items()
    ]
    assert statistics.median(errors) < 100
    # A vessel first heard from the bad receiver before it was demoted, whose honest reports
    # all came before that too, keeps the bad position until its next honest report (a
    # Class B at anchor reports every 3 minutes): allow one or two such.
    assert sum(e > 1000 for e in errors) <= 2
    assert sum(r.get("stn") == "rx-bad" for r in live.values()) <= 2
