"""Session fixtures: real PostgreSQL, Redis and NATS (JetStream) for the suite, and AIS data.

Storage is never mocked. By default the servers are the embedded ones the service itself uses
(`aisfusion.storage.embedded.EmbeddedServers`), started once per session and stopped at its end.
Set ``AISFUSION_TEST_POSTGRES_URL``, ``AISFUSION_TEST_REDIS_URL`` or ``AISFUSION_TEST_NATS_URL``
to use external servers
instead; only the missing one is then embedded. Tests isolate themselves on the shared servers
with fresh databases and key prefixes (``tests/dbs.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aisfusion.storage.embedded import EmbeddedServers, discard_moved_data

# The repository sits next to ../shared, which holds the recorded feeds.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ais"

POSTGRES_URL_ENV = "AISFUSION_TEST_POSTGRES_URL"
REDIS_URL_ENV = "AISFUSION_TEST_REDIS_URL"
NATS_URL_ENV = "AISFUSION_TEST_NATS_URL"


@dataclass(frozen=True)
class Servers:
    """Where the test servers are. `embedded` is the manager when any server is embedded
    (fault-injection tests stop and start through it), None when both are external."""

    postgres_url: str
    redis_url: str
    nats_url: str
    embedded: EmbeddedServers | None


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    postgres_url = os.environ.get(POSTGRES_URL_ENV, "")
    redis_url = os.environ.get(REDIS_URL_ENV, "")
    nats_url = os.environ.get(NATS_URL_ENV, "")
    if postgres_url and redis_url and nats_url:
        yield Servers(postgres_url, redis_url, nats_url, None)
        return
    data_dir = tmp_path_factory.mktemp("embedded")
    embedded = EmbeddedServers(
        data_dir, postgres=not postgres_url, redis=not redis_url, nats=not nats_url
    )
    embedded.start()
    try:
        yield Servers(
            postgres_url or embedded.postgres_url,
            redis_url or embedded.redis_url,
            nats_url or embedded.nats_url,
            embedded,
        )
    finally:
        embedded.stop()
        # As root, pytest's base directory (mode 700) makes the data move: do not pile it up.
        discard_moved_data(data_dir)


@pytest.fixture
def pg_url(servers: Servers) -> str:
    """URL of the test PostgreSQL server's maintenance database (make a fresh one per test)."""
    return servers.postgres_url


@pytest.fixture
def redis_url(servers: Servers) -> str:
    """URL of the test Redis server (use a unique key prefix per test)."""
    return servers.redis_url


@pytest.fixture
def nats_url(servers: Servers) -> str:
    """URL of the test NATS server, JetStream enabled (use unique stream and bucket names)."""
    return servers.nats_url


@pytest.fixture(scope="session")
def ais_data() -> Path:
    """The directory of recorded AIS feeds in ../shared/data/ais."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.fail(
            f"recorded AIS data not found at {SHARED_DATA}: the repository is expected to sit "
            "next to the shared/ directory that holds data/ais"
        )
    return SHARED_DATA
