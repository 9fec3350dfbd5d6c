"""The JetStream workers as an operator runs them: `aisfusion run --workers 2` (a front that
reads the feed and publishes to the log, and two `aisfusion worker` children), on PostgreSQL,
Valkey and NATS of the test's own (so it can stop them), under kill -9.

The feed is a known set of unique position reports with tag-block times (distinct MMSI and
second, every one plausible), so what must be stored is exact: the rows are compared against
the expected set itself, which finds a lost position and a duplicate (the same report stored
under a second time) alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from pyais.encode import encode_dict

from aisfusion.config import NatsConfig
from aisfusion.jetstream import log as jlog
from aisfusion.storage.embedded import EmbeddedServers, discard_moved_data
from aisfusion.traffic.nmea_out import tag_block
from tests.waiting import stop_process, wait_until

CLI = [sys.executable, "-m", "aisfusion.cli"]
PARTITIONS = NatsConfig().partitions
VESSELS = 400
REPORTS = 6000


def reports(now: float, start: int = 0, count: int = REPORTS) -> tuple[list[str], set[tuple]]:
    """Unique plausible position reports and the (mmsi, second) set they must be stored as.

    Report n is vessel n % VESSELS at second now - 3000 + n // 2 (each vessel every 200 s),
    steaming north at 12 kn.
    """
    lines, expected = [], set()
    for n in range(start, start + count):
        mmsi = 257_000_000 + n % VESSELS
        t = int(now) - 3000 + n // 2
        fields = {
            "type": 1,
            "mmsi": mmsi,
            "lat": 59.0 + (t - now) * 12.0 / 3600 / 60,
            "lon": 10.0 + (n % VESSELS) * 0.01,
            "speed": 12.0,
            "course": 0.0,
            "heading": 0,
            "second": t % 60,  # agrees with the tag time: no clock correction
        }
        (sentence,) = encode_dict(fields, talker_id="AI", sentence_type="VDM")
        lines.append(tag_block(sentence, station="rx", t=t))
        expected.add((mmsi, t))
    return lines, expected


def free_ports(count: int) -> int:
    """A base port with `count` free ports from it (the front's metrics port, then one per
    worker: the front gives worker i the port base + 1 + i)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise AssertionError("no free ports")


@pytest.fixture
def own_servers(tmp_path: Path) -> Iterator[EmbeddedServers]:
    servers = EmbeddedServers(tmp_path / "embedded", nats=True)
    servers.start()
    yield servers
    servers.stop()
    discard_moved_data(tmp_path / "embedded")


class Front:
    """`aisfusion run --workers N` in a child process, and what a person would ask it."""

    def __init__(self, tmp: Path, servers: EmbeddedServers, workers: int, **settings: str):
        self.tmp = tmp
        self.base = free_ports(workers + 2)
        self.feed_port = self.base + workers + 1
        self.settings = {
            "postgres.url": servers.postgres_url,
            "redis.url": servers.redis_url,
            "nats.url": servers.nats_url,
            "feed.host": "127.0.0.1",
            "feed.port": str(self.feed_port),
            "metrics.port": str(self.base),
            "control.socket": str(tmp / "control.sock"),
            "embedded.data_dir": str(tmp / "data"),
            "spool.dir": str(tmp / "spool"),
            "batcher.flush_interval_s": "0.05",
            "workers.lease_ttl_s": "2",
            "workers.renew_interval_s": "0.5",
            **settings,
        }
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [*CLI, "run", "--workers", str(self.workers)]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={value}"]
        with (self.tmp / "front.log").open("a") as sink:
            self.proc = subprocess.Popen(args, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=sink)
        wait_until(self.all_owned, "every partition to have a live owner", timeout=60)

    def get(self, path: str, port: int | None = None) -> Any:
        url = f"http://127.0.0.1:{port or self.base}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def status(self) -> dict[str, Any] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"front exited: {(self.tmp / 'front.log').read_text()[-3000:]}")
        try:
            return self.get("/status")  # type: ignore[no-any-return]
        except (OSError, urllib.error.URLError):
            return None

    def all_owned(self) -> bool:
        status = self.status()
        if status is None or not status["log"].get("partitions"):
            return False
        alive = {w["id"] for w in status["log"]["workers_alive"]}
        # Settled: every worker owns its share (one that joined late is handed its share).
        owners = {p["owner"] for p in status["log"]["partitions"]}
        return len(alive) == self.workers and owners == alive

    def worker_pids(self) -> list[int]:
        status = self.status()
        assert status is not None
        return [w["pid"] for w in status["log"]["workers"] if w["alive"]]

    def shell(self, command: str) -> str:
        """What an operator sees: `aisfusion shell -c COMMAND` on the front's control socket."""
        done = subprocess.run(
            [*CLI, "shell", "--socket", self.settings["control.socket"], "-c", command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def worker_status(self, index: int) -> dict[str, Any]:
        return self.get("/status", self.base + 1 + index)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)


@pytest.fixture
def fronts() -> Iterator[list[Front]]:
    made: list[Front] = []
    yield made
    for front in made:
        front.stop()


async def first_of(front: Front, worker: int, count: str, failure: str) -> None:
    """Wait (up to 10 s) until worker `worker`'s log `count` (acked, consumed) is above 0."""
    deadline = time.monotonic() + 10
    while (await asyncio.to_thread(front.worker_status, worker))["log"][count] == 0:
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.05)


