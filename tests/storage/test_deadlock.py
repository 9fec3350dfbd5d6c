"""Deadlock freedom, shown: a short run of bench/deadlock_stress.py on the test server (a fixed
number of batches per writer, so a slow machine does the same work, only slower).

Four writers on separate connections upsert overlapping vessels and insert overlapping position
keys from shuffled batches, while a soft-delete pass fights them for the same rows: the store's
sorted writes must never deadlock, and every reported insert must be in the table.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.dbs import fresh_database

STRESS = Path(__file__).resolve().parents[2] / "bench" / "deadlock_stress.py"


@pytest.mark.timeout(90)
async def test_concurrent_writers_never_deadlock(servers: Any) -> None:
    url = await fresh_database(servers.postgres_url)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(STRESS), "--url", url, "--batches", "10", "--writers", "4"],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^deadlocks: 0$", out, re.M), out
    assert re.search(r"^other errors: 0$", out, re.M), out
    batches = re.search(r"^batches committed: (\d+)$", out, re.M)
    assert batches and int(batches[1]) == 40, out  # four writers, ten batches each
    soft = re.search(r"^soft-deleted by the maintenance pass meanwhile: (\d+)$", out, re.M)
    assert soft and int(soft[1]) > 0, out  # the soft delete ran over the same rows
