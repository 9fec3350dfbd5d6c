"""How the shell shows each control command's reply: tables, the supervision tree, a vessel's
decision and window, durations and times. A reply this version does not know how to show
(a newer service) is shown as JSON."""

from __future__ import annotations

import datetime
import json
import textwrap
from collections.abc import Callable, Sequence
from typing import Any


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def timestamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    texts = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        for i, text in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], len(text))
    lines = [headers, *texts]
    return "\n".join(
        "  ".join(t.ljust(w) for t, w in zip(line, widths, strict=False)).rstrip() for line in lines
    )


def _tree_rows(node: dict[str, Any], prefix: str, last: bool, root: bool) -> list[list[Any]]:
    branch = "" if root else prefix + ("└── " if last else "├── ")
    detail = []
    if node.get("kind") == "shard" and node.get("vessels") is not None:
        detail.append(f"{node['vessels']} vessels, {node['processed']} messages")
    if node.get("kind") == "supervisor" and node.get("strategy"):
        detail.append(
            f"{node['strategy']}, at most {node['max_restarts']} restarts in "
            f"{node['within_s']:g} s" + (", ESCALATED" if node.get("escalated") else "")
        )
    if node.get("kind") == "worker" and node.get("pid"):
        detail.append(f"pid {node['pid']}")
    if node.get("last_error"):
        detail.append(f"last error: {node['last_error']}")
    rows = [
        [branch + node["name"], node["state"], node.get("restarts"), node.get("mailbox"), *detail]
    ]
    children = node.get("children") or []
    inner = "" if root else prefix + ("    " if last else "│   ")
    for i, child in enumerate(children):
        rows += _tree_rows(child, inner, i == len(children) - 1, root=False)
    return rows


def _breaker_line(b: dict[str, Any]) -> str:
    text = f"{b['name']} {b['state']}{' (forced)' if b.get('forced') else ''}"
    return f"{text} for {duration(b.get('seconds_in_state'))}"


def render_status(data: dict[str, Any]) -> str:
    head = f"aisfusion {data.get('version', '?')}  pid {data.get('pid', '?')}"
    head += f"  up {duration(data.get('uptime_s'))}  "
    head += "READY" if data.get("ready") else "NOT READY"
    if data.get("failure"):
        head += f"\nFAILED: {data['failure']}"
    rows = _tree_rows(data["tree"], "", True, root=True)
    headers = ["ACTOR", "STATE", "RESTARTS", "MAILBOX", "DETAIL"]
    out = [head, "", table(headers, [[*r[:4], ", ".join(r[4:])] for r in rows])]
    log = data.get("log")
    if log:
        out += ["", *_log_lines(log, data.get("role"))]
    if data.get("role") == "front":
        return "\n".join(out)
    storage = data.get("storage")
    if storage:
        out.append("")
        out.append("breakers: " + ", ".join(_breaker_line(b) for b in storage["breakers"]))
        dlq = storage.get("dlq") or {}
        spool = storage.get("spool") or {}
        out.append(
            f"history: {storage.get('rows_written', 0)} rows written, "
            f"{storage.get('inflight_batches', 0)} batches in flight"
        )
        if dlq:
            out.append(
                f"dead-letter queue: {dlq.get('ready', 0)} ready, {dlq.get('scheduled', 0)} "
                f"scheduled, {dlq.get('leased', 0)} leased, {dlq.get('parked', 0)} parked "
                f"({dlq.get('rows', 0)} rows, oldest {duration(dlq.get('oldest_age_s'))})"
            )
        out.append(f"spool: {spool.get('batches', 0)} batches ({spool.get('rows', 0)} rows)")
    else:
        out += ["", "storage supervisor: no answer (busy)"]
    return "\n".join(out)