async def send(port: int, lines: list[str], rate: float | None = None) -> None:
    """Send `lines` over one connection, at about `rate` lines/s (None: at once)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    step = 200
    for i in range(0, len(lines), step):
        writer.write(("\r\n".join(lines[i : i + step]) + "\r\n").encode())
        await writer.drain()
        if rate:
            await asyncio.sleep(step / rate)
    writer.close()
    await writer.wait_closed()


async def stored(pg_url: str) -> list[tuple[int, int]]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT mmsi, extract(epoch FROM ts)::bigint AS t FROM positions")
    finally:
        await conn.close()
    return [(r["mmsi"], r["t"]) for r in rows]


async def owner_epochs(pg_url: str) -> dict[int, list[int]]:
    """Per vessel, the ownership epoch stored with each of its positions, in the order they
    were written: by the inserting transaction's id (`xmin`, assigned in order), then epoch
    (one transaction may hold a worker's decisions from before and after it took a partition
    again). Not in time order: the log is not in time order either, as a publish the front
    retries after an outage lands behind batches sent meanwhile, so a new owner may rightly
    store a vessel's older report after its old owner stored newer ones."""
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT mmsi, owner_epoch FROM positions ORDER BY mmsi, xmin::text::bigint, owner_epoch"
        )
    finally:
        await conn.close()
    out: dict[int, list[int]] = {}
    for r in rows:
        out.setdefault(r["mmsi"], []).append(r["owner_epoch"])
    return out


async def assert_one_owner_at_a_time(pg_url: str) -> int:
    """Every position carries the epoch of the lease its worker held, and per vessel the epochs
    never go down in commit order: no two workers decided one vessel at the same time (an old
    owner deciding on after a new one took over would store a lower epoch after a higher one).
    Returns how many vessels changed owner (so a caller can show the check was not vacuous)."""
    moved = 0
    for mmsi, epochs in (await owner_epochs(pg_url)).items():
        assert all(e is not None and e > 0 for e in epochs), mmsi
        assert epochs == sorted(epochs), f"vessel {mmsi}: epochs {epochs}"
        moved += len(set(epochs)) > 1
    return moved


async def wait_stored(pg_url: str, count: int, limit_s: float = 90.0) -> list[tuple[int, int]]:
    deadline = time.monotonic() + limit_s
    while True:
        rows = await stored(pg_url)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


def second_receiver(lines: list[str]) -> list[str]:
    """What a second receiver hears of `lines`: each again, station rx2, a second later."""
    return [
        tag_block(line.split("\\", 2)[2], station="rx2", t=int(line.split("c:")[1][:10]) + 1)
        for line in lines
    ]


