"""The feeds' side of the log: raw messages grouped by partition and published to JetStream.

`Publisher` is the feed sink (called on the feed loop with each chunk's messages, never
blocking). Messages wait in a per-partition buffer until it holds `publish_max_messages` or
for `publish_linger_s`, then go out as one log message; up to `max_pending_publishes` are in
flight at once (pipelined: `publish_async`). A batch stays ours until the server acknowledged
it: a failed or timed-out publish is sent again with the same `Nats-Msg-Id`, which the stream
stores once. While NATS is unreachable batches queue here, up to `buffer_max_messages`; beyond,
new messages are dropped and counted. A feed acknowledges nothing to a receiver, so what is lost
by a crash of this process is what it held here: the loss window ends at the publish ack.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import deque
from typing import Any

from nats.aio.client import Client as Nats

from aisfusion.config import NatsConfig
from aisfusion.jetstream import log as jlog
from aisfusion.messages import RawMessage
from aisfusion.metrics import Metrics

logger = logging.getLogger(__name__)

_RETRY_PAUSE_S = 0.2


class _Batch:
    __slots__ = ("count", "data", "msg_id", "subject")

    def __init__(self, subject: str, data: bytes, count: int, msg_id: str) -> None:
        self.subject = subject
        self.data = data
        self.count = count
        self.msg_id = msg_id


class Publisher:
    def __init__(self, nc: Nats, config: NatsConfig, metrics: Metrics) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=config.ack_timeout_s)
        self._config = config
        self._metrics = metrics
        self._partitions = config.partitions
        self._buffers: list[list[RawMessage]] = [[] for _ in range(config.partitions)]
        self._filled: set[int] = set()  # partitions with something buffered
        self._queue: deque[_Batch] = deque()  # sealed, oldest first
        self._inflight = 0
        self._buffered = 0  # messages in buffers, queue and flight
        self._ids = itertools.count(1)
        self._origin = uuid.uuid4().hex[:12]  # makes message ids unique across restarts
        self._wake = asyncio.Event()
        self._linger: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._last_error: str | None = None
        self._last_error_at = 0.0
        self.published = 0
        self.dropped = 0

    # -- the feed sink ------------------------------------------------------------------

    def __call__(self, messages: list[RawMessage]) -> None:
        room = self._config.buffer_max_messages - self._buffered
        if len(messages) > room:
            dropped = len(messages) - max(0, room)
            self.dropped += dropped
            self._metrics.log_dropped.inc(dropped)
            messages = messages[: max(0, room)]
        if not messages:
            return
        p, buffers, filled = self._partitions, self._buffers, self._filled
        limit = self._config.publish_max_messages
        for msg in messages:
            part = msg.mmsi % p
            buf = buffers[part]
            buf.append(msg)
            if len(buf) >= limit:
                self._seal(part)
            else:
                filled.add(part)
        self._buffered += len(messages)
        self._metrics.log_buffered.set(self._buffered)
        if self._filled and self._linger is None:
            linger = self._config.publish_linger_s
            self._linger = asyncio.get_running_loop().call_later(linger, self._seal_all)

    def _seal(self, part: int) -> None:
        buf = self._buffers[part]
        self._buffers[part] = []
        self._filled.discard(part)
        msg_id = f"{self._origin}.{next(self._ids)}"
        self._queue.append(
            _Batch(jlog.subject(self._config, part), jlog.encode(buf), len(buf), msg_id)
        )
        self._wake.set()

    def _seal_all(self) -> None:
        self._linger = None
        for part in sorted(self._filled):
            self._seal(part)

    # -- sending ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._send_loop())

    async def _send_loop(self) -> None:
        limit = self._config.max_pending_publishes
        while not jlog.stopping():
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self._inflight < limit:
                batch = self._queue.popleft()
                self._inflight += 1
                task = asyncio.get_running_loop().create_task(self._publish(batch))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _publish(self, batch: _Batch) -> None:
        m = self._metrics
        try:
            future = await self._js.publish_async(
                batch.subject, batch.data, headers={"Nats-Msg-Id": batch.msg_id}
            )
            await asyncio.wait_for(future, self._config.ack_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no ack (yet): keep the batch and send it again
            reason = type(exc).__name__
            m.log_publish_errors.labels(reason).inc()
            now = time.monotonic()
            if now - self._last_error_at > 10:
                logger.warning("log: publish failed (%s: %s); batches wait and retry", reason, exc)
            self._last_error, self._last_error_at = f"{reason}: {exc}", now
            await asyncio.sleep(_RETRY_PAUSE_S)
            self._queue.appendleft(batch)
        else:
            self._buffered -= batch.count
            self.published += batch.count
            m.log_published.inc(batch.count)
            m.log_buffered.set(self._buffered)
        finally:
            self._inflight -= 1
            self._wake.set()

    async def flush(self, deadline_s: float) -> bool:
        """Publish everything held; True when the log acknowledged all of it in time."""
        if self._linger is not None:
            self._linger.cancel()
        self._seal_all()
        deadline = time.monotonic() + deadline_s
        while self._buffered > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - deadline
            await asyncio.sleep(0.01)
        return self._buffered == 0

    async def stop(self, deadline_s: float) -> int:
        """Flush (up to the deadline), then stop; returns the messages left unpublished."""
        await self.flush(deadline_s)
        for task in [self._task, *self._pending]:
            await jlog.cancel(task)
        self._task = None
        return self._buffered

    # -- state --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def healthy(self) -> bool:
        """Connected, and no publish has failed for the last few seconds."""
        return self.connected and time.monotonic() - self._last_error_at > 5.0

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "healthy": self.healthy,
            "buffered": self._buffered,
            "in_flight": self._inflight,
            "published": self.published,
            "dropped": self.dropped,
            "last_error": self._last_error,
        }
