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
from aisfusion.storage.reads import StoreReads
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

    @property
    def reads(self) -> StoreReads:
        """Live records, static data and tracks, read from the stores (raises RuntimeError
        when the service is not running)."""
        ...

    def status(self) -> dict[str, Any]: ...

    def source_table(self) -> list[dict[str, Any]]: ...

    def vessel(self, mmsi: int, timeout: float = 5.0) -> dict[str, Any] | None:
        """The vessel's entity as its shard holds it (None: not in this process)."""
        ...

    def dlq(self, action: str, **options: Any) -> Any: ...

    def breaker(self, name: str, action: str) -> dict[str, Any]: ...

    def restart(self, name: str) -> dict[str, Any]: ...