async def send_both(port: int, lines: list[str], rate: float, lag_s: float = 0.1) -> None:
    """`lines` and the second receiver's copies over two connections, the copies `lag_s`
    behind: the two copies of a transmission come in different batches."""
    first = asyncio.create_task(send(port, lines, rate))
    await asyncio.sleep(lag_s)
    await send(port, second_receiver(lines), rate)
    await first


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def test_kill_9_of_a_worker_moves_its_partitions_and_loses_nothing(
    tmp_path: Path, own_servers: EmbeddedServers, fronts: list[Front]
) -> None:
    front = Front(tmp_path, own_servers, workers=2)
    fronts.append(front)
    front.start()
    # Two receivers hear every transmission: the dedup window in the victim's memory is lost,
    # and the survivor must still tell the second copy of the victim's last decisions from a
    # new position (by the payload checksum in the live record).
    lines, expected = reports(time.time())
    victim = front.worker_status(0)
    share = set(victim["log"]["partitions"])
    assert share  # it owns some

    sending = asyncio.create_task(send_both(front.feed_port, lines, rate=2000))
    # Mid-stream: the victim has committed some of its share (so its vessels have positions
    # under its epoch) and taken messages from the log it has not committed.
    await first_of(front, 0, "acked", "the victim committed nothing")
    await asyncio.sleep(0.2)
    kill9(victim["pid"])
    assert len(await stored(own_servers.postgres_url)) < len(expected)  # mid-stream indeed
    await sending

    rows = await wait_stored(own_servers.postgres_url, len(expected))
    assert len(rows) == len(set(rows))
    assert set(rows) == expected  # nothing lost, nothing stored twice under another time
    assert await assert_one_owner_at_a_time(own_servers.postgres_url) > 0
    # The victim's share is owned again under new leases (by the survivor, or by the
    # restarted worker: it keeps its id, so its rendezvous share, once the old lease
    # expired), and the front restarted the dead process.
    now: dict[int, dict[str, Any]] = {}

    def share_owned_again() -> bool:
        try:
            now.update({i: front.worker_status(i) for i in (0, 1)})
        except (OSError, urllib.error.URLError):
            return False  # the new worker 0 is still starting
        return now[0]["pid"] != victim["pid"] and all(
            sum(part in w["log"]["partitions"] for w in now.values()) == 1 for part in share
        )

    wait_until(share_owned_again, "the victim's share to be owned again", timeout=30)
    for part in share:
        (owner,) = (w for w in now.values() if part in w["log"]["partitions"])
        assert (
            owner["log"]["partitions"][part]["epoch"] > victim["log"]["partitions"][part]["epoch"]
        )
    status = front.status()
    assert status is not None
    assert status["log"]["workers"][0]["restarts"] >= 1
    assert status["log"]["publisher"]["published"] == 2 * len(lines)
    # The shell shows the same (the front looks every second): the restarted worker, and
    # both owners alive with every partition between them, once.
    ids = {now[0]["log"]["worker"], now[1]["log"]["worker"]}
    table: dict[str, list[str]] = {}

    def shell_shows_both() -> bool:
        shown = front.shell("status")
        assert f"worker {status['log']['workers'][0]['id']}" in shown
        table.clear()
        for line in shown.splitlines():
            if line.split() and line.split()[0] in ids:
                table[line.split()[0]] = line.split()
        # The front looks again every second: a share being taken shows as "(none)" first.
        return len(table) == 2 and sum(int(row[4]) for row in table.values()) == PARTITIONS

    wait_until(shell_shows_both, "the shell to show both workers' shares", timeout=15)
    assert all(row[1] == "alive" for row in table.values())


