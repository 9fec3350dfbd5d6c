"""The JetStream workers: throughput with 1 and 2 worker processes against the in-process path,
failover time after kill -9 of a worker, and latency socket -> Redis through the log.

Each mode starts the service in this process on its own embedded servers (PostgreSQL, Valkey,
NATS) as `aisfusion run` does: `in_process` is the pipeline without the log
(workers.mode = "in_process"); `workers=N` is the front (feeds -> JetStream) with N real
`aisfusion worker` processes. The same pre-generated feed (20,000 simulated vessels heard by two
receivers, tag-block times) is sent at full speed over TCP; the time runs from the first byte
sent until every message is acknowledged by the workers after commit (the front's drain) or,
in process, until everything is committed; then the rows in `positions` are counted. CPU
seconds are read from /proc for every process of the installation.

    .venv/bin/python bench/workers.py throughput [--modes in_process,1,2] [--messages 300000]
    .venv/bin/python bench/workers.py failover [--rate 5000] [--seconds 20]
    .venv/bin/python bench/workers.py latency [--rate 10000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import uvloop
from benchservice import sample, two_receivers
from prometheus_client.parser import text_string_to_metric_families

from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.jetstream import log as jlog
from aisfusion.storage.embedded import discard_moved_data

CLK_TCK = os.sysconf("SC_CLK_TCK")
SHARDS = 4


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def descendants(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=False
    )
    kids: dict[int, list[int]] = {}
    for line in out.stdout.splitlines():
        p, pp = (int(x) for x in line.split())
        kids.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.asynccontextmanager
async def installation(mode: str, **sections: dict[str, Any]) -> AsyncIterator[Service]:
    """The service in `mode` ("in_process" or a worker count) on embedded servers."""
    with tempfile.TemporaryDirectory(prefix="aisf-bench-w-") as tmp:
        raw = msgspec.to_builtins(Config())
        raw["feed"].update(host="127.0.0.1", port=0)
        raw["metrics"]["port"] = 0
        raw["embedded"]["data_dir"] = tmp
        raw["spool"]["dir"] = str(Path(tmp) / "spool")
        raw["control"]["socket"] = ""
        raw["log"]["level"] = "WARNING"
        # The simulated clock starts in the past: accept its tag-block times.
        raw["actors"].update(shards=SHARDS, max_lateness_s=1e10)
        workers = 0 if mode == "in_process" else int(mode)
        raw["workers"].update(mode="in_process" if not workers else "jetstream", count=workers)
        for section, values in sections.items():
            raw[section].update(values)
        config = msgspec.convert(raw, Config)
        args = [
            "--set", f"log.level={os.environ.get('BENCH_WORKER_LOG', 'WARNING')}",
            "--set", f"actors.shards={SHARDS}",
            "--set", "actors.max_lateness_s=1e10",
        ]  # fmt: skip
        for section, values in sections.items():
            for key, value in values.items():
                args += ["--set", f"{section}.{key}={value}"]
        service = Service(config, role="front" if workers else "direct", worker_args=args)
        try:
            await service.start()
            if workers:
                await owned(service, workers)
            yield service
        finally:
            try:
                await asyncio.wait_for(asyncio.shield(service.stop()), 90)
            except TimeoutError:
                print("STOP HUNG; tasks:", file=sys.stderr)
                for task in asyncio.all_tasks():
                    task.print_stack(file=sys.stderr)
                raise
            for log in sorted(Path(tmp).glob("worker-*.log")):
                if os.environ.get("BENCH_KEEP_LOGS"):
                    shutil.copy(log, Path(os.environ["BENCH_KEEP_LOGS"]) / log.name)
                warnings = [line for line in log.read_text().splitlines() if "WARNING" in line]
                for line in warnings[:5]:
                    print(f"  {log.name}: {line[24:]}")
                if len(warnings) > 5:
                    print(f"  {log.name}: ... {len(warnings)} warnings in all")
            discard_moved_data(tmp)


async def owned(service: Service, workers: int, limit_s: float = 60.0) -> None:
    """Wait until `workers` workers hold every partition."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        snap = service.log_monitor.snapshot() if service.log_monitor else {}
        alive = {w["id"] for w in snap.get("workers_alive", [])}
        parts = snap.get("partitions", [])
        if len(alive) == workers and parts and all(p["owner"] in alive for p in parts):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the workers did not take every partition")


