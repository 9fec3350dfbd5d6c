"""Throughput from socket to PostgreSQL and Redis, on embedded servers.

Generates simulated multi-receiver traffic first (a fleet heard by two receivers, the second
hearing about half of the transmissions again: realistic duplicates), then sends it at full
speed over TCP to a service started in this process, and reports:

- messages/s from the first byte sent to every position committed in PostgreSQL and written
  to Redis (every accepted position stored: the bench checks the row count);
- the time split per stage (from `aisfusion_stage_seconds_total`);
- CPU seconds used by the service process, PostgreSQL (all its processes) and Valkey.

    .venv/bin/python bench/throughput.py [--messages 300000] [--vessels 20000] [--connections 2]
    .venv/bin/python bench/throughput.py --file ../shared/data/ais/aishub-2015.nmea --repeat 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import uvloop
from benchservice import embedded_service, sample, two_receivers, wait_read

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def postgres_pids(postmaster: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True, check=False
    )
    return [postmaster, *(int(p) for p in out.stdout.split())]


async def send(port: int, payload: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    view = memoryview(payload)
    for i in range(0, len(view), 1 << 20):
        writer.write(view[i : i + (1 << 20)])
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def main(args: argparse.Namespace) -> None:
    if args.file:
        # Each connection replays the whole file as another receiver would.
        base = Path(args.file).read_text("latin-1").splitlines()
        chunks = [base * args.repeat for _ in range(args.connections)]
        label = f"{args.file} x{args.repeat} on {args.connections} connections"
    else:
        t = time.perf_counter()
        feed = two_receivers(args.messages, args.vessels, args.seed, back_s=1800)
        chunks = [[line for conn, line in feed if conn == k] for k in (0, 1)]
        label = f"simulated: {args.vessels} vessels, 2 receivers (one connection each)"
        print(f"generated in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    lines = [line for chunk in chunks for line in chunk]
    payloads = [("\r\n".join(c) + "\r\n").encode("latin-1") for c in chunks]

    # Recorded files carry old tag-block times; accept them for the measurement.
    async with embedded_service(
        "aisf-bench-", actors={"shards": args.shards, "max_lateness_s": 1e10}
    ) as service:
        emb = service.embedded
        assert emb is not None
        assert emb.postgres_pid is not None
        assert emb.redis_pid is not None
        pg_pids = postgres_pids(emb.postgres_pid)
        cpu0 = (time.process_time(), proc_cpu(pg_pids), proc_cpu([emb.redis_pid]))
        t0 = time.perf_counter()
        await asyncio.gather(*(send(service.feed_port, p) for p in payloads))
        t_sent = time.perf_counter()
        await wait_read(service, len(lines))
        t_read = time.perf_counter()
        source = service.config.feed.source
        await service.drain()
        t_done = time.perf_counter()
        pg_pids = postgres_pids(emb.postgres_pid)
        cpu1 = (time.process_time(), proc_cpu(pg_pids), proc_cpu([emb.redis_pid]))

        messages = sample(service, "aisfusion_feed_messages_total", {"source": source})
        decisions = sample(service, "aisfusion_decisions_total")
        assert service.postgres is not None
        rows = await asyncio.wrap_future(
            service.bridge.submit(service.postgres.fetchval("SELECT count(*) FROM positions"))
        )
        elapsed = t_done - t0
        print(f"input: {label}; {len(lines)} lines, {int(messages)} messages")
        print(f"shards {args.shards}, connections {len(payloads)}")
        print(f"sent in {t_sent - t0:.2f} s, read in {t_read - t0:.2f} s, ", end="")
        print(f"all stored in {elapsed:.2f} s")
        print(f"THROUGHPUT socket -> postgres+redis: {messages / elapsed:,.0f} messages/s")
        print(f"positions decided {int(decisions)}, rows in postgres {rows}")
        stages = {}
        for fam in service.metrics.registry.collect():
            if fam.name == "aisfusion_stage_seconds":
                for s in fam.samples:
                    if s.name.endswith("_total"):
                        stages[s.labels["stage"]] = s.value
        print("stage time (s, summed over threads):")
        for stage, secs in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"  {stage:10s} {secs:7.2f}  ({secs / elapsed * 100:5.1f} % of wall)")
        print("CPU seconds:")
        print(f"  service    {cpu1[0] - cpu0[0]:7.2f}")
        print(f"  postgres   {cpu1[1] - cpu0[1]:7.2f}")
        print(f"  valkey     {cpu1[2] - cpu0[2]:7.2f}")
        if rows != decisions:
            print(f"MISMATCH: {decisions} decided but {rows} rows stored", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--vessels", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--connections", type=int, default=1, help="with --file")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--file", help="replay a recorded NMEA file instead of simulated traffic")
    parser.add_argument("--repeat", type=int, default=1, help="times to repeat --file")
    uvloop.run(main(parser.parse_args()))
