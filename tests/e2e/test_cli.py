"""The command line as a person uses it: `aisfusion demo`, `aisfusion run` with signals,
`aisfusion replay`, and a bad configuration."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aisfusion.config import NatsConfig
from aisfusion.jetstream.workers import default_count
from aisfusion.storage.embedded import discard_moved_data
from tests.dbs import fresh_database, unique_name

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ais"
CLI = [sys.executable, "-m", "aisfusion.cli"]


@pytest.fixture(autouse=True)
def _remove_relocated_postgres_data(tmp_path: Path) -> Iterator[None]:
    """As root the embedded data may live outside tmp_path; remove it after each test."""
    yield
    for marker in tmp_path.rglob("postgres.location"):
        discard_moved_data(marker.parent)


def children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_service(tmp_path: Path, **settings: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """`aisfusion run` on free ports, on embedded servers unless `settings` name URLs;
    returns (process, feed port, metrics port)."""
    env = {
        **os.environ,
        "AISFUSION_FEED__HOST": "127.0.0.1",
        "AISFUSION_FEED__PORT": "0",
        "AISFUSION_METRICS__PORT": "0",
        "AISFUSION_EMBEDDED__DATA_DIR": str(tmp_path / "data"),
        "AISFUSION_SPOOL__DIR": str(tmp_path / "spool"),
        "AISFUSION_POSTGRES__URL": "",
        "AISFUSION_REDIS__URL": "",
        # These tests look at the pipeline in one process; tests/e2e/test_workers.py runs
        # the JetStream workers.
        "AISFUSION_WORKERS__MODE": "in_process",
        **settings,
    }
    log = tmp_path / "service.log"
    with log.open("w") as sink:  # a file, not a pipe: nobody has to keep reading it
        proc = subprocess.Popen(
            [*CLI, "run"], cwd=tmp_path, env=env, stderr=sink, stdout=subprocess.DEVNULL
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(
            r"feed 127\.0\.0\.1:(\d+), metrics http://127\.0\.0\.1:(\d+)/", log.read_text()
        )
        if match:
            return proc, int(match[1]), int(match[2])
        if proc.poll() is not None:
            pytest.fail(f"service exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pytest.fail("service did not start within 60 s")


def test_demo_prints_a_summary_read_back_from_the_stores(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *CLI,
            "demo",
            "--vessels",
            "200",
            "--duration",
            "4",
            "--set",
            f"embedded.data_dir={tmp_path}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "aisfusion demo summary" in out
    numbers = {
        key: int(re.search(rf"{key}.*?(\d+)\s*$", out, re.M)[1])  # type: ignore[index]
        for key in ("vessels tracked", "positions stored in PostgreSQL", "live vessels in Valkey")
    }
    assert all(v > 0 for v in numbers.values()), out
    assert numbers["live vessels in Valkey"] == numbers["vessels tracked"]
    # It ran with worker processes (one per core) that shared the partitions of the log
    # and each consumed some of the traffic.
    table = out.split("\nworkers (", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    rows = [line.split() for line in table]
    assert len(rows) == default_count(), out
    assert sum(int(r[2]) for r in rows) == NatsConfig().partitions, out
    assert all(int(r[3]) > 0 for r in rows), out


def test_run_replay_then_sigterm_stops_cleanly(tmp_path: Path) -> None:
    proc, feed, metrics = start_service(tmp_path)
    try:
        servers = children(proc.pid)
        assert len(servers) >= 2  # postgres (with its workers) and valkey
        replay = subprocess.run(
            [*CLI, "replay", str(DATA / "gfw-tools-mixed_types.nmea"), "--to", f"127.0.0.1:{feed}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert replay.returncode == 0, replay.stderr
        assert "sent 109 lines" in replay.stdout
        deadline = time.monotonic() + 20
        url = f"http://127.0.0.1:{metrics}"
        while True:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
                body = resp.read().decode()
            if 'aisfusion_feed_lines_total{source="tcp"} 109.0' in body:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        with urllib.request.urlopen(url + "/status", timeout=5) as resp:
            status = json.loads(resp.read())
        assert sum(s["processed"] for s in status["shards"]) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not [p for p in servers if alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_leaves_no_server_behind(tmp_path: Path) -> None:
    proc, _, _ = start_service(tmp_path)
    servers = children(proc.pid)
    assert len(servers) >= 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while [p for p in servers if alive(p)]:
        assert time.monotonic() < deadline, [p for p in servers if alive(p)]
        time.sleep(0.1)


def test_bad_configuration_names_each_setting(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[feed]\nport = -1\n[batcher]\nmax_rowz = 3\n")
    result = subprocess.run(
        [*CLI, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "feed.port" in result.stderr
    assert "batcher.max_rowz: unknown setting (did you mean 'max_rows'?)" in result.stderr


def test_sigterm_flushes_every_accepted_position(tmp_path: Path, servers: Any) -> None:
    """Batches wait up to a minute in the batcher here; SIGTERM must still write them all."""
    pg_url = asyncio.run(fresh_database(servers.postgres_url))
    proc, feed, metrics = start_service(
        tmp_path,
        AISFUSION_POSTGRES__URL=pg_url,
        AISFUSION_REDIS__URL=servers.redis_url,
        AISFUSION_REDIS__KEY_PREFIX=unique_name("sigterm") + ":",
        AISFUSION_BATCHER__FLUSH_INTERVAL_S="60",
        AISFUSION_BATCHER__MAX_ROWS="100000",
    )
    try:
        data = (DATA / "aishub-2015.nmea").read_bytes()
        with socket.create_connection(("127.0.0.1", feed)) as sock:
            sock.sendall(data)

        def metric(name: str) -> float:
            found = re.search(rf"^{re.escape(name)} (\S+)$", get(metrics, "/metrics"), re.M)
            return float(found[1]) if found else 0.0

        def processed() -> int:
            status = json.loads(get(metrics, "/status"))
            return sum(s["processed"] for s in status["shards"])

        deadline = time.monotonic() + 60
        while processed() < metric('aisfusion_feed_messages_total{source="tcp"}') or metric(
            'aisfusion_feed_lines_total{source="tcp"}'
        ) < data.count(b"\n"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        decided = metric("aisfusion_decisions_total")
        assert metric('aisfusion_batch_rows_total{store="postgres"}') == 0  # all still pending
        assert decided > 50_000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def count() -> int:
        conn = await asyncpg.connect(pg_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM positions"))
        finally:
            await conn.close()

    assert asyncio.run(count()) == decided


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())
