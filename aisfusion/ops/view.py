"""What the operations surfaces may see and do of a running service: the one interface between
them and the pipeline. `aisfusion.pipeline.Pipeline` implements it (mypy checks that where
`aisfusion.app` attaches the surfaces); the surfaces never import the pipeline itself
(tests/test_layout.py).

Every method blocks: call it from a surface's own threads, never from the feed loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aisfusion.config import Config
from aisfusion.metrics import Metrics
from aisfusion.supervisors.breaker import CircuitBreaker


class ServiceView(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def ready(self) -> bool: ...

    @property
    def breakers(self) -> Mapping[str, CircuitBreaker]: ...

    @property
    def restartable(self) -> tuple[str, ...]: ...

    def status(self) -> dict[str, Any]: ...

    def source_table(self) -> list[dict[str, Any]]: ...

    def vessel(self, mmsi: int, timeout: float = 5.0) -> dict[str, Any] | None:
        """The vessel's entity as its shard holds it (None: not in this process)."""
        ...

    def live_record(self, mmsi: int, timeout: float = 5.0) -> dict[str, str] | None: ...

    def vessel_info(self, mmsi: int, *, include_deleted: bool = False) -> dict[str, Any] | None: ...

    def near(self, lat: float, lon: float, km: float, limit: int = 20) -> list[dict[str, Any]]: ...

    def track(
        self, mmsi: int, start: float, end: float, limit: int = 10_000
    ) -> list[dict[str, Any]]: ...

    def dlq(self, action: str, **options: Any) -> Any: ...

    def breaker(self, name: str, action: str) -> dict[str, Any]: ...

    def restart(self, name: str) -> dict[str, Any]: ...
