"""The one place logging is configured."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # pykka logs every actor start/stop at DEBUG; keep it quiet unless asked.
    logging.getLogger("pykka").setLevel(max(logging.INFO, logging.getLevelName(level)))
