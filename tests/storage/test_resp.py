"""Hand-packed pipelines (storage/resp.py) against the real embedded Valkey: the bytes are what
redis-py would send, and an error reply in the middle leaves the connection in step."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import Connection
from redis.exceptions import ResponseError

from aisfusion.storage import resp
from tests.dbs import unique_name

args = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)


names = st.sampled_from(["SET", "MSET", "GEOADD", "ZADD", "JSON.SET"])
commands = st.builds(lambda name, rest: [name, *rest], names, st.lists(args, max_size=6))


@given(st.lists(commands, min_size=1, max_size=5))
def test_packing_matches_redis_py(commands: list[list[Any]]) -> None:
    packer = Connection()  # packs without connecting
    expected = b"".join(packer.pack_commands(commands))
    assert resp.pack(commands) == expected


@pytest.fixture
async def client(servers: Any) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(servers.redis_url, socket_timeout=None)
    yield c
    await c.aclose()


async def test_replies_in_order_with_errors_in_place(client: aioredis.Redis) -> None:
    key = unique_name("resp")
    replies = await resp.execute(
        client,
        [
            ("SET", key, b"\x00\xffbinary"),
            ("HSET", key, "f", 1),  # WRONGTYPE: an error reply, in place
            ("GET", key),
            ("ZADD", key + ":z", 1.5, 7, 2.25, 8),
            ("ZSCORE", key + ":z", 8),
        ],
    )
    assert replies[0] in (b"OK", "OK", True)
    assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
    assert replies[2] == b"\x00\xffbinary"
    assert replies[3] == 2
    assert float(replies[4]) == 2.25  # a double (RESP3) or its text (RESP2)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        resp.raise_errors(replies)
    # The pooled connection is in step: the next command reads its own reply.
    assert await resp.execute(client, [("GET", key)]) == [b"\x00\xffbinary"]
    assert await client.get(key) == b"\x00\xffbinary"
    assert await resp.execute(client, []) == []
