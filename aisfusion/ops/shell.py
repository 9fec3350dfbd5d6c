"""`aisfusion shell`: the operator's introspection shell, a client of the control socket.

::

    aisfusion shell                       interactive: Tab completes, ↑ recalls, `help`, `quit`
    aisfusion shell -c "dlq peek 5"       one command, then exit (0 ok, 1 error): for scripts
    aisfusion shell -c status --json      the reply's data as JSON (`status` = GET /status)

The service sends data (`aisfusion.ops.control`); `aisfusion.ops.shell_render` turns it into text.
History is kept in ``~/.aisfusion_history`` (``--history`` or ``$AISFUSION_SHELL_HISTORY`` to
change it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from aisfusion.ops.shell_render import render

PROMPT = "aisfusion> "
TIMEOUT_S = 60.0
HISTORY_LENGTH = 1000
LOCAL_COMMANDS = ("quit", "exit")


class ShellError(Exception):
    """The service could not be reached, or it answered with an error."""


class ControlClient:
    """One connection to the control socket; reconnects on the next call after a failure."""

    def __init__(self, path: Path, timeout_s: float = TIMEOUT_S) -> None:
        self.path = path
        self._timeout = timeout_s
        self._sock: socket.socket | None = None
        self._reader: Any = None

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise ShellError(
                f"cannot connect to the control socket {self.path}: {exc.strerror or exc} "
                "(is `aisfusion run` running here? see control.socket, or pass --socket)"
            ) from None
        self._sock = sock
        self._reader = sock.makefile("rb")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if sock is not None:
            sock.close()

    def call(self, command: str, args: Sequence[str] = ()) -> Any:
        """Run one command; its data, or ShellError with the service's message."""
        self.connect()
        assert self._sock is not None
        request = json.dumps({"command": command, "args": list(args)}).encode() + b"\n"
        try:
            self._sock.sendall(request)
            line = self._reader.readline()
        except OSError as exc:
            self.close()
            raise ShellError(f"connection to the service lost: {exc}") from None
        if not line:
            self.close()
            raise ShellError("the service closed the connection (stopped?)")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ShellError(str(reply.get("error", "failed")))
        return reply.get("data")


# -- the shell -------------------------------------------------------------------------------


def split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise ShellError(f"cannot parse the line: {exc}") from None


def run_line(client: ControlClient, line: str, *, as_json: bool = False) -> str | None:
    """One command line to its output text (None for an empty line)."""
    words = split(line)
    if not words:
        return None
    data = client.call(words[0], words[1:])
    if as_json:
        return json.dumps(data, indent=2)
    return render(words[0], data)


class Completer:
    """Tab completion from the command tree the service sends with `help`."""

    def __init__(self, tree: dict[str, Any], readline: ModuleType) -> None:
        self.tree = {**tree, **{name: {} for name in LOCAL_COMMANDS}}
        self._readline = readline
        self._matches: list[str] = []

    def candidates(self, before: list[str], text: str) -> list[str]:
        node: dict[str, Any] = self.tree
        for word in before:
            child = node.get(word)
            if not isinstance(child, dict):
                return []
            node = child
        return sorted(w + " " for w in node if w.startswith(text))

    def __call__(self, text: str, state: int) -> str | None:
        if state == 0:
            buffer = self._readline.get_line_buffer()
            before = buffer[: self._readline.get_begidx()].split()
            self._matches = self.candidates(before, text)
        return self._matches[state] if state < len(self._matches) else None


def _history_path(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("AISFUSION_SHELL_HISTORY")
    return Path(env) if env else Path.home() / ".aisfusion_history"


def _setup_readline(tree: dict[str, Any], history: Path) -> ModuleType | None:
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input()
        return None
    readline.set_completer(Completer(tree, readline))
    readline.set_completer_delims(" \t\n")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    readline.set_history_length(HISTORY_LENGTH)
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    return readline


def _save_history(readline: ModuleType | None, history: Path) -> None:
    if readline is None:
        return
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(history)
        history.chmod(0o600)
    except OSError as exc:
        print(f"aisfusion shell: history not saved to {history}: {exc}", file=sys.stderr)


def _tidy_history(readline: ModuleType | None, line: str) -> None:
    """Keep the history clean: no trailing blanks (Tab completion adds one), no repeats."""
    if readline is None or not line.strip():
        return
    last = readline.get_current_history_length()
    if last >= 2 and readline.get_history_item(last - 1).strip() == line.strip():
        readline.remove_history_item(last - 1)
    elif line != line.strip():
        readline.replace_history_item(last - 1, line.strip())


def _confirm(
    client: ControlClient, words: list[str], out: TextIO, readline: ModuleType | None
) -> bool:
    """`dlq clear` deletes batches that are not in PostgreSQL: ask first (interactive only)."""
    if words[:2] != ["dlq", "clear"]:
        return True
    stats = client.call("dlq", ["stats"])["stats"]
    parked = words[2:] == ["parked"]
    count = (
        stats["parked"]
        if parked
        else sum(stats[k] for k in ("ready", "scheduled", "leased", "parked"))
    )
    print(
        f"delete {count} {'parked ' if parked else ''}entries ({stats['rows']} rows in all) "
        "that are NOT in PostgreSQL? [y/N] ",
        end="",
        file=out,
        flush=True,
    )
    try:
        answer = input()
    except EOFError:
        return False
    if readline is not None and answer.strip():  # the answer is no command to recall
        readline.remove_history_item(readline.get_current_history_length() - 1)
    return answer.strip().lower() in ("y", "yes")


def interactive(client: ControlClient, history: Path, out: TextIO = sys.stdout) -> int:
    info = client.call("help")
    readline = _setup_readline(info.get("complete", {}), history)
    print(
        f"aisfusion shell on {client.path}: `help` lists the commands, Tab completes, "
        "`quit` leaves",
        file=out,
    )
    try:
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                print(file=out)
                return 0
            except KeyboardInterrupt:
                print("^C", file=out)
                continue
            _tidy_history(readline, line)
            try:
                words = split(line)
                if not words:
                    continue
                if words[0] in LOCAL_COMMANDS:
                    return 0
                if not _confirm(client, words, out, readline):
                    print("not cleared", file=out)
                    continue
                text = run_line(client, line)
            except ShellError as exc:
                print(f"error: {exc}", file=out)
                continue
            except KeyboardInterrupt:
                print("^C", file=out)
                continue
            if text is not None:
                print(text, file=out, flush=True)
    finally:
        _save_history(readline, history)


def run_shell(
    socket_path: Path,
    *,
    command: str | None = None,
    as_json: bool = False,
    history: Path | None = None,
) -> int:
    """`aisfusion shell`: 0 on success, 1 when the service is unreachable or a command failed."""
    client = ControlClient(socket_path)
    try:
        if command is not None:
            text = run_line(client, command, as_json=as_json)
            if text is not None:
                print(text, flush=True)
            return 0
        return interactive(client, _history_path(history))
    except ShellError as exc:
        print(f"aisfusion shell: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
