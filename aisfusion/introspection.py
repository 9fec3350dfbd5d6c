"""What operators see of a running pipeline: its status document (for /status and the shell's
`status`), the supervision tree in it with each actor's state, restart count and mailbox depth
(the shell's `tree`), and the outline of the tree logged at start."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import pykka

from aisfusion import __version__
from aisfusion.actors.shard import ShardStats
from aisfusion.actors.sources import SourceTable
from aisfusion.config import Config
from aisfusion.supervisors.storage import StorageStatus
from aisfusion.supervisors.supervisor import mailbox_depth

if TYPE_CHECKING:  # the pipeline calls in with itself
    from aisfusion.pipeline import Pipeline


def status(service: Pipeline, timeout_s: float) -> dict[str, Any]:
    """The status of `service` (blocking: call off the feed loop). The actors are asked at
    once; one that does not answer within `timeout_s` (a long mailbox) is shown as busy,
    with its mailbox depth."""
    deadline = time.monotonic() + timeout_s

    def ask(ref: pykka.ActorRef[Any] | None, message: Any) -> Any:
        return None if ref is None else ref.ask(message, block=False)

    def answer(future: Any) -> Any:
        if future is None:
            return None
        try:
            return future.get(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # busy (timeout) or dead: the tree says which
            return None

    asked_shards = [ask(s, ShardStats()) for s in service.shards]
    asked_storage = ask(service.storage, StorageStatus())
    asked_sources = ask(service.sources, SourceTable())
    shards = [answer(f) for f in asked_shards]
    storage = answer(asked_storage)
    sources = answer(asked_sources)
    started = service.started_at
    return {
        "version": __version__,
        "role": service.role,
        "pid": os.getpid(),
        "started_at": started,
        "uptime_s": None if started is None else round(time.time() - started, 3),
        "ready": service.ready,
        "failure": service.failure,
        "tree": supervision_tree(service, shards, storage),
        "shards": [s for s in shards if s is not None],
        "sources": sources if sources is not None else [],
        "batcher": bool(service.batcher and service.batcher.is_alive()),
        "storage": storage,
        "embedded": service.embedded is not None,
        "stores": _stores(service),
        "control_socket": service.control_socket,
        "log": _log(service),
    }


def _log(service: Pipeline) -> dict[str, Any] | None:
    """The JetStream side: the front's publisher, workers and partitions; a worker's leases
    and acknowledgements; None in the direct mode."""
    if service.role == "front":
        return {
            "publisher": None if service.publisher is None else service.publisher.status(),
            "workers": [] if service.workers is None else service.workers.status(),
            **({} if service.log_monitor is None else service.log_monitor.snapshot()),
        }
    if service.intake is not None:
        return service.intake.status()
    return None


def _stores(service: Pipeline) -> dict[str, Any]:
    """The stores' modes and the last housekeeping run."""
    config = service.config
    return {
        "redis": None if service.redis is None else service.redis.status(),
        "postgres": {
            "transaction_pooling": config.postgres.transaction_pooling,
            "partition_days": config.retention.partition_days,
        },
        "maintenance": None if service.maintenance is None else service.maintenance.status(),
    }


def _node(name: str, kind: str, ref: pykka.ActorRef[Any] | None) -> dict[str, Any]:
    alive = ref is not None and ref.is_alive()
    return {
        "name": name,
        "kind": kind,
        "state": "running" if alive else "dead",
        "restarts": None,  # not supervised: its failure stops the service
        "mailbox": mailbox_depth(ref),
    }


def supervision_tree(
    service: Pipeline, shard_stats: list[Any], storage: dict[str, Any] | None
) -> dict[str, Any]:
    """The tree of `service` from what its actors answered: `shard_stats` per shard and the
    storage supervisor's status (None where an actor did not answer in time: shown busy).
    A front has no actors: its children are the publisher and the worker processes it runs."""
    if service.role == "front":
        return _root(service, _front_children(service))
    children: list[dict[str, Any]] = []
    for ref, stats in zip(service.shards, shard_stats, strict=True):
        child = _node(f"shard-{len(children)}", "shard", ref)
        if stats is not None:
            child.update(vessels=stats.get("vessels"), processed=stats.get("processed"))
        elif child["state"] == "running":
            child["state"] = "busy"
        children.append(child)
    children += [
        _node("sources", "sources", service.sources),
        _node("batcher", "batcher", service.batcher),
    ]
    supervisor = _node("storage", "supervisor", service.storage)
    if storage is not None:
        tree = storage["tree"]
        supervisor.update(
            strategy=tree["strategy"],
            max_restarts=tree["max_restarts"],
            within_s=tree["within_s"],
            escalated=tree["escalated"],
            children=[
                {
                    "name": c["name"],
                    "kind": "writer",
                    "state": c["state"],
                    "restarts": c["restarts"],
                    "mailbox": c["mailbox"],
                    "last_error": c["last_error"],
                }
                for c in tree["children"]
            ],
        )
    elif supervisor["state"] == "running":
        supervisor.update(state="busy", children=[])
    children.append(supervisor)
    return _root(service, children)


def _front_children(service: Pipeline) -> list[dict[str, Any]]:
    publisher = service.publisher.status() if service.publisher is not None else None
    children = [
        {
            "name": "publisher",
            "kind": "publisher",
            "state": "dead"
            if publisher is None
            else ("running" if publisher["healthy"] else "disconnected"),
            "restarts": None,
            "mailbox": None if publisher is None else publisher["buffered"],
            "last_error": None if publisher is None else publisher["last_error"],
        }
    ]
    for worker in [] if service.workers is None else service.workers.status():
        children.append(
            {
                "name": f"worker {worker['id']}",
                "kind": "worker",
                "state": "running" if worker["alive"] else "dead",
                "restarts": worker["restarts"],
                "mailbox": None,
                "pid": worker["pid"],
            }
        )
    return children


def _root(service: Pipeline, children: list[dict[str, Any]]) -> dict[str, Any]:
    state = "running" if service.ready else "not ready"
    if service.failure is not None:
        state = "failed"
    return {
        "name": "aisfusion",
        "kind": "root",
        "state": state,
        "restarts": None,
        "mailbox": None,
        "children": children,
    }


def outline(config: Config) -> str:
    """The supervision tree as configured, as logged at start."""
    s = config.supervision
    lines = [
        "aisfusion (root: escalation stops the service, exit 1)",
        f"├── shards x{config.actors.shards} (vessel entities by MMSI; a crash escalates)",
        "├── batcher, source quality (a crash escalates)",
        f"└── storage supervisor ({s.strategy}, max {s.max_restarts} restarts in "
        f"{s.within_s:g} s; breakers: postgres, redis; DLQ, spool {config.spool.dir})",
        "    ├── postgres_writer",
        "    └── live_writer",
    ]
    return "\n".join(lines)
