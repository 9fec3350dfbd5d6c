"""The control socket: the service side of `aisfusion shell`.

A unix stream socket (``control.socket``), created with mode 0600 in a directory made 0700 when
aisfusion creates it, and connections from other users are refused (peer credentials), so only
the service's owner (and root) can operate it. It is served from its own threads, never from
the feed loop: it keeps answering while ingest is busy; a command that needs an actor waits
for that actor only, with a deadline.

Protocol: one JSON object per line each way::

    → {"command": "dlq", "args": ["peek", "5"]}
    ← {"ok": true, "command": "dlq", "data": {...}}
    ← {"ok": false, "command": "dlq", "error": "usage: dlq [stats|peek [N] [parked]|..."}

The reply carries data, not text: the shell renders it (`aisfusion.shell`), and `status` is
exactly what ``/status`` serves on the metrics port.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import socketserver
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pykka

from aisfusion.actors.sources import SourceTable
from aisfusion.errors import AisFusionError

if TYPE_CHECKING:
    from aisfusion.app import Service

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
ASK_TIMEOUT_S = 5.0
# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH = 107
NEAR_MAX_KM = 500.0  # a dense 50 km GEOSEARCH already blocks Redis for milliseconds


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


def _number(text: str, what: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, got {text!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"{what} must be within {low:g}..{high:g}, got {text}")
    return value


def _integer(text: str, what: str, low: int, high: int) -> int:
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
    """What each command does, against a running `Service` (blocking: call off the feed loop)."""

    def __init__(self, service: Service) -> None:
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
                limit = _integer(numbers[0], "N", 1, 1000) if numbers else 10
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
        mmsi = _integer(args[0], "MMSI", 0, 999_999_999)
        service = self.service
        actor = service.vessel(mmsi, timeout=ASK_TIMEOUT_S)
        live: dict[str, str] | None = None
        live_error = None
        if service.redis is not None:
            try:
                live = service.bridge.run(service.redis.live(mmsi), ASK_TIMEOUT_S) or None
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
        ref = self.service.sources
        if ref is None:
            raise RuntimeError("service not running")
        return ref.ask(SourceTable(), timeout=ASK_TIMEOUT_S)

    def near(self, args: list[str]) -> Any:
        if len(args) not in (3, 4):
            raise UsageError("expected LAT LON KM [LIMIT]")
        lat = _number(args[0], "LAT", -90.0, 90.0)
        lon = _number(args[1], "LON", -180.0, 180.0)
        km = _number(args[2], "KM", 0.001, NEAR_MAX_KM)
        limit = _integer(args[3], "LIMIT", 1, 1000) if len(args) == 4 else 20
        return {
            "lat": lat,
            "lon": lon,
            "km": km,
            "vessels": self.service.near(lat, lon, km, limit),
        }

    def track(self, args: list[str]) -> Any:
        if len(args) not in (3, 4):
            raise UsageError("expected MMSI FROM TO [LIMIT]")
        mmsi = _integer(args[0], "MMSI", 0, 999_999_999)
        try:
            start, end = parse_time(args[1]), parse_time(args[2])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        limit = _integer(args[3], "LIMIT", 1, 100_000) if len(args) == 4 else 1000
        return {
            "mmsi": mmsi,
            "from": start,
            "to": end,
            "positions": self.service.track(mmsi, start, end, limit),
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


# -- the socket server -----------------------------------------------------------------------


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a unix socket (None where unsupported)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        uid = peer_uid(self.request)
        if uid is not None and uid not in (os.getuid(), 0):
            log.warning("control: refused a connection from uid %d", uid)
            self.wfile.write(encode({"ok": False, "error": "permission denied"}))
            return
        while True:
            try:
                line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
            except OSError:
                return
            if not line:
                return
            if len(line) > MAX_REQUEST_BYTES:
                self.wfile.write(encode({"ok": False, "error": "request too long"}))
                return
            try:
                request = json.loads(line)
            except ValueError:
                reply: dict[str, Any] = {"ok": False, "error": "not a JSON request"}
            else:
                reply = self.server.commands.handle(request)
            try:
                self.wfile.write(encode(reply))
            except OSError:  # the shell went away mid-reply
                return


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, commands: Commands) -> None:
        self.commands = commands
        super().__init__(path, _Handler)

    def server_bind(self) -> None:
        # On Linux the socket file takes the mode of the unbound socket: it never exists with
        # looser permissions, not even between bind and chmod.
        with contextlib.suppress(OSError):
            os.fchmod(self.socket.fileno(), 0o600)
        super().server_bind()
        os.chmod(str(self.server_address), 0o600)


def _answers(path: Path) -> bool:
    """Is another process serving the socket at `path`?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ControlServer:
    """Serves `Commands` on a unix socket from its own threads."""

    def __init__(self, path: str | Path, service: Service) -> None:
        self.path = Path(path)
        self._commands = Commands(service)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    def start(self) -> bool:
        """Bind and serve; False (logged) when another running instance serves the path."""
        path = self.path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise AisFusionError(
                f"control.socket: {str(path)!r} is longer than {MAX_SOCKET_PATH} bytes "
                "(a unix socket path limit); choose a shorter path"
            )
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        if path.is_symlink() or path.exists():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise AisFusionError(f"control.socket: {path} exists and is not a socket")
            if _answers(path):
                log.error(
                    "control socket %s is served by another running instance: `aisfusion "
                    "shell` cannot reach this one (set control.socket to a path of its own)",
                    path,
                )
                return False
            path.unlink()  # left behind by an instance that was killed
        try:
            self._server = _Server(str(path), self._commands)
        except OSError as exc:
            raise AisFusionError(f"control.socket: cannot listen on {path}: {exc}") from exc
        self._inode = path.stat().st_ino
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="control-socket", daemon=True
        )
        self._thread.start()
        log.info("control socket %s (aisfusion shell)", path)
        return True

    def stop(self) -> None:
        """Stop serving and remove the socket file (if it is still ours); idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        if thread is not None and thread.is_alive():
            server.shutdown()
            thread.join()
        server.server_close()
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
