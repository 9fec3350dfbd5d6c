"""The log's shape: partitions, subjects, the stream's settings and the message encoding.

A partition is ``mmsi % nats.partitions``: fixed for the life of a stream, it is the unit a
worker owns. Each log message is one msgpack-encoded `RawBatch` of one partition, in arrival
order; the `Nats-Msg-Id` header makes a publish that is retried after a lost ack land once
(the stream's duplicate window).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from aisfusion.config import NatsConfig
from aisfusion.messages import RawBatch, RawMessage

logger = logging.getLogger(__name__)

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(RawBatch)


def partition_of(mmsi: int, partitions: int) -> int:
    return mmsi % partitions


def subject(config: NatsConfig, partition: int) -> str:
    return f"{config.subject_prefix}.{partition}"


def consumer_name(config: NatsConfig, partition: int) -> str:
    return f"{config.stream}-p{partition}"


def leases_bucket(config: NatsConfig) -> str:
    return f"{config.stream}_leases"


def members_bucket(config: NatsConfig) -> str:
    return f"{config.stream}_workers"


async def cancel(task: asyncio.Task[None] | None, timeout_s: float = 5.0) -> None:
    """Cancel `task` and wait for its end, at most `timeout_s`.

    nats-py can turn a cancellation that lands inside a request into a timeout error, which a
    loop that survives errors then swallows: it would never end, and a stop awaiting it would
    hang (seen: the front's stop waited for ever on the log monitor). So the loops here also
    stop on `Task.cancelling()`, and the wait is bounded.
    """
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=timeout_s)
    if not task.done():
        logger.warning(
            "log: task %s did not end in %.0f s; left behind", task.get_name(), timeout_s
        )


def stopping() -> bool:
    """Whether the current task was asked to stop (see `cancel`)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def encode(messages: list[RawMessage]) -> bytes:
    return _ENCODER.encode(RawBatch(messages))


def decode(data: bytes) -> list[RawMessage]:
    """Raises msgspec.DecodeError for a message that is not a raw batch."""
    return _DECODER.decode(data).messages


def stream_config(config: NatsConfig) -> api.StreamConfig:
    retention = (
        api.RetentionPolicy.WORK_QUEUE
        if config.retention == "workqueue"
        else api.RetentionPolicy.LIMITS
    )
    return api.StreamConfig(
        name=config.stream,
        subjects=[f"{config.subject_prefix}.*"],
        retention=retention,
        max_age=config.max_age_s,
        max_bytes=config.max_bytes,
        # Full: refuse new publishes (the feeds buffer and count) rather than drop data that
        # no worker has committed yet.
        discard=api.DiscardPolicy.NEW,
        storage=api.StorageType.FILE,
        num_replicas=config.replicas,
        duplicate_window=config.duplicate_window_s,
    )


async def connect(config: NatsConfig, url: str, name: str) -> Nats:
    """A client that reconnects for ever: an outage is waited out, not fatal."""
    import nats

    async def error(exc: Exception) -> None:
        # One line, not nats-py's traceback per reconnect attempt during an outage.
        logger.warning("nats %s: %s: %s", name, type(exc).__name__, exc)

    client: list[Nats] = []

    async def disconnected() -> None:
        if client and (client[0].is_closed or client[0].is_draining):
            return  # our own close or drain
        logger.warning("nats %s: disconnected; reconnecting", name)

    async def reconnected() -> None:
        logger.info("nats %s: reconnected", name)

    nc = await nats.connect(
        servers=url.split(","),
        name=name,
        connect_timeout=config.connect_timeout_s,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        error_cb=error,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
    )
    client.append(nc)
    return nc


async def ensure_stream(js: JetStreamContext, config: NatsConfig) -> api.StreamInfo:
    """Create the stream, or bring an existing one's limits up to the configuration."""
    wanted = stream_config(config)
    try:
        await js.stream_info(config.stream)
    except NotFoundError:
        return await js.add_stream(wanted)
    return await js.update_stream(wanted)
