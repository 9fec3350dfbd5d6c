"""The control commands: what `aisfusion shell` can ask of the running service, their usage
and help, argument parsing, and the handler that turns one request into one reply.

Served by `aisfusion.ops.control` over its socket; `near` and `track` share their argument rules
with the HTTP read API (`aisfusion.ops.http`). A reply carries data, not text (the shell renders
it); `status` is exactly what ``/status`` serves.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import pykka

from aisfusion.errors import AisFusionError
from aisfusion.storage.redis import NEAR_MAX_KM

if TYPE_CHECKING:
    from aisfusion.ops.view import ServiceView

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0
MMSI_MAX = 999_999_999


class UsageError(ValueError):
    """A command with wrong arguments; the reply names the usage."""


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str


COMMANDS = {
    c.name: c
    for c in (
        Command(
            "status",
            "status",
            "the supervision tree: each actor's state, restarts and mailbox depth; "
            "breakers, dead-letter queue, spool",
        ),
        Command(
            "breakers",
            "breakers [trip NAME | reset NAME]",
            "circuit breakers: state, failures, time in state; trip forces one open "
            "(batches divert to the DLQ), reset closes it",
        ),
        Command(
            "dlq",
            "dlq [stats | peek [N] [parked] | retry [ID] | clear [parked]]",
            "the dead-letter queue of history batches: figures, the oldest entries, make "
            "entries due now (parked ones too), delete entries",
        ),
        Command(
            "vessel",
            "vessel MMSI",
            "one vessel: its actor's window, last decision and its support, static data, "
            "and its live record",
        ),
        Command(
            "sources",
            "sources",
            "the source-quality table: quality, weight, demotions, clock skew, outcomes",
        ),
        Command("near", "near LAT LON KM [LIMIT]", "live vessels within KM km, nearest first"),
        Command(
            "track",
            "track MMSI FROM TO [LIMIT]",
            "a vessel's stored positions between two times (UNIX seconds or ISO 8601, UTC)",
        ),
        Command(
            "restart",
            "restart ACTOR",
            "restart a supervised actor now (what it had queued is handed to it again)",
        ),
        Command("help", "help [COMMAND]", "the commands, or one command's usage"),
    )
}
DLQ_ACTIONS = ("stats", "peek", "retry", "clear")
BREAKER_ACTIONS = ("trip", "reset")


def changes_something(name: str, args: list[str]) -> bool:
    """Operator actions, as opposed to queries: logged, so the log shows them beside their
    effects."""
    return (
        name == "restart"
        or (name == "breakers" and bool(args))
        or (name == "dlq" and args[:1] in (["retry"], ["clear"]))
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, default=_jsonable).encode() + b"\n"


def number(text: str, what: str, low: float, high: float) -> float:
    """`text` as a finite number within [low, high]; a `UsageError` naming `what` otherwise
    (the HTTP read API parses its query with it too)."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, got {text!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"{what} must be within {low:g}..{high:g}, got {text}")
    return value


