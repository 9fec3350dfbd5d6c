"""End-to-end latency at fixed rates, socket read -> Redis and -> PostgreSQL commit.

Generates one continuous stretch of simulated multi-receiver traffic (a fleet heard by two
receivers, the second hearing about half of the transmissions again, stamped one second
later), starts the service in this process on embedded servers, then for each rate sends the
next `rate * seconds` lines over two TCP connections, paced every 5 ms on an absolute schedule
and waiting for the socket to take them (so "sent/s" falls when the service cannot keep up).
After each rate it waits until the service has read every line and drained, so the slowest
positions are counted too.

Every position's latency is taken where the service itself observes it for its
`aisfusion_end_to_end_latency_seconds` histogram (`Metrics.stored`, called by the live writer
once its Redis pipeline returned and by the Postgres writer once the batch committed), from
`Position.arrival`: the wall time the chunk holding its line was read from the socket. The
bench wraps that call to keep every value, so the percentiles are exact rather than bucketed.
The first `--warmup` seconds of each rate are left out (the fleet's vessels are being created).

    .venv/bin/python bench/latency.py [--rates 5000,10000,20000] [--seconds 30] [--warmup 2]
                                      [--redis-flush 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import uvloop
from benchservice import embedded_service, percentile, two_receivers, wait_read

TICK_S = 0.005


def percentiles(values: Sequence[float]) -> str:
    if not values:
        return "        -          -          -   (0)"
    ordered = sorted(values)
    p50, p99 = percentile(ordered, 0.5) * 1e3, percentile(ordered, 0.99) * 1e3
    return f"{p50:8.1f}   {p99:8.1f}   {ordered[-1] * 1e3:8.1f}   ({len(ordered):,})"


async def paced(
    writers: list[asyncio.StreamWriter], lines: list[tuple[int, bytes]], rate: float
) -> float:
    """Send `lines` at `rate` lines/s on an absolute schedule; returns the achieved rate."""
    t0 = time.perf_counter()
    sent = 0
    while sent < len(lines):
        due = min(len(lines), int((time.perf_counter() - t0) * rate) + 1)
        if due > sent:
            parts: list[list[bytes]] = [[] for _ in writers]
            for conn, line in lines[sent:due]:
                parts[conn].append(line)
            for writer, part in zip(writers, parts, strict=True):
                if part:
                    writer.write(b"".join(part))
                    await writer.drain()  # a service that falls behind slows the sender
            sent = due
        await asyncio.sleep(TICK_S)
    return len(lines) / (time.perf_counter() - t0)


async def main(args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rates.split(",")]
    total = int(sum(rates) * args.seconds)
    t = time.perf_counter()
    feed = [
        (conn, (line + "\r\n").encode())
        for conn, line in two_receivers(total, args.vessels, args.seed, back_s=3600)
    ]
    print(f"generated {len(feed):,} lines in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    redis = {} if args.redis_flush is None else {"flush_interval_s": args.redis_flush}
    # The simulated clock starts an hour back: accept its tag-block times.
    async with embedded_service(
        "aisf-bench-", actors={"shards": args.shards, "max_lateness_s": 1e10}, redis=redis
    ) as service:
        # Keep every latency the service observes (the histogram only keeps buckets).
        observed: dict[str, list[tuple[float, float]]] = {"redis": [], "postgres": []}
        stored = service.metrics.stored

        def keep(store: str, positions: Sequence[Any]) -> None:
            now = time.time()
            observed[store].extend((p.arrival, now - p.arrival) for p in positions)
            stored(store, positions)

        service.metrics.stored = keep  # type: ignore[method-assign]
        conns = [await asyncio.open_connection("127.0.0.1", service.feed_port) for _ in "ab"]
        writers = [w for _, w in conns]
        flush = service.config.redis.flush_interval_s
        print(f"shards {args.shards}, 2 connections, {args.vessels} vessels, redis flush ", end="")
        print(f"every {flush:g} s; first {args.warmup:g} s of each rate left out")
        print("latency in ms (positions observed)")
        print("rate/s    sent/s   | -> redis   p50        p99        max")
        print("                   | -> postgres")
        offset = 0
        for rate in rates:
            chunk = feed[offset : offset + int(rate * args.seconds)]
            offset += len(chunk)
            start = time.time()
            achieved = await paced(writers, chunk, rate)
            await wait_read(service, offset)
            if not await service.drain(120):
                raise RuntimeError(f"the service did not drain after the {rate:,.0f}/s run")
            skip = start + args.warmup
            redis = [lat for arrival, lat in observed["redis"] if arrival >= skip]
            pg = [lat for arrival, lat in observed["postgres"] if arrival >= skip]
            print(f"{rate:7,.0f}  {achieved:8,.0f}   | redis    {percentiles(redis)}")
            print(f"                   | postgres {percentiles(pg)}")
            if redis:
                print(f"                   | redis mean {statistics.fmean(redis) * 1e3:.1f} ms")
            for values in observed.values():
                values.clear()
        for writer in writers:
            writer.close()
            await writer.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="5000,10000,20000", help="lines/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="per rate")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds left out per rate")
    parser.add_argument("--vessels", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument(
        "--redis-flush", type=float, help="redis.flush_interval_s (default: the configured 0)"
    )
    uvloop.run(main(parser.parse_args()))
