"""The read side over HTTP on a running service with real stores: one vessel (live record and
static data), vessels near a point, a vessel's track; and the stores' modes in /status."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.messages import HistoryBatch, Position, StaticReport, VesselSeen
from tests.dbs import fresh_database, unique_name

NOW = time.time()
MMSI = 219000001


@pytest.fixture
async def service(servers: Any, tmp_path: Path) -> AsyncIterator[Service]:
    raw = msgspec.to_builtins(Config())
    raw["feed"].update(host="127.0.0.1", port=0)
    raw["metrics"]["port"] = 0
    raw["control"]["socket"] = ""
    raw["spool"]["dir"] = str(tmp_path / "spool")
    raw["postgres"]["url"] = await fresh_database(servers.postgres_url)
    raw["redis"].update(url=servers.redis_url, key_prefix=unique_name("api") + ":")
    svc = Service(msgspec.convert(raw, Config))
    await svc.start()
    try:
        track = [
            Position(
                MMSI,
                NOW - 600 + 60 * i,
                55.0 + i / 100,
                10.0,
                12.0,
                90.0,
                90,
                0,
                1,
                "tcp",
                "rx",
                NOW,
            )
            for i in range(10)
        ]
        static = StaticReport(MMSI, NOW - 600, name="NORTH PIONEER", callsign="VRIE1")
        batch = HistoryBatch(
            1,
            track,
            [
                VesselSeen(MMSI, NOW - 600, NOW, static),
                VesselSeen(
                    5, NOW - 90 * 86400, NOW - 90 * 86400, StaticReport(5, NOW, name="GONE")
                ),
            ],
        )
        assert svc.postgres is not None and svc.redis is not None
        await asyncio.wrap_future(svc.bridge.submit(svc.postgres.write(batch)))
        await asyncio.wrap_future(
            svc.bridge.submit(svc.postgres.soft_delete_inactive(NOW - 86400, NOW))
        )
        await asyncio.wrap_future(svc.bridge.submit(svc.redis.write_live([track[-1]])))
        yield svc
    finally:
        await svc.stop()


async def get(service: Service, path: str) -> tuple[int, Any]:
    def fetch() -> tuple[int, Any]:
        url = f"http://127.0.0.1:{service.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    return await asyncio.to_thread(fetch)


async def test_one_vessel_live_and_static(service: Service) -> None:
    status, body = await get(service, f"/vessels/{MMSI}")
    assert status == 200
    assert body["mmsi"] == MMSI
    assert body["live"]["lat"] == pytest.approx(55.09) and body["live"]["stn"] == "rx"
    assert body["static"]["name"] == "NORTH PIONEER" and body["static"]["deleted_at"] is None
    # A soft-deleted vessel is left out unless asked for.
    assert (await get(service, "/vessels/5"))[0] == 404
    status, body = await get(service, "/vessels/5?deleted=1")
    assert status == 200 and body["live"] is None and body["static"]["name"] == "GONE"
    assert body["static"]["deleted_at"] == pytest.approx(NOW)
    assert (await get(service, "/vessels/1234"))[0] == 404
    status, body = await get(service, "/vessels/12x")
    assert status == 400 and "MMSI" in body["error"]


async def test_vessels_near_a_point(service: Service) -> None:
    status, body = await get(service, "/vessels/near?lat=55.1&lon=10.0&km=5")
    assert status == 200
    [vessel] = body["vessels"]
    assert vessel["mmsi"] == MMSI and vessel["distance_km"] < 2
    assert (await get(service, "/vessels/near?lat=0&lon=0&km=5"))[1]["vessels"] == []
    status, body = await get(service, "/vessels/near?lat=55&lon=10")
    assert status == 400 and "km" in body["error"]
    status, body = await get(service, "/vessels/near?lat=95&lon=10&km=1")
    assert status == 400 and "lat" in body["error"]


async def test_a_track_between_two_times(service: Service) -> None:
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 300))
    status, body = await get(service, f"/vessels/{MMSI}/track?from={start}Z&to={NOW + 1:.0f}")
    assert status == 200
    times = [p["ts"] for p in body["positions"]]
    assert len(times) == 5 and times == sorted(times) and not body["truncated"]
    assert body["positions"][0]["source"] == "tcp"
    # Without times: the last day; a limit truncates and says so.
    status, body = await get(service, f"/vessels/{MMSI}/track?limit=3")
    assert status == 200 and len(body["positions"]) == 3 and body["truncated"]
    status, body = await get(service, f"/vessels/{MMSI}/track?from=yesterday")
    assert status == 400 and "not a time" in body["error"]
    status, body = await get(service, f"/vessels/{MMSI}/track?from={NOW}&to={NOW - 10}")
    assert status == 400


async def test_status_names_the_stores_modes(service: Service) -> None:
    status, body = await get(service, "/status")
    assert status == 200
    stores = body["stores"]
    assert stores["redis"]["layout"] == "compact" and stores["redis"]["json_module"] is False
    assert stores["postgres"] == {"transaction_pooling": False, "partition_days": 1}
    assert stores["maintenance"]["interval_s"] == 300.0
