"""Fresh, isolated databases and key prefixes on the shared test servers."""

from __future__ import annotations

import itertools
import os
import uuid

import asyncpg

_counter = itertools.count()


def unique_name(stem: str) -> str:
    return f"{stem}_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"


async def fresh_database(admin_url: str) -> str:
    """Create an empty database on the server of `admin_url`; return its URL."""
    name = unique_name("t")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"
