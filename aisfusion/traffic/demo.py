"""`aisfusion demo`: embedded servers, the service, simulated receivers, a live summary.

The demo always runs on its own embedded PostgreSQL, Valkey and NATS (in `<data_dir>/demo`,
wiped first), on free ports, so it never touches a configured deployment. With workers.mode =
"jetstream" (the default) it runs as `aisfusion run` does: a front publishing to the log and
worker processes deciding the vessels. Three honest receivers and one that reports every
position 1.5 km off watch the same simulated fleet; the summary is read back from the stores
themselves, and the source-quality table shows the bad receiver demoted.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, TextIO

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.traffic.receivers import receivers
from aisfusion.traffic.replay import simulate


def _sample(service: Service, name: str, labels: dict[str, str] | None = None) -> float:
    value = service.metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


def _workers(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Each live worker's id, pid, partitions, consumed messages and source table, asked on
    its own HTTP port (blocking)."""
    out = []
    for card in status["log"].get("workers_alive", []):
        with urllib.request.urlopen(f"http://{card['metrics']}/status", timeout=5) as resp:
            worker = json.loads(resp.read())
        log = worker["log"] or {}
        with urllib.request.urlopen(f"http://{card['metrics']}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        rejects: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "aisfusion_vessel_rejected":
                for s in family.samples:
                    if s.name.endswith("_total") and s.value:
                        reason = s.labels["reason"]
                        rejects[reason] = rejects.get(reason, 0) + int(s.value)
        out.append(
            {
                "id": card["id"],
                "pid": card["pid"],
                "partitions": len(log.get("partitions", {})),
                "consumed": log.get("consumed", 0),
                "sources": worker["sources"],
                "rejects": rejects,
            }
        )
    return out


def _merged_sources(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Source quality as each worker estimated it from its own vessels, merged per source
    (quality and weight weighted by the outcomes graded; demoted where any worker demoted)."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        m = merged.setdefault(
            row["source"], {"source": row["source"], "q": 0.0, "w": 0.0, "graded": 0, "d": False}
        )
        n = max(1, row["graded"])
        m["q"] += row["quality"] * n
        m["w"] += row["weight"] * n
        m["graded"] += row["graded"]
        m["n"] = m.get("n", 0) + n
        m["d"] = m["d"] or row["demoted"]
    return [
        {
            "source": m["source"],
            "quality": m["q"] / m["n"],
            "weight": m["w"] / m["n"],
            "graded": m["graded"],
            "demoted": m["d"],
        }
        for m in sorted(merged.values(), key=lambda m: m["source"])
    ]


def _rejects(service: Service) -> dict[str, int]:
    out: dict[str, int] = {}
    for family in service.metrics.registry.collect():
        if family.name in ("aisfusion_feed_rejected", "aisfusion_vessel_rejected"):
            for s in family.samples:
                if s.name.endswith("_total") and s.value:
                    reason = s.labels["reason"]
                    out[reason] = out.get(reason, 0) + int(s.value)
    return out


async def run_demo(
    config: Config,
    *,
    vessels: int,
    duration_s: float,
    rate: float | None,
    seed: int,
    out: TextIO = sys.stdout,
    worker_args: list[str] | None = None,
) -> dict[str, float]:
    data_dir = Path(config.embedded.data_dir) / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    config = msgspec.structs.replace(
        config,
        feed=msgspec.structs.replace(config.feed, host="127.0.0.1", port=0),
        metrics=msgspec.structs.replace(config.metrics, port=0),
        postgres=msgspec.structs.replace(config.postgres, url=""),
        redis=msgspec.structs.replace(config.redis, url=""),
        embedded=msgspec.structs.replace(config.embedded, data_dir=str(data_dir)),
        spool=msgspec.structs.replace(config.spool, dir=str(data_dir / "spool")),
    )
    front = config.workers.mode == "jetstream"
    print(
        "aisfusion demo: starting embedded PostgreSQL, Valkey"
        + (" and NATS, and the workers …" if front else " …"),
        file=out,
        flush=True,
    )
    service = Service(
        config, role="front" if front else "direct", worker_args=list(worker_args or [])
    )
    async with service:
        print(
            f"  feed on 127.0.0.1:{service.feed_port}, "
            f"metrics on http://127.0.0.1:{service.metrics_port}/metrics",
            file=out,
        )
        print(
            f"  simulating {vessels} vessels heard by 3 receivers and a bad one "
            f"(positions 1.5 km off) for {duration_s:.0f} s"
            + (f" at up to {rate:.0f} lines/s" if rate else ""),
            file=out,
            flush=True,
        )
        started = time.monotonic()

        def progress(sent: int) -> None:
            elapsed = time.monotonic() - started
            if front:
                published = _sample(service, "aisfusion_log_published_messages_total")
                lag = sum(
                    p["lag"] or 0
                    for p in (
                        service.log_monitor.snapshot()["partitions"] if service.log_monitor else []
                    )
                )
                print(
                    f"  {elapsed:5.1f} s  sent {sent:7d} lines  "
                    f"published {int(published):7d} messages  log lag {lag:5d} batches",
                    file=out,
                    flush=True,
                )
                return
            stored = _sample(service, "aisfusion_batch_rows_total", {"store": "postgres"})
            live = _sample(service, "aisfusion_batch_rows_total", {"store": "redis"})
            print(
                f"  {elapsed:5.1f} s  sent {sent:7d} lines  "
                f"history rows {int(stored):7d}  live writes {int(live):7d}",
                file=out,
                flush=True,
            )

        sent = await simulate(
            "127.0.0.1",
            service.feed_port,
            vessels=vessels,
            rate=rate,
            duration_s=duration_s,
            seed=seed,
            station=None,
            progress=progress,
            receivers=receivers(3, fault="offset", loss=0.2, noise_m=10.0, prefix="demo-rx"),
        )
        # Wait until the service has read every line, then drain every stage.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = _sample(service, "aisfusion_feed_lines_total", {"source": config.feed.source})
            if lines >= sent:
                break
            await asyncio.sleep(0.05)
        await service.drain()
        elapsed = time.monotonic() - started
        pg, rd = service.postgres, service.redis
        if pg is None or rd is None:
            raise RuntimeError("demo: stores not connected")
        positions = await asyncio.wrap_future(
            service.bridge.submit(pg.fetchval("SELECT count(*) FROM positions"))
        )
        tracked = await asyncio.wrap_future(
            service.bridge.submit(pg.fetchval("SELECT count(DISTINCT mmsi) FROM positions"))
        )
        named = await asyncio.wrap_future(
            service.bridge.submit(
                pg.fetchval("SELECT count(*) FROM vessels WHERE name IS NOT NULL")
            )
        )
        live = await asyncio.wrap_future(service.bridge.submit(rd.live_count()))
        messages = _sample(service, "aisfusion_feed_messages_total", {"source": config.feed.source})
        rejects = _rejects(service)
        workers: list[dict[str, Any]] = []
        if front:
            status = await asyncio.get_running_loop().run_in_executor(None, service.status)
            workers = await asyncio.get_running_loop().run_in_executor(None, _workers, status)
            for w in workers:
                for reason, n in w["rejects"].items():
                    rejects[reason] = rejects.get(reason, 0) + n
        summary = {
            "lines_sent": float(sent),
            "messages": messages,
            "vessels_tracked": float(tracked),
            "vessels_named": float(named),
            "positions_stored": float(positions),
            "live_vessels": float(live),
            "messages_per_s": messages / elapsed if elapsed else 0.0,
        }
        print("\naisfusion demo summary (read back from PostgreSQL and Valkey)", file=out)
        print(f"  vessels tracked (distinct MMSI in positions)  {tracked}", file=out)
        print(f"  vessels with static data (vessels.name)       {named}", file=out)
        print(f"  positions stored in PostgreSQL                {positions}", file=out)
        print(f"  live vessels in Valkey (activity index)       {live}", file=out)
        print(f"  messages received                             {int(messages)}", file=out)
        print(
            f"  messages/s                                    {summary['messages_per_s']:.0f}",
            file=out,
        )
        print(
            "  rejects                                       "
            + (", ".join(f"{k}={v}" for k, v in sorted(rejects.items())) or "none"),
            file=out,
        )
        status = await asyncio.get_running_loop().run_in_executor(None, service.status)
        sources = status["sources"]
        if front:
            print(f"\nworkers (each owns partitions of the log; {len(workers)} running)", file=out)
            print(f"  {'worker':28s} {'pid':>7s} {'partitions':>10s} {'consumed':>9s}", file=out)
            for w in workers:
                print(
                    f"  {w['id']:28s} {w['pid']:7d} {w['partitions']:10d} {w['consumed']:9d}",
                    file=out,
                )
            sources = _merged_sources([s for w in workers for s in w["sources"]])
            summary["workers"] = float(len(workers))
        print("\nsource quality (fusion weighs each receiver by it)", file=out)
        print(f"  {'source':28s} {'quality':>7s} {'weight':>7s} {'graded':>7s}  state", file=out)
        for row in sources:
            state = "DEMOTED" if row["demoted"] else "ok"
            print(
                f"  {row['source']:28s} {row['quality']:7.3f} {row['weight']:7.3f} "
                f"{row['graded']:7d}  {state}",
                file=out,
            )
        out.flush()
    return summary