def integer(text: str, what: str, low: int, high: int) -> int:
    """`text` as a whole number within [low, high]; a `UsageError` naming `what` otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{what} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise UsageError(f"{what} must be within {low}..{high}, got {value}")
    return value


def parse_time(text: str | None) -> float:
    """UNIX seconds, or an ISO 8601 time (UTC unless it names an offset)."""
    if not text:
        raise ValueError("empty time")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time (UNIX seconds or ISO 8601): {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class Commands:
    """What each command does, against a running service (blocking: call off the feed loop)."""

    def __init__(self, service: ServiceView) -> None:
        self.service = service
        self._handlers: dict[str, Callable[[list[str]], Any]] = {
            "status": self.status,
            "breakers": self.breakers,
            "dlq": self.dlq,
            "vessel": self.vessel,
            "sources": self.sources,
            "near": self.near,
            "track": self.track,
            "restart": self.restart,
            "help": self.help,
        }

    def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'expected {"command": NAME, "args": [...]}'}
        name = request["command"]
        args = request.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            return {"ok": False, "command": name, "error": "args must be a list of strings"}
        handler = self._handlers.get(name)
        counter = self.service.metrics.control_commands
        if handler is None:
            counter.labels("unknown", "error").inc()
            return {
                "ok": False,
                "command": name,
                "error": f"unknown command {name!r} (try: {', '.join(COMMANDS)})",
            }
        if changes_something(name, args):
            log.warning("control: operator command: %s", " ".join([name, *args]))
        try:
            data = handler(args)
        except UsageError as exc:
            reply = {"ok": False, "error": f"{exc}\nusage: {COMMANDS[name].usage}"}
        except ValueError as exc:
            reply = {"ok": False, "error": str(exc)}
        except pykka.Timeout:
            reply = {"ok": False, "error": "no answer in time: the actor is busy, try again"}
        except (AisFusionError, RuntimeError, pykka.ActorDeadError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # an operator command must never take the server down
            log.exception("control: %s %s failed", name, args)
            reply = {"ok": False, "error": repr(exc)}
        else:
            reply = {"ok": True, "data": data}
        counter.labels(name, "ok" if reply["ok"] else "error").inc()
        return {**reply, "command": name}

    # -- commands --------------------------------------------------------------------------

    def help(self, args: list[str]) -> Any:
        if args:
            command = COMMANDS.get(args[0])
            if command is None:
                raise UsageError(f"no command {args[0]!r}")
            return {"commands": [asdict(command)]}
        return {"commands": [asdict(c) for c in COMMANDS.values()], "complete": self.completions()}

    def completions(self) -> dict[str, Any]:
        """The words that may follow each command, for the shell's tab completion."""
        names: dict[str, Any] = {name: {} for name in self.service.breakers}
        return {
            "status": {},
            "breakers": dict.fromkeys(BREAKER_ACTIONS, names),
            "dlq": {"stats": {}, "peek": {"parked": {}}, "retry": {}, "clear": {"parked": {}}},
            "vessel": {},
            "sources": {},
            "near": {},
            "track": {},
            "restart": {name: {} for name in self.service.restartable},
            "help": {name: {} for name in COMMANDS},
        }

    def status(self, args: list[str]) -> Any:
        if args:
            raise UsageError("status takes no arguments")
        return self.service.status()

    def breakers(self, args: list[str]) -> Any:
        service = self.service
        if not args:
            return [b.snapshot() for b in service.breakers.values()]
        if len(args) != 2 or args[0] not in BREAKER_ACTIONS:
            raise UsageError("expected trip NAME or reset NAME")
        action, name = args
        if name not in service.breakers:
            raise UsageError(f"no breaker {name!r} (breakers: {', '.join(service.breakers)})")
        return service.breaker(name, action)

    def dlq(self, args: list[str]) -> Any:
        service = self.service
        action, rest = (args[0], args[1:]) if args else ("stats", [])
        match action, rest:
            case "stats", []:
                return {"stats": service.dlq("stats")}
            case "peek", [*more] if len(more) <= 2:
                parked = "parked" in more
                numbers = [m for m in more if m != "parked"]
                if len(numbers) > 1:
                    raise UsageError("peek takes one count")
                limit = integer(numbers[0], "N", 1, 1000) if numbers else 10
                return {
                    "parked": parked,
                    "entries": service.dlq("peek", limit=limit, parked=parked),
                }
            case "retry", [] | [_]:
                return {"moved": service.dlq("retry", entry_id=rest[0] if rest else None)}
            case "clear", [] | ["parked"]:
                parked = bool(rest)
                return {"cleared": service.dlq("clear", parked=parked), "parked": parked}
            case _:
                raise UsageError(f"bad dlq command: {' '.join(args)}")

    def vessel(self, args: list[str]) -> Any:
        if len(args) != 1:
            raise UsageError("expected one MMSI")
        mmsi = integer(args[0], "MMSI", 0, MMSI_MAX)
        service = self.service
        actor = service.vessel(mmsi, timeout=ASK_TIMEOUT_S)
        live: dict[str, str] | None = None
        live_error = None
        try:
            live = service.reads.live_record(mmsi, ASK_TIMEOUT_S)
        except Exception as exc:  # the actor's view is still worth showing
            live_error = repr(exc)
        return {
            "mmsi": mmsi,
            "hosted": actor is not None,
            "actor": actor,
            "live": live,
            "live_error": live_error,
        }

    def sources(self, args: list[str]) -> Any:
        if args:
            raise UsageError("sources takes no arguments")
        return self.service.source_table()

    def near(self, args: list[str]) -> Any:
        if len(args) not in (3, 4):
            raise UsageError("expected LAT LON KM [LIMIT]")
        lat = number(args[0], "LAT", -90.0, 90.0)
        lon = number(args[1], "LON", -180.0, 180.0)
        km = number(args[2], "KM", 0.001, NEAR_MAX_KM)
        limit = integer(args[3], "LIMIT", 1, 1000) if len(args) == 4 else 20
        return {
            "lat": lat,
            "lon": lon,
            "km": km,
            "vessels": self.service.reads.near(lat, lon, km, limit),
        }

    def track(self, args: list[str]) -> Any:
        if len(args) not in (3, 4):
            raise UsageError("expected MMSI FROM TO [LIMIT]")
        mmsi = integer(args[0], "MMSI", 0, MMSI_MAX)
        try:
            start, end = parse_time(args[1]), parse_time(args[2])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        limit = integer(args[3], "LIMIT", 1, 100_000) if len(args) == 4 else 1000
        return {
            "mmsi": mmsi,
            "from": start,
            "to": end,
            "positions": self.service.reads.track(mmsi, start, end, limit),
        }

    def restart(self, args: list[str]) -> Any:
        if len(args) != 1:
            raise UsageError("expected one actor name")
        name = args[0]
        if name not in self.service.restartable:
            raise UsageError(
                f"{name!r} is not a supervised actor; restartable: "
                + ", ".join(self.service.restartable)
            )
        return self.service.restart(name)
