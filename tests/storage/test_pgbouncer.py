"""The history store through a real PgBouncer in transaction pooling mode.

PgBouncer (Debian's, installed by `tests/storage/pgbouncer.py` when missing) runs in front of
the test PostgreSQL with two server connections per database, shared by every client one
transaction at a time. With `postgres.transaction_pooling` everything the service does works
through it; without, a statement asyncpg prepared on one server connection is missing when the
next transaction lands on the other.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from aisfusion.config import PostgresConfig
from aisfusion.messages import HistoryBatch, Position, StaticReport, VesselSeen
from aisfusion.storage import processes
from aisfusion.storage.partitions import DAY_S
from aisfusion.storage.postgres import PostgresStore, migrations
from tests.dbs import fresh_database
from tests.storage import pgbouncer
from tests.storage import servers as extra

T0 = 1_700_000_000.0 - 1_700_000_000.0 % DAY_S + 3600  # 01:00 UTC of a day


@pytest.fixture(scope="module")
def bouncer(servers: Any) -> Iterator[tuple[str, int, str]]:
    """(host, port, user) of a PgBouncer in transaction mode with one server connection."""
    try:
        binary = pgbouncer.ensure()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"PgBouncer is not installed and could not be installed here: {exc}")
    target = urllib.parse.urlsplit(servers.postgres_url)
    user = target.username or "postgres"
    workdir = extra.traversable_tempdir("aisf-pgbouncer-")
    port = processes.free_port()
    (workdir / "users.txt").write_text(f'"{user}" ""\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={target.hostname} port={target.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = {extra.HOST}\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {workdir / 'users.txt'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 2\n"
        "max_client_conn = 100\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in workdir.iterdir():
        path.chmod(0o644)
    # PgBouncer refuses to run as root; as root it switches to an unprivileged user.
    user_args = ["-u", "nobody"] if os.geteuid() == 0 else []
    log_file = workdir / "pgbouncer.log"
    proc = extra.spawn([binary, *user_args, ini], log_file, env=pgbouncer.environment(binary))
    try:
        extra.wait_port(port, proc, log_file)
        yield extra.HOST, port, user
    finally:
        extra.stop([proc])
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def database(servers: Any, bouncer: tuple[str, int, str]) -> str:
    """A fresh database, reached through PgBouncer."""
    direct = await fresh_database(servers.postgres_url)
    name = direct.rsplit("/", 1)[1]
    host, port, user = bouncer
    return f"postgresql://{user}@{host}:{port}/{name}"


def position(mmsi: int, ts: float) -> Position:
    return Position(mmsi, ts, 55.0, 10.0, 12.0, 90.0, 90, 0, 1, "s", None, ts)


async def test_everything_the_service_does_works_through_pgbouncer(database: str) -> None:
    config = PostgresConfig(transaction_pooling=True, pool_min=1, pool_max=3)
    stores = [PostgresStore(database, config) for _ in range(3)]
    for store in stores:
        await store.connect()
    try:
        assert await stores[0].migrate() == [v for v, _, _ in migrations()]

        async def write(i: int, store: PostgresStore) -> int:
            total = 0
            for b in range(10):
                # Three days, so partitions are created on demand on the way.
                ts = T0 + (b % 3) * DAY_S + i
                positions = [position(m, ts) for m in range(100 + i, 200, 3)]
                seen = [
                    VesselSeen(p.mmsi, ts, ts, StaticReport(p.mmsi, ts, name="X"))
                    for p in positions
                ]
                total += await store.write(HistoryBatch(i * 100 + b, positions, seen))
            return total

        inserted = await asyncio.gather(*(write(i, s) for i, s in enumerate(stores)))
        rows = await stores[0].fetchval("SELECT count(*) FROM positions")
        assert sum(inserted) == rows > 0
        assert len(await stores[1].partitions()) == 3
        # Retried batches stay idempotent through the pooler too.
        assert sum(await asyncio.gather(*(write(i, s) for i, s in enumerate(stores)))) == 0
        assert len(await stores[2].track(100, T0 - 1, T0 + 3 * DAY_S)) == 3
        assert (await stores[0].vessel(100))["name"] == "X"
        assert await stores[1].soft_delete_inactive(T0 + 10 * DAY_S, T0 + 10 * DAY_S) > 0
        assert await stores[2].vessel(100) is None
        assert len(await stores[0].drop_partitions_before(int(T0 // DAY_S) + 1)) == 1
    finally:
        for store in stores:
            await store.close()


async def test_clients_really_share_server_connections(database: str) -> None:
    """The setup is what it claims: two clients' transactions run on the same backend."""
    a = await asyncpg.connect(database, statement_cache_size=0)
    b = await asyncpg.connect(database, statement_cache_size=0)
    try:
        pids = []
        for conn in (a, b, a, b):
            async with conn.transaction():
                pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
        # PgBouncer hands out the server connection used last (LIFO): always the same one.
        assert len(set(pids)) == 1
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("transaction_pooling", [False, True])
async def test_prepared_statements_need_transaction_pooling_mode(
    database: str, transaction_pooling: bool
) -> None:
    """Why the setting exists: a statement prepared in one transaction is gone when the next
    transaction of the same client lands on another server connection."""
    config = PostgresConfig(transaction_pooling=transaction_pooling, pool_min=1, pool_max=1)
    store = PostgresStore(database, config)
    await store.connect()
    other = await asyncpg.connect(database, statement_cache_size=0)
    try:
        assert await store.fetchval("SELECT $1::int + 1", 1) == 2  # on server connection S1
        async with other.transaction():  # takes S1 (the one used last) ...
            await other.fetchval("SELECT 1")
            if transaction_pooling:
                assert await store.fetchval("SELECT $1::int + 1", 2) == 3  # ... so this is on S2
            else:
                with pytest.raises(asyncpg.PostgresError, match="prepared statement"):
                    await store.fetchval("SELECT $1::int + 1", 2)
    finally:
        await other.close()
        await store.close()