def _ranges(numbers: Sequence[int]) -> str:
    """1,2,3,7 -> "1-3,7"."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(numbers):
        if run and n != run[-1] + 1:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run = []
        run.append(n)
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def _log_lines(log: dict[str, Any], role: Any) -> list[str]:
    """The JetStream side: a front's publisher, workers and partitions; a worker's leases."""
    if role != "front":
        held = [int(p) for p in log.get("partitions", {})]
        return [
            f"log: worker {log.get('worker')}, {len(held)} partitions ({_ranges(held) or '-'}), "
            f"{log.get('consumed', 0)} consumed, {log.get('acked', 0)} log messages acked, "
            f"{log.get('unacked', 0)} awaiting commit; {len(log.get('workers', []))} workers "
            f"alive; {log.get('moves', 0)} moves"
        ]
    out = []
    pub = log.get("publisher") or {}
    out.append(
        f"log: {'connected' if pub.get('connected') else 'NOT CONNECTED'}, "
        f"{pub.get('published', 0)} published, {pub.get('buffered', 0)} buffered, "
        f"{pub.get('dropped', 0)} dropped"
        + (f"; last error: {pub['last_error']}" if pub.get("last_error") else "")
    )
    stream = log.get("stream")
    if stream:
        out.append(
            f"stream {stream['name']}: {stream['messages']} messages, {stream['bytes']} bytes"
        )
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for part in log.get("partitions", []):
        by_owner.setdefault(part.get("owner") or "(none)", []).append(part)
    alive = {w["id"]: w for w in log.get("workers_alive", [])}
    rows = []
    for owner, parts in sorted(by_owner.items()):
        card = alive.get(owner)
        lag = sum(part["lag"] or 0 for part in parts)
        rows.append(
            [
                owner,
                "alive" if card else ("-" if owner == "(none)" else "GONE"),
                card.get("pid") if card else None,
                card.get("metrics") if card else None,
                len(parts),
                _ranges([part["partition"] for part in parts]),
                lag,
            ]
        )
    if rows:
        headers = ["OWNER", "HEARTBEAT", "PID", "METRICS", "PARTITIONS", "WHICH", "LAG"]
        out += ["", table(headers, rows)]
    return out


def render_breakers(data: Any) -> str:
    breakers = data if isinstance(data, list) else [data]
    return table(
        ["BREAKER", "STATE", "FOR", "FAILURES", "OPENINGS", "TRANSITIONS", "NEXT PROBE", "ERROR"],
        [
            [
                b["name"],
                b["state"] + (" (forced)" if b.get("forced") else ""),
                duration(b.get("seconds_in_state")),
                b.get("consecutive_failures"),
                b.get("openings"),
                b.get("transitions"),
                duration(b.get("next_probe_in_s")) if b.get("next_probe_in_s") is not None else "-",
                b.get("last_error"),
            ]
            for b in breakers
        ],
    )


def render_dlq(data: dict[str, Any]) -> str:
    if "stats" in data:
        s = data["stats"]
        return table(
            ["READY", "SCHEDULED", "LEASED", "PARKED", "ROWS", "OLDEST"],
            [
                [
                    s["ready"],
                    s["scheduled"],
                    s["leased"],
                    s["parked"],
                    s["rows"],
                    duration(s.get("oldest_age_s")),
                ]
            ],
        )
    if "entries" in data:
        entries = data["entries"]
        kind = "parked" if data.get("parked") else "waiting"
        if not entries:
            return f"no {kind} entries"
        return table(
            ["ID", "ROWS", "ATTEMPTS", "SOURCE", "FIRST FAILED", "NEXT RETRY", "ERROR"],
            [
                [
                    e["id"],
                    e["rows"],
                    e["attempts"],
                    e["source"],
                    timestamp(e.get("first_failed_at")),
                    "parked" if e.get("parked") else timestamp(e.get("next_retry_at")),
                    e.get("error"),
                ]
                for e in entries
            ],
        )
    if "moved" in data:
        return f"{data['moved']} entries due now (the storage supervisor retries them)"
    if "cleared" in data:
        return f"cleared {data['cleared']} {'parked ' if data.get('parked') else ''}entries"
    return json.dumps(data, indent=2)


def _position(p: dict[str, Any]) -> str:
    parts = [f"{p['lat']:.5f} {p['lon']:.5f} at {timestamp(p.get('ts'))}"]
    for key, label, unit in (("sog", "SOG", " kn"), ("cog", "COG", "°"), ("heading", "HDG", "°")):
        if p.get(key) is not None:
            parts.append(f"{label} {p[key]:g}{unit}")
    if p.get("nav_status") is not None:
        parts.append(f"nav status {p['nav_status']}")
    if p.get("msg_type"):
        parts.append(f"type {p['msg_type']}")
    source = p.get("source", "?") + (f" (station {p['station']})" if p.get("station") else "")
    return ", ".join(parts) + f"; from {source}"


_SHOWN = {"mmsi", "shard", "last", "static", "first_seen", "last_seen", "support", "window"}
_SHOWN |= {"pending", "quarantine", "unconfirmed", "vouched"}


def render_vessel(data: dict[str, Any]) -> str:
    mmsi = data["mmsi"]
    actor = data.get("actor")
    out = []
    if actor is None:
        out.append(f"vessel {mmsi}: no vessel actor (never seen, or passivated while idle)")
    else:
        out.append(f"vessel {mmsi}: actor in shard {actor.get('shard')}")
        out.append(
            f"  seen {timestamp(actor.get('first_seen'))} .. {timestamp(actor.get('last_seen'))}"
        )
        last = actor.get("last")
        out.append("  last decision: " + (_position(last) if last else "none yet"))
        support = actor.get("support") or []
        if last:
            out.append(
                "  why: "
                + (
                    f"best-scoring fresh observation, heard by {len(support)} source(s): "
                    + ", ".join(map(str, support))
                    if support
                    else "restored from its live record"
                )
            )
            out.append(
                "  track: "
                + (
                    "vouched for by a second source (a jump from it counts against its source)"
                    if actor.get("vouched")
                    else "one source's word so far (a jump from it counts against no one yet)"
                )
            )
        out.append(
            f"  window: {actor.get('window', 0)} recent payloads (dedup), "
            f"{actor.get('pending', 0)} pending"
        )
        quarantine = actor.get("quarantine") or []
        if quarantine:
            out.append(f"  quarantined jumps ({len(quarantine)}), waiting for corroboration:")
            out += [
                f"    {q['lat']:.5f} {q['lon']:.5f} at {timestamp(q.get('ts'))} from {q['source']}"
                for q in quarantine
            ]
        else:
            out.append("  quarantined jumps: none")
        static = actor.get("static")
        if static:
            fields = ", ".join(
                f"{k} {v}" for k, v in static.items() if v is not None and k not in ("mmsi", "ts")
            )
            out.append(f"  static data: {fields or 'none'} (as of {timestamp(static.get('ts'))})")
        else:
            out.append("  static data: none yet")
        if actor.get("unconfirmed"):
            out.append(f"  unconfirmed static changes: {actor['unconfirmed']}")
        for key, value in actor.items():  # whatever else the vessel actor reports
            if key not in _SHOWN:
                out.append(f"  {key}: {value}")
    live = data.get("live")
    if live:
        fields = " ".join(f"{k}={v}" for k, v in live.items())
        out.append(f"  live record (Redis): {fields}")
    elif data.get("live_error"):
        out.append(f"  live record (Redis): unavailable: {data['live_error']}")
    else:
        out.append("  live record (Redis): none")
    return "\n".join(out)


def render_sources(data: list[dict[str, Any]]) -> str:
    if not data:
        return "no sources yet"
    rows = []
    for s in data:
        outcomes = s.get("outcomes") or {}
        top = sorted(outcomes.items(), key=lambda kv: -kv[1])[:4]
        rows.append(
            [
                s["source"],
                f"{s['quality']:.3f}",
                f"{s['weight']:.3f}",
                "DEMOTED" if s.get("demoted") else "-",
                s.get("demotions"),
                s.get("promotions"),
                s.get("graded"),
                s.get("clock_skew_s"),
                timestamp(s.get("last_ts")),
                " ".join(f"{k}={v}" for k, v in top),
            ]
        )
    headers = ["SOURCE", "QUALITY", "WEIGHT", "STATE", "DEMOTIONS", "PROMOTIONS", "GRADED"]
    return table([*headers, "SKEW s", "LAST SEEN", "OUTCOMES"], rows)


def render_near(data: dict[str, Any]) -> str:
    vessels = data["vessels"]
    head = f"{len(vessels)} vessels within {data['km']:g} km of {data['lat']:g} {data['lon']:g}"
    if not vessels:
        return head
    rows = [
        [
            v["mmsi"],
            f"{v['distance_km']:.3f}",
            v.get("lat"),
            v.get("lon"),
            v.get("sog"),
            v.get("cog"),
            timestamp(v.get("ts")),
            f"{v.get('src')}/{v['stn']}" if v.get("stn") else v.get("src"),
        ]
        for v in vessels
    ]
    return head + "\n" + table(["MMSI", "KM", "LAT", "LON", "SOG", "COG", "TIME", "SOURCE"], rows)


def render_track(data: dict[str, Any]) -> str:
    positions = data["positions"]
    head = (
        f"{len(positions)} stored positions of {data['mmsi']} from {timestamp(data['from'])} "
        f"to {timestamp(data['to'])}"
    )
    if not positions:
        return head
    rows = [
        [
            timestamp(p["ts"]),
            f"{p['lat']:.5f}",
            f"{p['lon']:.5f}",
            p.get("sog"),
            p.get("cog"),
            p.get("msg_type"),
            f"{p['source']}/{p['station']}" if p.get("station") else p["source"],
        ]
        for p in positions
    ]
    return head + "\n" + table(["TIME", "LAT", "LON", "SOG", "COG", "TYPE", "SOURCE"], rows)


def render_restart(data: dict[str, Any]) -> str:
    return (
        f"restarted {data['name']}: {data['state']}, mailbox {cell(data.get('mailbox'))}, "
        f"{data['restarts']} restarts after failures"
    )


def render_help(data: dict[str, Any]) -> str:
    commands = list(data["commands"])
    if "complete" in data:
        commands.append({"usage": "quit", "help": "leave the shell (also exit, Ctrl-D)"})
    lines = []
    for c in commands:
        lines.append(c["usage"])
        lines += textwrap.wrap(c["help"], 96, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[Any], str]] = {
    "status": render_status,
    "breakers": render_breakers,
    "dlq": render_dlq,
    "vessel": render_vessel,
    "sources": render_sources,
    "near": render_near,
    "track": render_track,
    "restart": render_restart,
    "help": render_help,
}


def render(command: str, data: Any) -> str:
    renderer = RENDERERS.get(command)
    if renderer is None:
        return json.dumps(data, indent=2)
    try:
        return renderer(data)
    except (KeyError, TypeError, ValueError):  # a newer service: show the data as it is
        return json.dumps(data, indent=2)
