"""Fault injection with real servers: every accepted position reaches Postgres exactly once.

Each test owns its PostgreSQL and Valkey (started through the service's embedded-server manager)
so it can stop, stall and restart them. The feed is a known set of unique positions, so the
expected row count is exact, not "some".
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from pyais.encode import encode_dict

from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.storage.embedded import EmbeddedServers, discard_moved_data
from aisfusion.storage.postgres import PostgresStore
from aisfusion.traffic.nmea_out import tag_block
from tests.faults import StallingProxy

VESSELS = 40
PER_PHASE = 600


def positions(phase: int, now: float) -> list[str]:
    """PER_PHASE unique position reports (distinct MMSI/time pairs) with tag-block times.

    Each vessel steams north at 12 kn and reports every VESSELS seconds, so every report is
    plausible and new: all of them must be stored.
    """
    lines = []
    for i in range(PER_PHASE):
        n = phase * PER_PHASE + i
        mmsi = 257_000_000 + n % VESSELS
        fields = {
            "type": 1,
            "mmsi": mmsi,
            "lat": 59.0 + n * 12.0 / 3600 / 60,  # 12 kn north, one second per report
            "lon": 10.0 + (n % VESSELS) * 0.01,
            "speed": 12.0,
            "course": 0.0,
            "heading": 0,
        }
        (sentence,) = encode_dict(fields, talker_id="AI", sentence_type="VDM")
        lines.append(tag_block(sentence, station="rx", t=now - 3000 + n))
    return lines


@pytest.fixture
def own_servers(tmp_path: Path) -> Iterator[EmbeddedServers]:
    servers = EmbeddedServers(tmp_path / "embedded")
    servers.start()
    yield servers
    servers.stop()
    discard_moved_data(tmp_path / "embedded")


def fault_config(tmp_path: Path, pg_url: str, redis_url: str) -> Config:
    raw = msgspec.to_builtins(Config())
    raw["feed"].update(host="127.0.0.1", port=0, source="faults")
    raw["metrics"]["port"] = 0
    raw["postgres"].update(url=pg_url, command_timeout_s=3.0)
    raw["redis"].update(url=redis_url, key_prefix="faults:")
    raw["spool"]["dir"] = str(tmp_path / "spool")
    raw["batcher"].update(max_rows=100, flush_interval_s=0.05)
    raw["breaker"].update(
        failure_threshold=1, reset_base_s=0.2, reset_max_s=1.0, call_timeout_s=1.5
    )
    raw["dlq"].update(retry_base_s=0.2, retry_max_s=1.0, poll_interval_s=0.1)
    raw["supervision"].update(max_restarts=2, within_s=60.0, backoff_min_s=0.05, backoff_max_s=0.2)
    return msgspec.convert(raw, Config)


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[Callable[[str, str], Any]]:
    started: list[Service] = []

    async def make(pg_url: str, redis_url: str) -> Service:
        service = Service(fault_config(tmp_path, pg_url, redis_url))
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


def sample(service: Service, name: str, labels: dict[str, str] | None = None) -> float:
    return service.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], what: str, limit_s: float = 30.0
) -> None:
    """Poll `condition` (a function, or a coroutine function) until it holds."""
    deadline = time.monotonic() + limit_s
    while True:
        met = condition()
        if not isinstance(met, bool):
            met = await met
        if met:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def send(service: Service, lines: list[str]) -> None:
    target = sample(service, "aisfusion_feed_lines_total", {"source": "faults"}) + len(lines)
    _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
    writer.write(("\r\n".join(lines) + "\r\n").encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await wait_for(
        lambda: sample(service, "aisfusion_feed_lines_total", {"source": "faults"}) >= target,
        "the service to read every line",
    )
    # Every line read is handled by the shards before we go on.
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 30
    while (
        sum(s["processed"] for s in (await loop.run_in_executor(None, service.status))["shards"])
        < target
    ):
        assert time.monotonic() < deadline, "the shards did not process every line"
        await asyncio.sleep(0.05)


async def stored_rows(pg_url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT (mmsi, ts)) AS d FROM positions"
        )
        return row["n"], row["d"]
    finally:
        await conn.close()


def diverted(service: Service, target: str) -> float:
    return sample(service, "aisfusion_dead_letter_diverted_batches_total", {"target": target})


def opened(service: Service, breaker: str) -> float:
    return sample(
        service, "aisfusion_breaker_transitions_total", {"breaker": breaker, "to": "open"}
    )


async def test_postgres_outage_loses_nothing(
    own_servers: EmbeddedServers, make_service: Any
) -> None:
    service = await make_service(own_servers.postgres_url, own_servers.redis_url)
    now = time.time()
    await send(service, positions(0, now))
    assert await service.drain()
    own_servers.stop_postgres()
    await send(service, positions(1, now))
    await wait_for(lambda: diverted(service, "dlq") > 0, "batches to go to the DLQ")
    assert opened(service, "postgres") >= 1
    own_servers.start_postgres()
    await send(service, positions(2, now))
    assert await service.drain(60)
    assert await stored_rows(own_servers.postgres_url) == (3 * PER_PHASE, 3 * PER_PHASE)
    status = await asyncio.get_running_loop().run_in_executor(None, service.status)
    assert status["storage"]["breakers"][0]["state"] == "closed"


async def test_redis_outage_keeps_history_and_catches_up_live(
    own_servers: EmbeddedServers, make_service: Any
) -> None:
    service = await make_service(own_servers.postgres_url, own_servers.redis_url)
    now = time.time()
    own_servers.stop_redis()
    await send(service, positions(0, now))
    assert await service.drain(60)
    assert await stored_rows(own_servers.postgres_url) == (PER_PHASE, PER_PHASE)
    assert opened(service, "redis") >= 1
    own_servers.start_redis()
    redis = service.redis
    assert redis is not None

    def live_count() -> int:
        return int(service.bridge.run(redis.live_count(), timeout=5))

    await wait_for(lambda: live_count() == VESSELS, "live records of every vessel")


async def test_both_down_spools_to_disk_then_replays(
    own_servers: EmbeddedServers, make_service: Any
) -> None:
    service = await make_service(own_servers.postgres_url, own_servers.redis_url)
    now = time.time()
    own_servers.stop_postgres()
    own_servers.stop_redis()
    await send(service, positions(0, now))
    await wait_for(lambda: diverted(service, "spool") > 0, "batches to go to the spool")
    await send(service, positions(1, now))
    own_servers.start_redis()
    own_servers.start_postgres()
    assert await service.drain(60)
    assert await stored_rows(own_servers.postgres_url) == (2 * PER_PHASE, 2 * PER_PHASE)
    assert service.spool is not None
    assert service.spool.pending_batches() == 0


async def test_stalled_database_trips_the_breaker(
    own_servers: EmbeddedServers, make_service: Any
) -> None:
    proxy = StallingProxy(
        "127.0.0.1", int(own_servers.postgres_url.rsplit(":", 1)[1].split("/")[0])
    )
    proxy.start()
    try:
        pg_url = own_servers.postgres_url.replace(
            own_servers.postgres_url.rsplit(":", 1)[1].split("/")[0], str(proxy.port)
        )
        service = await make_service(pg_url, own_servers.redis_url)
        now = time.time()
        await send(service, positions(0, now))
        assert await service.drain()
        proxy.stall()
        await send(service, positions(1, now))
        await wait_for(lambda: opened(service, "postgres") >= 1, "timeouts to open the breaker")
        proxy.resume()
        await send(service, positions(2, now))
        assert await service.drain(60)
        assert await stored_rows(own_servers.postgres_url) == (3 * PER_PHASE, 3 * PER_PHASE)
        await service.stop()
    finally:
        proxy.stop()


async def test_crashing_writer_escalates_and_a_restart_recovers_everything(
    own_servers: EmbeddedServers, make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = PostgresStore.write

    async def buggy_write(self: PostgresStore, batch: Any) -> int:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(PostgresStore, "write", buggy_write)
    service = await make_service(own_servers.postgres_url, own_servers.redis_url)
    now = time.time()
    await send(service, positions(0, now))
    await wait_for(service.failed.is_set, "escalation to the root")
    assert "failed more than 2 times" in (service.failure or "")
    assert sample(service, "aisfusion_writer_restarts_total", {"writer": "postgres_writer"}) == 2
    assert not service.ready
    await service.stop()

    # The next start replays what the failed instance left in the DLQ and the spool.
    monkeypatch.setattr(PostgresStore, "write", real_write)
    again = await make_service(own_servers.postgres_url, own_servers.redis_url)
    assert await again.drain(60)
    assert await stored_rows(own_servers.postgres_url) == (PER_PHASE, PER_PHASE)


async def test_a_restarted_service_keeps_each_vessels_static_data(
    own_servers: EmbeddedServers, make_service: Any
) -> None:
    mmsi = 257_000_000  # one of the vessels of `positions`
    loop = asyncio.get_running_loop()

    async def identity(service: Service) -> tuple[str, int] | None:
        vessel = await loop.run_in_executor(None, service.vessel, mmsi)
        static = vessel["static"] if vessel else None
        return (static["name"], static["ship_type"]) if static else None

    async def known(service: Service) -> bool:
        return await identity(service) == ("FAST ONE", 40)

    async def report(service: Service, name: str) -> None:
        fields = {"type": 5, "mmsi": mmsi, "shipname": name, "callsign": "OXAB2", "ship_type": 40}
        _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
        writer.write(("\r\n".join(encode_dict(fields)) + "\r\n").encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    service = await make_service(own_servers.postgres_url, own_servers.redis_url)
    now = time.time()
    await send(service, positions(0, now))
    await report(service, "FAST ONE")
    await wait_for(lambda: known(service), "the static report to be taken")
    await service.stop()

    again = await make_service(own_servers.postgres_url, own_servers.redis_url)
    await send(again, positions(1, now))  # the vessel actors are created anew
    await wait_for(lambda: known(again), "static data to come back from PostgreSQL")
    # A different name, heard once, waits for confirmation as it would have before the stop.
    target = sample(again, "aisfusion_static_reports_total") + 1
    await report(again, "OTHER NAME")
    await wait_for(
        lambda: sample(again, "aisfusion_static_reports_total") >= target, "the report decoded"
    )
    assert await identity(again) == ("FAST ONE", 40)


async def test_a_crashing_shard_stops_the_service_and_the_others_lose_nothing(
    own_servers: EmbeddedServers, make_service: Any
) -> None:
    service = await make_service(own_servers.postgres_url, own_servers.redis_url)
    now = time.time()
    await send(service, positions(0, now))
    assert await service.drain(30)
    service.shards[0].tell("not a message a shard knows")  # a bug: its on_receive raises
    await wait_for(service.failed.is_set, "escalation to the root")
    assert "shard-0 crashed" in (service.failure or "")
    assert not service.ready
    # The feed goes on; shard 0's vessels (MMSI % 4 == 0: 10 of the 40, 15 reports each) are
    # counted as dropped, and every other shard's positions are stored by the graceful stop.
    _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
    writer.write(("\r\n".join(positions(1, now)) + "\r\n").encode())
    await writer.drain()
    await wait_for(
        lambda: (
            sample(service, "aisfusion_feed_lines_total", {"source": "faults"}) >= 2 * PER_PHASE
        ),
        "the service to read every line",
    )
    writer.close()
    await writer.wait_closed()
    assert sample(service, "aisfusion_router_dropped_messages_total") == 150
    await service.stop()
    assert await stored_rows(own_servers.postgres_url) == (2 * PER_PHASE - 150,) * 2


def admin(service: Service, method: str, path: str, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{service.metrics_port}{path}",
        method=method,
        data=b"" if method == "POST" else None,
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_operator_sees_and_retries_the_dlq_over_http(
    own_servers: EmbeddedServers, tmp_path: Path
) -> None:
    config = fault_config(tmp_path, own_servers.postgres_url, own_servers.redis_url)
    config = msgspec.structs.replace(
        config, metrics=msgspec.structs.replace(config.metrics, admin_token="s3cret")
    )
    service = Service(config)
    await service.start()
    loop = asyncio.get_running_loop()

    def call(method: str, path: str, token: str | None = "s3cret") -> tuple[int, Any]:
        return admin(service, method, path, token)

    try:
        assert (await loop.run_in_executor(None, call, "GET", "/admin/dlq", None))[0] == 401
        assert (await loop.run_in_executor(None, call, "GET", "/admin/dlq", "wrong"))[0] == 401
        code, snap = await loop.run_in_executor(None, call, "POST", "/admin/breakers/postgres/trip")
        assert (code, snap["state"], snap["forced"]) == (200, "open", True)
        await send(service, positions(0, time.time()))
        await wait_for(lambda: diverted(service, "dlq") > 0, "batches to go to the DLQ")
        code, body = await loop.run_in_executor(None, call, "GET", "/admin/dlq?peek=3")
        assert code == 200
        waiting = body["stats"]["ready"] + body["stats"]["scheduled"] + body["stats"]["leased"]
        assert waiting > 0
        assert body["stats"]["rows"] > 0
        assert 0 < len(body["entries"]) <= 3
        assert body["entries"][0]["error"] == "postgres breaker open"
        code, _ = await loop.run_in_executor(None, call, "POST", "/admin/breakers/postgres/reset")
        assert code == 200
        code, body = await loop.run_in_executor(None, call, "POST", "/admin/dlq/retry")
        assert code == 200
        assert await service.drain(60)
        assert await stored_rows(own_servers.postgres_url) == (PER_PHASE, PER_PHASE)
        code, body = await loop.run_in_executor(None, call, "GET", "/admin/dlq")
        assert body["stats"]["rows"] == 0
    finally:
        await service.stop()


async def test_rows_rejected_permanently_are_isolated_and_parked(
    own_servers: EmbeddedServers, make_service: Any
) -> None:
    service = await make_service(own_servers.postgres_url, own_servers.redis_url)
    conn = await asyncpg.connect(own_servers.postgres_url)
    try:
        # A constraint this feed partly violates: the rows north of it are rejected for good.
        limit = 59.0 + 450 * 12.0 / 3600 / 60
        await conn.execute(f"ALTER TABLE positions ADD CONSTRAINT test_lat CHECK (lat < {limit})")
    finally:
        await conn.close()
    await send(service, positions(0, time.time()))
    assert await service.drain(60)
    stored, _ = await stored_rows(own_servers.postgres_url)
    loop = asyncio.get_running_loop()
    stats = await loop.run_in_executor(None, lambda: service.dlq("stats"))
    assert stored == 450
    assert stats["parked"] > 0
    assert stats["rows"] == PER_PHASE - 450
