"""Hand-packed Redis pipelines: commands encoded to RESP here and sent in one write.

redis-py packs every argument through its `Encoder` and arms bookkeeping per command, which
caps a pipeline at 10-15k vessel updates/s in Python; packing the same commands with a few
byte formats and reading the replies off one pooled connection reaches the server's own rate
(DESIGN.md, "Redis"). Used for single servers; a cluster goes through redis-py's cluster
pipeline, which routes each key to its node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

Arg = bytes | str | int | float
Command = Sequence[Arg]


def _arg(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    return repr(value).encode()  # a float as redis-py sends it: shortest round-trip repr


def pack(commands: Sequence[Command]) -> bytes:
    """The RESP encoding of `commands`, in order (arrays of bulk strings)."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for value in command:
            raw = _arg(value)
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


async def execute(client: aioredis.Redis, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` in one write on one pooled connection and read every reply.

    Error replies are returned in place (like ``pipeline.execute(raise_on_error=False)``) so
    the connection stays in step. A connection error drops the connection (redis-py does) and
    is retried as the client's retry policy says, on a fresh connection, so `commands` must be
    idempotent; the last error is raised.
    """
    if not commands:
        return []
    packed = pack(commands)
    pool: Any = client.connection_pool  # get_connection is untyped in redis-py
    conn = await pool.get_connection()

    async def exchange() -> list[Any]:
        await conn.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies

    async def drop(_error: BaseException) -> None:
        await conn.disconnect(nowait=True)

    try:
        return cast(list[Any], await conn.retry.call_with_retry(exchange, drop))
    except BaseException:
        # Replies may be left unread (a cancelled write, a lost server): never reuse it.
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


def raise_errors(replies: Sequence[Any]) -> None:
    """Raise the first error reply, if any."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
