"""Soak: simulated traffic for N minutes while PostgreSQL and Redis are stopped and started on a
schedule; then every accepted position must be in PostgreSQL exactly once.

Every minute of the run repeats this schedule (seconds into the minute):

    10 stop PostgreSQL   18 start PostgreSQL
    25 stop Redis        31 start Redis
    40 stop both         46 start both

It prints accepted vs stored rows (they must be equal; exit 1 otherwise), resident memory of
the service process (sampled every 5 s: first after warm-up, last, peak, and the trend over the
second half of the run in MiB/hour) and the breaker transitions. `tests/e2e/test_soak.py` runs
the one-minute variant in CI.

    .venv/bin/python bench/soak.py --minutes 10 [--vessels 10000] [--rate 3000] [--receivers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import msgspec
import uvloop
from benchservice import sample

from aisfusion import logs
from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.storage.embedded import EmbeddedServers, discard_moved_data
from aisfusion.traffic.receivers import receivers
from aisfusion.traffic.replay import simulate

SCHEDULE = [
    (10, "stop", ("postgres",)),
    (18, "start", ("postgres",)),
    (25, "stop", ("redis",)),
    (31, "start", ("redis",)),
    (40, "stop", ("postgres", "redis")),
    (46, "start", ("postgres", "redis")),
]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def chaos(servers: EmbeddedServers, minutes: float, log: list[str]) -> None:
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    actions = {
        ("stop", "postgres"): servers.stop_postgres,
        ("start", "postgres"): servers.start_postgres,
        ("stop", "redis"): servers.stop_redis,
        ("start", "redis"): servers.start_redis,
    }
    minute = 0
    while minute < minutes:
        for at, verb, targets in SCHEDULE:
            when = start + minute * 60 + at
            if when - start > minutes * 60:
                return
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            for target in targets:
                # Blocking (waits for readiness): off the event loop.
                await loop.run_in_executor(None, actions[verb, target])
            log.append(f"{time.monotonic() - start:6.1f} s  {verb} {' and '.join(targets)}")
        minute += 1


async def main(args: argparse.Namespace) -> int:
    logs.configure("ERROR")  # the outages are on purpose: keep their warnings out of the report
    tmp = Path(tempfile.mkdtemp(prefix="aisf-soak-"))
    tmp.chmod(0o755)
    servers = EmbeddedServers(tmp / "embedded")
    servers.start()
    raw = msgspec.to_builtins(Config())
    raw["feed"].update(host="127.0.0.1", port=0)
    raw["metrics"]["port"] = 0
    raw["postgres"].update(url=servers.postgres_url, command_timeout_s=5.0)
    raw["redis"]["url"] = servers.redis_url
    raw["spool"]["dir"] = str(tmp / "spool")
    raw["breaker"].update(reset_base_s=0.5, reset_max_s=4.0, call_timeout_s=3.0)
    raw["dlq"].update(retry_base_s=0.5, retry_max_s=5.0, poll_interval_s=0.5)
    raw["log"]["level"] = "ERROR"
    service = Service(msgspec.convert(raw, Config))
    await service.start()
    events: list[str] = []
    memory: list[float] = []
    try:
        duration = args.minutes * 60

        async def watch() -> None:
            while True:
                memory.append(rss_mib())
                await asyncio.sleep(5)

        watcher = asyncio.create_task(watch())
        sent, _ = await asyncio.gather(
            simulate(
                "127.0.0.1",
                service.feed_port,
                vessels=args.vessels,
                rate=args.rate,
                duration_s=duration,
                seed=11,
                station=None if args.receivers else "soak-rx",
                # Every transmission heard by several receivers (loss, delay, duplicates): the
                # vessels drop what is heard twice, and only their decisions are stored.
                receivers=receivers(args.receivers, prefix="soak-rx") if args.receivers else None,
            ),
            chaos(servers, args.minutes, events),
        )
        watcher.cancel()
        # Every server is up again: wait until everything accepted is in Postgres.
        drained = await service.drain(120)
        accepted = int(sample(service, "aisfusion_decisions_total"))
        conn = await asyncpg.connect(servers.postgres_url)
        try:
            stored = int(await conn.fetchval("SELECT count(*) FROM positions"))
        finally:
            await conn.close()
        print(
            f"soak: {args.minutes:g} min, {args.vessels} vessels, {args.receivers} receivers, "
            f"{sent} lines sent"
        )
        for event in events:
            print(f"  {event}")
        print(f"accepted positions {accepted}, stored rows {stored}, drained {drained}")
        print("breaker transitions:")
        for family in service.metrics.registry.collect():
            if family.name == "aisfusion_breaker_transitions":
                for s in family.samples:
                    if s.name.endswith("_total"):
                        print(f"  {s.labels['breaker']:8s} -> {s.labels['to']:9s} {int(s.value)}")
        diverted = {
            t: int(sample(service, "aisfusion_dead_letter_diverted_batches_total", {"target": t}))
            for t in ("dlq", "spool")
        }
        print(f"batches diverted: {diverted}")
        warm = memory[min(len(memory) - 1, 2)] if memory else 0.0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        last = memory[-1] if memory else 0.0
        print(
            f"resident memory MiB: after warm-up {warm:.0f}, last {last:.0f}, peak {peak:.0f} "
            f"(samples every 5 s: {' '.join(f'{m:.0f}' for m in memory)})"
        )
        half = memory[len(memory) // 2 :]
        if len(half) >= 2:
            # Least-squares slope over the second half: flat memory is a slope near zero.
            slope = statistics.linear_regression(range(len(half)), half).slope * 720  # per hour
            print(
                f"second half: mean {statistics.fmean(half):.0f} MiB, min {min(half):.0f}, "
                f"max {max(half):.0f}, trend {slope:+.1f} MiB/hour"
            )
        ok = drained and accepted == stored and accepted > 0
        print("RESULT: " + ("accepted == stored" if ok else "MISMATCH"))
        return 0 if ok else 1
    finally:
        await service.stop()
        servers.stop()
        discard_moved_data(tmp / "embedded")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--vessels", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=None, help="cap on lines/s")
    parser.add_argument(
        "--receivers", type=int, default=2, help="simulated receivers (0: one plain station)"
    )
    sys.exit(uvloop.run(main(parser.parse_args())))
