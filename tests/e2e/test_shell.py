"""`aisfusion shell` as an operator uses it, against a real running service.

A real `aisfusion run` (on the session's PostgreSQL and Valkey) is started once for the module;
the shell runs as its own process: one command at a time (`-c`, for scripts) and interactively
through a pseudo-terminal (tab completion, history). One test runs the service in-process and
blocks its feed loop to show that the control socket still answers.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pty
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from pyais.encode import encode_dict

from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.errors import AisFusionError
from aisfusion.ops.control import ControlServer
from tests.dbs import fresh_database, unique_name
from tests.e2e.test_cli import start_service
from tests.waiting import stop_process, wait_until

CLI = [sys.executable, "-m", "aisfusion.cli"]
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ais"


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    cwd: Path
    feed: int
    metrics: int
    env: dict[str, str]

    @property
    def socket(self) -> Path:
        return self.cwd / ".aisfusion" / "control.sock"


def positions(first_mmsi: int, count: int) -> bytes:
    """`count` vessels near 59.9 N 10.7 E, one position report each, timed now."""
    now = time.time()
    lines = []
    for i in range(count):
        fields = {
            "type": 1,
            "mmsi": first_mmsi + i,
            "lat": 59.9 + i * 0.001,
            "lon": 10.7,
            "speed": 4.0,
            "course": 90.0,
            "second": int(now) % 60,
        }
        (sentence,) = encode_dict(fields, talker_id="AI", sentence_type="VDM")
        lines.append(sentence)
    return ("\n".join(lines) + "\n").encode()


def send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return str(resp.read().decode())


@pytest.fixture(scope="module")
def service(servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    cwd = tmp_path_factory.mktemp("shell")
    pg_url = asyncio.run(fresh_database(servers.postgres_url))
    settings = {
        "AISFUSION_POSTGRES__URL": pg_url,
        "AISFUSION_REDIS__URL": servers.redis_url,
        "AISFUSION_REDIS__KEY_PREFIX": unique_name("shell") + ":",
        "AISFUSION_DLQ__POLL_INTERVAL_S": "0.2",
    }
    proc, feed, metrics = start_service(cwd, **settings)
    running = Running(proc, cwd, feed, metrics, {**os.environ, "HOME": str(cwd)})
    try:
        send(feed, positions(257_300_000, 50))
        wait_until(lambda: "257300049" in shell(running, "near 59.9 10.7 20 100").stdout, "vessels")
        yield running
    finally:
        stop_process(proc)


def shell(service: Running, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "shell", *extra, "-c", command],
        cwd=service.cwd,
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(service: Running, command: str) -> str:
    result = shell(service, command)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- the socket ------------------------------------------------------------------------------


def test_control_socket_is_owner_only(service: Running) -> None:
    mode = service.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(service.socket.parent.stat().st_mode) == 0o700  # created by aisfusion


def test_other_users_cannot_connect(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    system_python = Path("/usr/bin/python3")  # the venv's may sit where nobody can reach
    if not system_python.exists():
        pytest.skip("no system python3 for user nobody")
    # A directory anyone may traverse, so only the socket's own mode keeps "nobody" out.
    public = Path(tempfile.mkdtemp(prefix="aisfusion-ctl-"))
    try:
        public.chmod(0o755)
        server = ControlServer(public / "control.sock", cast(Any, None))
        assert server.start()
        try:
            probe = (
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "try:\n    s.connect(sys.argv[1])\n"
                "except PermissionError:\n    sys.exit(13)\n"
            )
            result = subprocess.run(
                [str(system_python), "-c", probe, str(public / "control.sock")],
                user="nobody",
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert result.returncode == errno.EACCES, result.stderr
        finally:
            server.stop()
        assert not (public / "control.sock").exists()
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_a_second_instance_leaves_a_live_socket_alone_and_replaces_a_stale_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ctl" / "control.sock"
    first = ControlServer(path, cast(Any, None))
    assert first.start()
    try:
        assert not ControlServer(path, cast(Any, None)).start()  # another instance serves it
        assert path.exists()
    finally:
        first.stop()
    stale = socket.socket(socket.AF_UNIX)  # left behind by a killed instance: nobody listens
    stale.bind(str(path))
    stale.close()
    again = ControlServer(path, cast(Any, None))
    assert again.start()
    again.stop()
    path.write_text("not a socket")
    with pytest.raises(AisFusionError, match="not a socket"):
        ControlServer(path, cast(Any, None)).start()


def test_unreachable_service_is_reported(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "shell", "--socket", str(tmp_path / "none.sock"), "-c", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot connect to the control socket" in result.stderr


# -- one command at a time -------------------------------------------------------------------


def tree_shape(node: dict[str, Any]) -> list[tuple[str, str, Any]]:
    shape = [(node["name"], node["state"], node["restarts"])]
    for child in node.get("children", []):
        shape += tree_shape(child)
    return shape


def test_status_shows_the_tree_and_matches_http_status(service: Running) -> None:
    text = ok(service, "status")
    for line in (
        r"aisfusion 0\.1\.0 +pid \d+ +up \S+ +READY",
        r"├── shard-0 +running +- +\d+ +\d+ vessels, \d+ messages",
        r"└── storage +running +- +\d+ +one_for_one, at most 3 restarts in 60 s",
        r"    ├── postgres_writer +running +\d+ +\d+",
        r"    └── live_writer +running +\d+ +\d+",
        r"breakers: postgres closed for \S+, redis closed for \S+",
    ):
        assert re.search(line, text, re.M), f"{line!r} not in:\n{text}"

    from_shell = json.loads(shell_json(service))
    from_http = json.loads(get(service.metrics, "/status"))
    assert from_shell.keys() == from_http.keys()
    assert tree_shape(from_shell["tree"]) == tree_shape(from_http["tree"])
    assert from_shell["pid"] == from_http["pid"] == service.proc.pid
    names = [n for n, _, _ in tree_shape(from_http["tree"])]
    assert names == [
        "aisfusion",
        *[f"shard-{i}" for i in range(4)],
        "sources",
        "batcher",
        "storage",
        "postgres_writer",
        "live_writer",
    ]


def shell_json(service: Running) -> str:
    result = shell(service, "status", "--json")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_vessel_sources_and_near(service: Running) -> None:
    text = ok(service, "vessel 257300007")
    assert "vessel 257300007: actor in shard" in text
    assert re.search(r"last decision: 59\.90700 10\.70000 at .*SOG 4 kn.*from tcp", text), text
    assert "why: " in text
    assert re.search(r"track: (vouched for by a second source|one source's word so far)", text)
    assert re.search(r"live record \(Redis\): lat=59\.907", text), text

    unknown = ok(service, "vessel 999999")
    assert "no vessel actor" in unknown and "live record (Redis): none" in unknown

    sources = ok(service, "sources")
    assert re.search(r"^SOURCE +QUALITY +WEIGHT", sources, re.M)
    assert re.search(r"^tcp +\d\.\d{3} +\d\.\d{3}", sources, re.M), sources

    near = ok(service, "near 59.9 10.7 0.05")
    assert near.startswith("1 vessels within 0.05 km of 59.9 10.7")
    assert re.search(r"^257300000 +0\.000 +59\.9 +10\.7", near, re.M), near

    now = time.time()
    track = f"track 257300007 {now - 3600:.0f} {now + 60:.0f}"
    wait_until(lambda: "1 stored positions of 257300007" in ok(service, track), "the stored track")
    assert re.search(r"59\.90700 +10\.70000 +4 +90 +1 +tcp", ok(service, track))
    iso = ok(service, "track 257300007 2020-01-01T00:00 2020-01-02T00:00")
    assert iso.startswith("0 stored positions of 257300007")


def test_breakers_trip_divert_to_the_dlq_and_reset_drains_it(service: Running) -> None:
    assert re.search(r"^postgres +closed", ok(service, "breakers"), re.M)
    tripped = ok(service, "breakers trip postgres")
    assert re.search(r"^postgres +open \(forced\)", tripped, re.M), tripped
    try:
        send(service.feed, positions(257_400_000, 30))

        def queued() -> bool:
            # READY SCHEDULED LEASED PARKED ROWS OLDEST
            ready, scheduled, leased, parked, rows = map(
                int, ok(service, "dlq stats").splitlines()[1].split()[:5]
            )
            return ready + scheduled + leased > 0 and parked == 0 and rows == 30

        wait_until(queued, "the diverted batch in the DLQ")
        peek = ok(service, "dlq peek 5")
        assert re.search(r"^\S+ +\d+ +0 +fresh +.* postgres breaker open$", peek, re.M), peek
        status = ok(service, "status")
        assert "breakers: postgres open (forced)" in status
        assert re.search(r"^aisfusion_breaker_state\{breaker=\"postgres\",state=\"open\"\} 1\.0$",
                         get(service.metrics, "/metrics"), re.M)  # fmt: skip
    finally:
        reset = ok(service, "breakers reset postgres")
    assert re.search(r"^postgres +closed", reset, re.M)
    wait_until(lambda: re.search(r"^0 +0 +0 +0 +0 ", ok(service, "dlq"), re.M), "the DLQ to drain")
    assert ok(service, "dlq peek") == "no waiting entries\n"
    assert ok(service, "dlq retry") == "0 entries due now (the storage supervisor retries them)\n"
    assert ok(service, "dlq clear parked") == "cleared 0 parked entries\n"


def test_restart_a_supervised_writer(service: Running) -> None:
    text = ok(service, "restart postgres_writer")
    assert text.startswith("restarted postgres_writer: running, mailbox 0")
    send(service.feed, positions(257_500_000, 5))  # the new incarnation writes
    wait_until(lambda: "257500004" in ok(service, "near 59.9 10.7 20 200"), "the new positions")
    assert "READY" in ok(service, "status")


def test_bad_commands_fail_with_their_usage(service: Running) -> None:
    for command, message in [
        ("bogus", "unknown command 'bogus'"),
        ("vessel abc", "MMSI must be a whole number, got 'abc'\nusage: vessel MMSI"),
        ("near 95 10 5", "LAT must be within -90..90"),
        ("track 1 yesterday 2", "not a time (UNIX seconds or ISO 8601): 'yesterday'"),
        ("restart shard-0", "'shard-0' is not a supervised actor"),
        ("breakers trip nosuch", "no breaker 'nosuch'"),
        ("dlq peek lots", "N must be a whole number"),
        ('vessel "unterminated', "cannot parse the line"),
    ]:
        result = shell(service, command)
        assert result.returncode == 1, command
        assert message in result.stderr, (command, result.stderr)
    assert "near LAT LON KM [LIMIT]" in ok(service, "help")


# -- interactive, through a pseudo-terminal ----------------------------------------------------


class Terminal:
    """A process on a pseudo-terminal: type into it, wait for what it prints."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self._master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.output = ""

    def type(self, keys: str) -> None:
        os.write(self._master, keys.encode())

    def expect(self, pattern: str, timeout: float = 20.0) -> str:
        """Wait until `pattern` appears after what was already matched; return the text."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output)
            if found:
                seen, self.output = self.output[: found.end()], self.output[found.end() :]
                return seen
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen; the terminal shows:\n{self.output}")
            ready, _, _ = select.select([self._master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # the process closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{pattern!r} not seen before the end:\n{self.output}")
                self.output += chunk.decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self._master)


def test_interactive_session_with_completion_and_history(service: Running) -> None:
    history = service.cwd / "history"
    env = {**service.env, "TERM": "xterm", "INPUTRC": "/dev/null"}
    term = Terminal([*CLI, "shell", "--history", str(history)], service.cwd, env)
    try:
        term.expect(r"`help` lists the commands")
        term.expect("aisfusion> ")
        term.type("sta\t")  # completes the command
        term.expect("status ")
        term.type("\r")
        out = term.expect("aisfusion> ")
        assert re.search(r"└── live_writer +running", out), out

        term.type("dlq pe\t")  # completes a subcommand
        term.expect("peek ")
        term.type("\r")
        assert "no waiting entries" in term.expect("aisfusion> ")

        term.type("breakers reset po\t")  # completes a breaker's name
        term.expect("postgres ")
        term.type("\r")
        assert re.search(r"postgres +closed", term.expect("aisfusion> "))

        term.type("vessel nope\r")
        assert "error: MMSI must be a whole number" in term.expect("aisfusion> ")

        term.type("\x1b[A")  # up arrow: the previous line comes back
        term.expect("vessel nope")
        term.type("\x15help\r")  # Ctrl-U clears it; run help instead
        assert "restart ACTOR" in term.expect("aisfusion> ")

        term.type("dlq clear\r")  # destructive: asks first
        term.expect(r"NOT in PostgreSQL\? \[y/N\] ")
        term.type("n\r")
        assert "not cleared" in term.expect("aisfusion> ")

        term.type("quit\r")
        assert term.proc.wait(timeout=20) == 0
    finally:
        term.close()
    lines = history.read_text().splitlines()
    assert lines[:3] == ["status", "dlq peek", "breakers reset postgres"], lines
    assert "help" in lines
    assert stat.S_IMODE(history.stat().st_mode) == 0o600


# -- the control socket does not depend on the feed loop -----------------------------------------


@pytest.fixture
async def inprocess(servers: Any, tmp_path: Path) -> AsyncIterator[Service]:
    raw = msgspec.to_builtins(Config())
    raw["feed"].update(host="127.0.0.1", port=0)
    raw["metrics"]["port"] = 0
    raw["control"]["socket"] = str(tmp_path / "run" / "control.sock")
    raw["spool"]["dir"] = str(tmp_path / "spool")
    raw["postgres"]["url"] = await fresh_database(servers.postgres_url)
    raw["redis"].update(url=servers.redis_url, key_prefix=unique_name("shellip") + ":")
    svc = Service(msgspec.convert(raw, Config))
    await svc.start()
    yield svc
    await svc.stop()


async def test_shell_answers_while_the_feed_loop_is_blocked(inprocess: Service) -> None:
    socket_path = inprocess.config.control.socket
    # This coroutine runs on the loop that serves the feeds; the blocking call below holds
    # that loop for as long as the shell takes, so only the control thread can answer.
    started = time.monotonic()
    result = subprocess.run(  # noqa: ASYNC221 - blocking the feed loop is the point
        [*CLI, "shell", "--socket", socket_path, "-c", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "READY" in result.stdout and "live_writer" in result.stdout
    assert time.monotonic() - started < 30
    assert stat.S_IMODE(Path(socket_path).parent.stat().st_mode) == 0o700
