"""What operators see of a running service's actors: the supervision tree with each actor's
state, restart count and mailbox depth (for /status, the shell's `tree` and `status`), and the
outline of the tree logged at start."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka

from aisfusion.config import Config
from aisfusion.supervisors.supervisor import mailbox_depth

if TYPE_CHECKING:
    from aisfusion.app import Service


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
    service: Service, shard_stats: list[Any], storage: dict[str, Any] | None
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


def _front_children(service: Service) -> list[dict[str, Any]]:
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


def _root(service: Service, children: list[dict[str, Any]]) -> dict[str, Any]:
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
