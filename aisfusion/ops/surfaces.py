"""The surfaces of one running service, started and stopped together: the HTTP endpoint
(metrics, health, status, the read API, admin) and the control socket (`aisfusion shell`)."""

from __future__ import annotations

from aisfusion.ops.control import ControlServer
from aisfusion.ops.http import MetricsServer
from aisfusion.ops.view import ServiceView


class OpsSurfaces:
    def __init__(self, service: ServiceView) -> None:
        cfg = service.config
        self._http = MetricsServer(cfg.metrics.host, cfg.metrics.port, service)
        self._control = ControlServer(cfg.control.socket, service) if cfg.control.socket else None
        self._serving_control = False

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def control_socket(self) -> str | None:
        return str(self._control.path) if self._serving_control and self._control else None

    def start(self) -> None:
        self._http.start()
        if self._control is not None:
            # False: another instance serves the path (logged); this one runs without it.
            self._serving_control = self._control.start()

    def stop(self) -> None:
        if self._control is not None:
            self._control.stop()
        self._http.stop()