def worker_metrics(service: Service) -> list[dict[str, Any]]:
    """Each live worker's metric families, by name (blocking)."""
    snap = service.log_monitor.snapshot() if service.log_monitor else {}
    out = []
    for card in snap.get("workers_alive", []):
        with urllib.request.urlopen(f"http://{card['metrics']}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out.append({f.name: f for f in text_string_to_metric_families(text)})
    return out


def installation_pids(service: Service) -> list[int]:
    return [os.getpid(), *descendants(os.getpid())]


def process_kind(pid: int) -> str:
    """What a process of the installation is, for the CPU breakdown."""
    if pid == os.getpid():
        return "main"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    name = Path(cmd[0].decode()).name
    if b"worker" in cmd:
        return "workers"
    for kind in ("postgres", "valkey", "nats"):
        if kind in name:
            return kind
    return name


def cpu_by_kind(pids: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid in pids:
        kind = process_kind(pid)
        out[kind] = out.get(kind, 0.0) + cpu_seconds([pid])
    return out


async def send(port: int, payload: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    view = memoryview(payload)
    for i in range(0, len(view), 1 << 20):
        writer.write(view[i : i + (1 << 20)])
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def rows(service: Service) -> int:
    assert service.postgres is not None
    return int(
        await asyncio.wrap_future(
            service.bridge.submit(service.postgres.fetchval("SELECT count(*) FROM positions"))
        )
    )


async def wait_read(service: Service, lines: int, limit_s: float = 300.0) -> None:
    source = service.config.feed.source
    deadline = time.monotonic() + limit_s
    while sample(service, "aisfusion_feed_lines_total", {"source": source}) < lines:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not read every line")
        await asyncio.sleep(0.005)


async def throughput(args: argparse.Namespace) -> None:
    feed = two_receivers(args.messages, args.vessels, args.seed, back_s=1800)
    payloads = [
        ("\r\n".join(line for conn, line in feed if conn == k) + "\r\n").encode() for k in (0, 1)
    ]
    print(f"input: {len(feed):,} lines, {args.vessels} vessels, 2 receivers; {SHARDS} shards")
    print("mode          messages/s   rows      seconds   CPU all processes (s)")
    for mode in args.modes.split(","):
        async with installation(mode) as service:
            pids = installation_pids(service)
            cpu0 = cpu_seconds(pids)
            kinds0 = cpu_by_kind(pids)
            t0 = time.perf_counter()
            await asyncio.gather(*(send(service.feed_port, p) for p in payloads))
            await wait_read(service, len(feed))
            if not await service.drain(300):
                raise RuntimeError(f"{mode}: did not drain")
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(installation_pids(service)) - cpu0
            kinds = cpu_by_kind(installation_pids(service))
            breakdown = ", ".join(
                f"{k} {v - kinds0.get(k, 0.0):.1f}" for k, v in sorted(kinds.items())
            )
            messages = sample(
                service, "aisfusion_feed_messages_total", {"source": service.config.feed.source}
            )
            stored = await rows(service)
            if mode == "in_process":
                families = [{f.name: f for f in service.metrics.registry.collect()}]
            else:
                families = await asyncio.get_running_loop().run_in_executor(
                    None, worker_metrics, service
                )
            decided = total(families, "aisfusion_decisions")
            rejects = {
                reason: n
                for reason in ("duplicate", "jump", "too_late", "future_time", "decode_error")
                if (n := total(families, "aisfusion_vessel_rejected", reason=reason))
            }
            label = mode if mode == "in_process" else f"workers={mode}"
            rate = messages / elapsed
            print(f"{label:12s} {rate:11,.0f}  {stored:9,d}  {elapsed:7.2f}   {cpu:7.2f}")
            diverted = total(families, "aisfusion_dead_letter_diverted_batches")
            print(f"             decided {decided:,.0f}; rejects {rejects}")
            print(f"             history batches diverted (DLQ, spool): {diverted:,.0f}")
            print(f"             CPU s by process: {breakdown}")
            if stored != decided:
                print(f"MISMATCH: {decided:,.0f} decided, {stored:,} rows", file=sys.stderr)


async def failover(args: argparse.Namespace) -> None:
    """Stream at a fixed rate through 2 workers, kill -9 one, and time until every partition
    it held is owned again and consuming (its consumer's ack floor moves)."""
    total = int(args.rate * args.seconds)
    feed = two_receivers(total, args.vessels, args.seed, back_s=1800)
    async with installation("2") as service:
        nc = await nats.connect(service.embedded.nats_url if service.embedded else "")
        js = nc.jetstream()
        cfg = service.config.nats
        leases = await js.key_value(jlog.leases_bucket(cfg))
        writers = [(await asyncio.open_connection("127.0.0.1", service.feed_port))[1] for _ in "ab"]

        async def pace() -> None:
            t0 = time.perf_counter()
            sent = 0
            while sent < len(feed):
                due = min(len(feed), int((time.perf_counter() - t0) * args.rate) + 1)
                for conn, line in feed[sent:due]:
                    writers[conn].write((line + "\r\n").encode())
                for w in writers:
                    await w.drain()
                sent = due
                await asyncio.sleep(0.005)

        sender = asyncio.create_task(pace())
        await asyncio.sleep(args.seconds / 3)
        # Who holds what now (the lease revisions), and each consumer's ack floor.
        assert service.log_monitor is not None
        await service.log_monitor.observe()
        snap = service.log_monitor.snapshot()
        victim = snap["workers_alive"][0]
        lost = [p["partition"] for p in snap["partitions"] if p["owner"] == victim["id"]]
        floors = {}
        for p in lost:
            info = await js.consumer_info(cfg.stream, jlog.consumer_name(cfg, p))
            floors[p] = info.ack_floor.stream_seq if info.ack_floor else 0
        revisions = {p: (await leases.get(f"p{p}")).revision for p in lost}
        killed = time.perf_counter()
        os.kill(victim["pid"], signal.SIGKILL)
        owned_at: float | None = None
        resumed: dict[int, float] = {}
        while len(resumed) < len(lost) and time.perf_counter() - killed < 60:
            if owned_at is None:
                # Owned again: a new lease (a new revision made by `create`, by the survivor
                # or by the restarted worker, which keeps its id), not a renewal by the dead.
                taken = []
                for p in lost:
                    try:
                        entry = await leases.get(f"p{p}")
                    except Exception:
                        taken.append(False)
                        continue
                    taken.append(entry.revision > revisions[p])
                if all(taken):
                    owned_at = time.perf_counter() - killed
            for p in lost:
                if p in resumed:
                    continue
                info = await js.consumer_info(cfg.stream, jlog.consumer_name(cfg, p))
                if info.ack_floor and info.ack_floor.stream_seq > floors[p]:
                    resumed[p] = time.perf_counter() - killed
            await asyncio.sleep(0.05)
        await sender
        await wait_read(service, len(feed))
        await service.drain(120)
        await nc.close()
        print(f"2 workers, {args.rate:,.0f} lines/s; killed {victim['id']} holding {len(lost)}")
        print(
            f"  every partition owned again after {owned_at:.2f} s" if owned_at else "  not owned"
        )
        if resumed:
            print(
                f"  consuming again (ack floor moves) after {max(resumed.values()):.2f} s "
                f"(first partition {min(resumed.values()):.2f} s)"
            )
        print(f"  lease TTL {service.config.workers.lease_ttl_s:g} s, renew every "
              f"{service.config.workers.renew_interval_s:g} s")  # fmt: skip
        print(f"  rows stored {await rows(service):,}")


def total(families: list[dict[str, Any]], name: str, **labels: str) -> float:
    """A counter summed over the processes (and over its other labels)."""
    out = 0.0
    for fams in families:
        fam = fams.get(name)
        if fam is None:
            continue
        for s in fam.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                out += s.value
    return out


def bucket_quantile(
    families: list[dict[str, Any]], store: str, q: float
) -> tuple[float, float, int]:
    """Quantile `q` of the workers' latency histograms (summed): the estimate interpolated
    within its bucket as Prometheus' histogram_quantile does, the bucket's upper bound, and
    the count."""
    buckets: dict[float, float] = {}
    for fams in families:
        fam = fams.get("aisfusion_end_to_end_latency_seconds")
        if fam is None:
            continue
        for s in fam.samples:
            if s.name.endswith("_bucket") and s.labels.get("store") == store:
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    total = buckets.get(float("inf"), 0.0)
    below, lower = 0.0, 0.0
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            inside = buckets[le] - below
            share = (q * total - below) / inside if inside else 1.0
            estimate = lower + (le - lower) * share if le != float("inf") else lower
            return estimate, le, int(total)
        below, lower = buckets[le], le
    return float("inf"), float("inf"), int(total)


async def latency(args: argparse.Namespace) -> None:
    total = int(args.rate * args.seconds)
    feed = two_receivers(total, args.vessels, args.seed, back_s=3600)
    for mode in args.modes.split(","):
        async with installation(mode) as service:
            writers = [
                (await asyncio.open_connection("127.0.0.1", service.feed_port))[1] for _ in "ab"
            ]
            t0 = time.perf_counter()
            sent = 0
            while sent < len(feed):
                due = min(len(feed), int((time.perf_counter() - t0) * args.rate) + 1)
                for conn, line in feed[sent:due]:
                    writers[conn].write((line + "\r\n").encode())
                for w in writers:
                    await w.drain()
                sent = due
                await asyncio.sleep(0.005)
            achieved = len(feed) / (time.perf_counter() - t0)
            await wait_read(service, len(feed))
            await service.drain(120)
            if mode == "in_process":
                families = [{f.name: f for f in service.metrics.registry.collect()}]
            else:
                families = await asyncio.get_running_loop().run_in_executor(
                    None, worker_metrics, service
                )
            label = mode if mode == "in_process" else f"workers={mode}"
            stages: dict[str, float] = {}
            for fams in families:
                fam = fams.get("aisfusion_stage_seconds")
                for smp in fam.samples if fam else []:
                    if smp.name.endswith("_total"):
                        stage = smp.labels["stage"]
                        stages[stage] = stages.get(stage, 0.0) + smp.value
            print(
                f"{label}: stage seconds "
                + ", ".join(
                    f"{k} {v:.2f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])
                )
            )
            for store in ("redis", "postgres"):
                p50, b50, n = bucket_quantile(families, store, 0.5)
                p99, b99, _ = bucket_quantile(families, store, 0.99)
                print(
                    f"{label:11s} {achieved:8,.0f} lines/s  -> {store:8s} "
                    f"p50 ~{p50 * 1e3:5.1f} ms (<= {b50 * 1e3:g})  "
                    f"p99 ~{p99 * 1e3:5.1f} ms (<= {b99 * 1e3:g})  ({n:,} positions)"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--modes", default="in_process,1,2")
    t.add_argument("--messages", type=int, default=300_000)
    f = sub.add_parser("failover")
    f.add_argument("--rate", type=float, default=5000)
    f.add_argument("--seconds", type=float, default=20)
    lat = sub.add_parser("latency")
    lat.add_argument("--modes", default="in_process,1,2")
    lat.add_argument("--rate", type=float, default=10_000)
    lat.add_argument("--seconds", type=float, default=20)
    for p in (t, f, lat):
        p.add_argument("--vessels", type=int, default=20_000)
        p.add_argument("--seed", type=int, default=7)
    parsed = parser.parse_args()
    uvloop.run(
        {"throughput": throughput, "failover": failover, "latency": latency}[parsed.what](parsed)
    )
