"""The service as `aisfusion run`, `aisfusion worker` and the demo start it: the pipeline
(`aisfusion.pipeline`) with its operations surfaces (`aisfusion.ops`) attached.

The one module that knows both: the pipeline never imports the surfaces, and the surfaces
see it only through `ops.view.ServiceView` (held to by tests/test_layout.py).
"""

from __future__ import annotations

from typing import Any

from aisfusion.config import Config
from aisfusion.ops.surfaces import OpsSurfaces
from aisfusion.pipeline import Pipeline, Role

__all__ = ["Role", "Service"]


class Service(Pipeline):
    """A pipeline that is shown outside: HTTP endpoint and control socket."""

    def __init__(self, config: Config, **options: Any) -> None:
        super().__init__(config, surfaces=OpsSurfaces, **options)
