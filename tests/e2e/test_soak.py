"""The one-minute soak (bench/soak.py): outages of PostgreSQL, Redis and both on a schedule,
and still every accepted position is stored exactly once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_minute_soak_with_outages_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "1", "--vessels", "3000"],
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"accepted positions (\d+), stored rows (\d+), drained True", result.stdout)
    assert found, result.stdout
    assert int(found[1]) == int(found[2]) > 0
    diverted = re.search(r"batches diverted: \{'dlq': (\d+), 'spool': (\d+)\}", result.stdout)
    assert diverted, result.stdout
    assert int(diverted[1]) > 0  # the outages really diverted batches
    assert int(diverted[2]) > 0