async def test_kill_9_of_everything_then_restart_stores_what_the_log_acknowledged(
    tmp_path: Path, own_servers: EmbeddedServers, fronts: list[Front]
) -> None:
    """Front and workers die at once; what JetStream had acknowledged is stored after a
    restart (the stream keeps every message here, `limits` retention, so the test can read
    back exactly what was acknowledged)."""
    front = Front(tmp_path, own_servers, workers=2, **{"nats.retention": "limits"})
    fronts.append(front)
    front.start()
    lines, expected = reports(time.time())
    sending = asyncio.create_task(send(front.feed_port, lines, rate=4000))
    await asyncio.sleep(0.8)
    assert front.proc is not None
    everyone = [front.proc.pid, *front.worker_pids()]
    for pid in everyone:
        kill9(pid)
    with contextlib.suppress(OSError):
        await sending
    front.proc.wait()
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in everyone[1:]), "workers gone")

    acknowledged = await log_contents(own_servers.nats_url)
    assert 0 < len(acknowledged) < len(expected)  # mid-stream indeed
    assert acknowledged <= expected

    again = Front(tmp_path, own_servers, workers=2, **{"nats.retention": "limits"})
    fronts.append(again)
    again.start()
    rows = await wait_stored(own_servers.postgres_url, len(acknowledged))
    assert len(rows) == len(set(rows))
    assert set(rows) == acknowledged
    # (Whether any vessel changed hands depends on timing: the workers may have committed
    # everything the log had acknowledged before the kill.)
    await assert_one_owner_at_a_time(own_servers.postgres_url)


async def log_contents(url: str) -> set[tuple[int, int]]:
    """Every (mmsi, tag time) in the stream, read back message by message."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("AIS_RAW")
        found = set()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("AIS_RAW", seq=seq)
            for raw in jlog.decode(msg.data):
                found.add((raw.mmsi, int(raw.received_at)))
        return found
    finally:
        await nc.close()


async def test_a_paused_worker_loses_its_partitions_and_nothing_else(
    tmp_path: Path, own_servers: EmbeddedServers, fronts: list[Front]
) -> None:
    """SIGSTOP (a stalled VM, a long GC pause) for longer than the lease: the other worker
    takes the partitions, and the paused one, resumed, neither loses what it had taken nor
    stores it twice (it acknowledges only what it committed; what it had not, the new owner
    gets again). Its late commits are not fenced off (see README, Scaling out): this checks
    that they cost nothing but the order of epochs."""
    front = Front(tmp_path, own_servers, workers=2)
    fronts.append(front)
    front.start()
    lines, expected = reports(time.time())
    paused = front.worker_status(0)
    share = set(paused["log"]["partitions"])
    assert share
    sending = asyncio.create_task(send_both(front.feed_port, lines, rate=2000))
    await first_of(front, 0, "consumed", "the worker took nothing")
    os.kill(paused["pid"], signal.SIGSTOP)
    try:
        # Past the lease (2 s): the other worker owns everything.
        wait_until(
            lambda: set(front.worker_status(1)["log"]["partitions"]) >= share,
            "the other worker to take the paused one's partitions",
            timeout=30,
        )
    finally:
        os.kill(paused["pid"], signal.SIGCONT)
    await sending
    rows = await wait_stored(own_servers.postgres_url, len(expected))
    await asyncio.sleep(1.0)  # a late commit of the resumed worker would show up now
    rows = await stored(own_servers.postgres_url)
    assert len(rows) == len(set(rows))
    assert set(rows) == expected
    # It is the same process, and it takes its share back (rendezvous) under new leases.
    assert front.worker_status(0)["pid"] == paused["pid"]


async def test_nats_restarted_mid_stream_loses_nothing_accepted(
    tmp_path: Path, own_servers: EmbeddedServers, fronts: list[Front]
) -> None:
    front = Front(tmp_path, own_servers, workers=2)
    fronts.append(front)
    front.start()
    now = time.time()
    first, expected_first = reports(now, 0, REPORTS // 2)
    second, expected_second = reports(now, REPORTS // 2, REPORTS // 2)
    await send(front.feed_port, first)
    own_servers.stop_nats()
    await send(front.feed_port, second)  # the feed goes on: the front holds these

    def not_ready() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{front.base}/readyz", timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code == 503
        return False

    wait_until(not_ready, "the front to report itself not ready", timeout=30)
    status = front.status()
    assert status is not None
    assert status["log"]["publisher"]["connected"] is False
    own_servers.start_nats()
    rows = await wait_stored(own_servers.postgres_url, REPORTS)
    assert len(rows) == len(set(rows))
    assert set(rows) == expected_first | expected_second
    await assert_one_owner_at_a_time(own_servers.postgres_url)
    wait_until(lambda: front.status()["ready"], "the front to be ready again", timeout=30)


def start_worker(front: Front, worker_id: str, port: int, spool: Path, sink: Any) -> Any:
    """`aisfusion worker` as on another machine: the front's servers, its own ports."""
    settings = ("postgres.url", "redis.url", "nats.url", "batcher.flush_interval_s",
                "workers.lease_ttl_s", "workers.renew_interval_s")  # fmt: skip
    return subprocess.Popen(
        [
            *CLI, "worker", "--id", worker_id,
            *(arg for key in settings for arg in ("--set", f"{key}={front.settings[key]}")),
            "--set", f"metrics.port={port}", "--set", "metrics.host=127.0.0.1",
            "--set", "control.socket=", "--set", f"spool.dir={spool}",
        ],
        cwd=front.tmp,
        stdout=subprocess.DEVNULL,
        stderr=sink,
    )  # fmt: skip


