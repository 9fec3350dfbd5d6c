"""The metrics HTTP port: Prometheus exposition, health, readiness, read-only status, the
read side (``/vessels/MMSI``, ``/vessels/near``, ``/vessels/MMSI/track``: JSON), and
token-protected operator endpoints (``/admin/dlq``, ``/admin/breakers/NAME/trip|reset``).

It runs in its own threads (not on the feed loop), so it keeps answering when ingest is busy.
It binds to loopback unless configured otherwise.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aisfusion.ops.commands import MMSI_MAX, integer, number, parse_time
from aisfusion.storage.redis import NEAR_MAX_KM

if TYPE_CHECKING:
    from aisfusion.ops.view import ServiceView

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        service = self.server.service
        path, query = self._route()
        if path.startswith("/admin/"):
            self._admin("GET", path, query)
        elif path == "/metrics":
            self._send(200, generate_latest(service.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            ready = service.ready
            self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n", "text/plain")
        elif path == "/status":
            body = json.dumps(service.status(), indent=2).encode()
            self._send(200, body, "application/json")
        elif path.startswith("/vessels/"):
            self._vessels(path, query)
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        path, query = self._route()
        if path.startswith("/admin/"):
            self._admin("POST", path, query)
        else:
            self._send(404, b"not found\n", "text/plain")

    def _route(self) -> tuple[str, dict[str, str]]:
        url = urllib.parse.urlsplit(self.path)
        return url.path, dict(urllib.parse.parse_qsl(url.query))

    def _admin(self, method: str, path: str, query: dict[str, str]) -> None:
        """Operator endpoints: the DLQ and the breakers, behind a bearer token."""
        token = self.server.service.config.metrics.admin_token
        if not token:
            self._json(404, {"error": "admin endpoints are disabled (metrics.admin_token)"})
            return
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            self._json(401, {"error": "missing or wrong bearer token"})
            return
        service = self.server.service
        parts = path.strip("/").split("/")
        try:
            match method, parts:
                case "GET", ["admin", "dlq"]:
                    limit = int(query.get("peek", "10"))
                    parked = query.get("parked") in ("1", "true")
                    body: Any = {
                        "stats": service.dlq("stats"),
                        "entries": service.dlq("peek", limit=limit, parked=parked),
                    }
                case "POST", ["admin", "dlq", "retry"]:
                    body = {"moved": service.dlq("retry", entry_id=query.get("id"))}
                case "POST", ["admin", "dlq", "clear"]:
                    parked = query.get("parked") in ("1", "true")
                    body = {"cleared": service.dlq("clear", parked=parked)}
                case "POST", ["admin", "breakers", name, action]:
                    body = service.breaker(name, action)
                case _:
                    self._json(404, {"error": f"no admin endpoint {method} {path}"})
                    return
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        except Exception as exc:  # report storage trouble to the operator, keep serving
            self._json(503, {"error": repr(exc)})
            return
        self._json(200, body)

    def _vessels(self, path: str, query: dict[str, str]) -> None:
        """The read side: one vessel (live + static), vessels near a point, a track."""
        service = self.server.service
        parts = path.strip("/").split("/")
        try:
            match parts:
                case ["vessels", "near"]:
                    lat = _number(query, "lat", -90.0, 90.0)
                    lon = _number(query, "lon", -180.0, 180.0)
                    km = _number(query, "km", 0.001, NEAR_MAX_KM)
                    limit = int(_number(query, "limit", 1, 1000, default=20))
                    body: Any = {
                        "lat": lat,
                        "lon": lon,
                        "km": km,
                        "vessels": service.reads.near(lat, lon, km, limit),
                    }
                case ["vessels", mmsi]:
                    deleted = query.get("deleted") in ("1", "true")
                    body = service.reads.vessel_info(_mmsi(mmsi), include_deleted=deleted)
                    if body is None:
                        self._json(404, {"error": f"vessel {mmsi} is not known"})
                        return
                case ["vessels", mmsi, "track"]:
                    end = parse_time(query.get("to")) if "to" in query else time.time()
                    start = parse_time(query["from"]) if "from" in query else end - TRACK_DEFAULT_S
                    limit = int(_number(query, "limit", 1, TRACK_MAX, default=TRACK_MAX))
                    positions = service.reads.track(_mmsi(mmsi), start, end, limit + 1)
                    body = {
                        "mmsi": int(mmsi),
                        "from": start,
                        "to": end,
                        "positions": positions[:limit],
                        "truncated": len(positions) > limit,
                    }
                case _:
                    self._json(404, {"error": f"no endpoint {path}"})
                    return
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        except Exception as exc:  # storage trouble: say so, keep serving
            self._json(503, {"error": repr(exc)})
            return
        self._json(200, body)

    def _json(self, code: int, body: Any) -> None:
        self._send(code, json.dumps(body, indent=2).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


TRACK_DEFAULT_S = 86400.0  # a track without `from` covers the last day
TRACK_MAX = 100_000  # positions per track reply; `truncated` says when there were more


def _number(
    query: dict[str, str], name: str, low: float, high: float, default: float | None = None
) -> float:
    if name not in query:
        if default is None:
            raise ValueError(f"missing query parameter {name!r}")
        return default
    return number(query[name], name, low, high)


def _mmsi(text: str) -> int:
    return integer(text, "MMSI", 0, MMSI_MAX)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: ServiceView) -> None:
        super().__init__(address, _Handler)
        self.service = service


class MetricsServer:
    def __init__(self, host: str, port: int, service: ServiceView) -> None:
        self._server = _Server((host, port), service)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
