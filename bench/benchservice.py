"""The service as the benchmarks run it: in this process, on its own embedded servers in a
temporary directory, on free ports, without a control socket; cleaned up afterwards."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from aisfusion.app import Service
from aisfusion.config import Config


@contextlib.asynccontextmanager
async def embedded_service(prefix: str, **sections: dict[str, Any]) -> AsyncIterator[Service]:
    """A started Service; `sections` override settings, e.g. actors={"shards": 2}."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        raw = msgspec.to_builtins(Config())
        raw["feed"].update(host="127.0.0.1", port=0)
        raw["metrics"]["port"] = 0
        raw["embedded"]["data_dir"] = tmp
        raw["spool"]["dir"] = str(Path(tmp) / "spool")
        raw["control"]["socket"] = ""
        raw["log"]["level"] = "WARNING"
        for section, values in sections.items():
            raw[section].update(values)
        service = Service(msgspec.convert(raw, Config))
        try:
            await service.start()
            yield service
        finally:
            await service.stop()
            # As root the embedded PostgreSQL data may have been placed outside `tmp`.
            location = Path(tmp) / "postgres.location"
            if location.exists():
                shutil.rmtree(location.read_text().strip(), ignore_errors=True)


def sample(service: Service, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of the service's metrics (0 while the series does not exist)."""
    return service.metrics.registry.get_sample_value(name, labels or {}) or 0.0