async def test_a_worker_joining_mid_stream_gets_its_share_without_duplicates(
    tmp_path: Path, own_servers: EmbeddedServers, fronts: list[Front]
) -> None:
    """A second machine's `aisfusion worker` joins while two receivers stream: the first
    worker hands the newcomer its share after committing what it took, so the newcomer does
    not decide those messages again from the live record, where the second receiver's copy of
    a transmission (another station, a second later) would look new and be stored as a row."""
    stack = contextlib.ExitStack()
    front = Front(tmp_path, own_servers, workers=1)
    fronts.append(front)
    front.start()
    lines, expected = reports(time.time())
    sending = asyncio.create_task(send_both(front.feed_port, lines, rate=2000))
    await asyncio.sleep(0.8)  # mid-stream
    port = free_ports(1)
    sink = stack.enter_context((tmp_path / "machine-b.log").open("w"))
    worker = start_worker(front, "machine-b", port, tmp_path / "spool-b", sink)
    try:
        await sending
        rows = await wait_stored(own_servers.postgres_url, len(expected))
        await asyncio.sleep(1.0)  # a second copy stored late would show up now
        rows = await stored(own_servers.postgres_url)
        assert len(rows) == len(set(rows))
        assert set(rows) == expected  # every transmission once: no second copy stored
        assert await assert_one_owner_at_a_time(own_servers.postgres_url) > 0
        joined = front.get("/status", port)
        assert joined["log"]["partitions"]  # it got a share
        assert front.worker_status(0)["log"]["moves"] > PARTITIONS  # and the first gave it up
    finally:
        stop_process(worker)
        stack.close()


def metric(port: int, name: str) -> float:
    """A counter of the process serving metrics on `port`, summed over its labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def test_a_worker_whose_storage_is_behind_leaves_the_rest_in_the_log(
    tmp_path: Path, own_servers: EmbeddedServers, fronts: list[Front]
) -> None:
    """A feed faster than storage: past `workers.max_in_flight` uncommitted lines the worker
    fetches no more until commits catch up, so the log buffers, not the DLQ (where a writer
    that falls behind would otherwise divert batches, to be written twice). A tiny bound
    here: it waits often, and still stores everything."""
    front = Front(tmp_path, own_servers, workers=1, **{"workers.max_in_flight": "50"})
    fronts.append(front)
    front.start()
    lines, expected = reports(time.time())
    await send(front.feed_port, lines)  # at once
    rows = await wait_stored(own_servers.postgres_url, len(expected))
    assert sorted(rows) == sorted(expected)
    port = front.base + 1
    assert metric(port, "aisfusion_log_backpressure_waits_total") > 0
    assert metric(port, "aisfusion_dead_letter_diverted_batches_total") == 0
    wait_until(lambda: front.worker_status(0)["log"]["in_flight"] == 0, "every line acked")
