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

What each command does is `aisfusion.ops.commands`; the reply carries data, not text: the shell
renders it (`aisfusion.ops.shell_render`), and `status` is exactly what ``/status`` serves on the
metrics port.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aisfusion.errors import AisFusionError
from aisfusion.ops.commands import Commands, encode

if TYPE_CHECKING:
    from aisfusion.ops.view import ServiceView

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH = 107


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

    def __init__(self, path: str | Path, service: ServiceView) -> None:
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
