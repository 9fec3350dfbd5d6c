"""A worker's side of the log: the partitions it owns, consumed and acknowledged after commit.

For each partition it holds a lease on (`leases`), the worker binds the durable pull consumer
``<stream>-p<partition>`` (created on first use, one per partition, explicit acks)
and resets it first: whatever its previous owner had been delivered and had not acknowledged is
delivered again at once, from the acknowledgement floor, rather than after `ack_wait_s`.

Fetched log messages are numbered in one sequence for the whole worker and handed to the same
`Router` the in-process mode uses; after each fetch every shard is told `Mark(n)`. The mark
travels behind the decisions to the batcher and rides on a history batch; once storage has
that batch (and every earlier one) in PostgreSQL, the DLQ or the spool it calls `durable(n)`
and every log message numbered up to n is acknowledged.
So a message is acknowledged only after its positions are committed: at-least-once delivery,
and with the idempotent history insert (key ``(mmsi, ts)``) exactly-once storage.

A partition given up (lost or handed over) stops at once: its unacknowledged messages are left
to the next owner, and the shards drop its vessels (`Release`), which the next owner rebuilds
from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import pykka
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from aisfusion.config import NatsConfig, WorkersConfig
from aisfusion.jetstream import log as jlog
from aisfusion.jetstream.leases import Connect, Leases
from aisfusion.messages import Mark, RawMessage, Release
from aisfusion.metrics import Metrics

logger = logging.getLogger(__name__)

_FETCH_WAIT_S = 0.5
_RELEASE_TIMEOUT_S = 30.0
_HAND_OVER_DRAIN_S = 30.0


class LogIntake:
    def __init__(
        self,
        nc: Nats,
        connect: Connect,
        nats_config: NatsConfig,
        config: WorkersConfig,
        worker_id: str,
        # (messages, partition -> ownership epoch, number of partitions)
        route: Callable[[list[RawMessage], dict[int, int], int], None],
        shards: Sequence[pykka.ActorRef[Any]],
        metrics: Metrics,
        claim: Callable[[int], Awaitable[None]],
        card: dict[str, Any] | None = None,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._nats = nats_config
        self._config = config
        self._route = route
        self._shards = list(shards)
        self._metrics = metrics
        self._claim = claim
        self.leases = Leases(
            connect,
            nats_config,
            config,
            worker_id,
            metrics,
            self._acquired,
            self._released,
            card,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Per partition: (number, message, lines) delivered and not yet acknowledged, oldest
        # first; `_in_flight` counts their lines (backpressure: `_consume`).
        self._unacked: dict[int, deque[tuple[int, Msg, int]]] = {}
        self._in_flight = 0
        self._room = asyncio.Event()
        self._seq = 0
        self._routed = 0  # the last number told to the shards in a Mark
        # Fetched and not yet routed: what every partition fetched in one turn of the loop
        # goes to the router together (see `_route_fetched`).
        self._fetched: list[RawMessage] = []
        self._epochs: dict[int, int] = {}
        self._route_soon: asyncio.Handle | None = None
        self._durable = 0
        self.consumed = 0
        self.acked = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await jlog.ensure_stream(self._js, self._nats)
        await self.leases.start()

    async def pause(self) -> None:
        """Stop taking from the log, keeping the leases (renewed) and the acknowledgements to
        come: the service drains what was routed, then calls `stop`."""
        for part in list(self._tasks):
            await self._halt(part, forget=False)

    async def stop(self) -> None:
        """Give the leases back; messages not acknowledged by now go to the next owner."""
        await self.pause()
        await self.leases.stop()
        for part in list(self._unacked):
            self._settle(self._unacked.pop(part))

    # -- ownership ---------------------------------------------------------------------

    async def _acquired(self, part: int, epoch: int) -> None:
        js, cfg = self._js, self._nats
        name = jlog.consumer_name(cfg, part)
        await js.add_consumer(
            cfg.stream,
            api.ConsumerConfig(
                durable_name=name,
                filter_subject=jlog.subject(cfg, part),
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=self._config.ack_wait_s,
                max_ack_pending=self._config.max_ack_pending,
                max_deliver=-1,
            ),
        )
        # Whatever the previous owner was given and did not acknowledge: again, now.
        await js.reset_consumer(cfg.stream, name)
        sub = await js.pull_subscribe_bind(durable=name, stream=cfg.stream)
        await self._claim(part)  # the shards learn its vessels before any of its messages
        self._settle(self._unacked.pop(part, ()))  # a previous holding's: delivered again
        self._unacked[part] = deque()
        assert self._loop is not None
        self._tasks[part] = self._loop.create_task(self._consume(part, epoch, sub))

    async def _released(self, part: int, handed_over: bool) -> None:
        if handed_over:
            # A rebalance: what was taken from the partition is committed and acknowledged
            # before the lease goes (the lease is renewed meanwhile), so the next owner does
            # not decide it again from the live record, where a second receiver's copy of a
            # transmission would look new. Bounded: past it, the next owner gets the rest.
            if self._route_soon is not None:
                self._route_soon.cancel()
                self._route_fetched()  # what it fetched goes the normal way, marked
            await self._halt(part, forget=False)
            deadline = time.monotonic() + _HAND_OVER_DRAIN_S
            while self._unacked.get(part) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await self._halt(part)
        # The shards forget the partition's vessels (asked off the loop: they may be busy).
        release = Release(frozenset({part}), self._nats.partitions)
        asks = [shard.ask(release, block=False) for shard in self._shards]
        loop = asyncio.get_running_loop()
        for future in asks:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(
                    None, functools.partial(future.get, timeout=_RELEASE_TIMEOUT_S)
                )

    async def _halt(self, part: int, *, forget: bool = True) -> None:
        # Out of `_tasks` first: the fetch loop also ends on that, since nats-py may turn a
        # cancellation inside a fetch into a timeout.
        task = self._tasks.pop(part, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if forget:
            self._settle(self._unacked.pop(part, ()))

    def _settle(self, entries: Sequence[tuple[int, Msg, int]]) -> None:
        """Entries no longer in flight: acknowledged, or left to the next owner."""
        self._in_flight -= sum(lines for _, _, lines in entries)
        if self._in_flight < self._config.max_in_flight:
            self._room.set()

    # -- consuming ---------------------------------------------------------------------

    async def _consume(self, part: int, epoch: int, sub: Any) -> None:
        m = self._metrics
        batch = self._config.fetch_batch
        me = asyncio.current_task()
        reconnects = self._nc.stats["reconnects"]
        try:
            while self._tasks.get(part) is me:
                if not self.leases.valid(part):
                    await asyncio.sleep(0.05)  # renewing, or about to be given up
                    continue
                if self._in_flight >= self._config.max_in_flight:
                    # Storage is behind: the log keeps the rest until it catches up.
                    self._room.clear()
                    m.log_backpressure.inc()
                    await self._room.wait()
                    continue
                if self._nc.stats["reconnects"] != reconnects:
                    # A fetch reply lost in the outage counts as delivered: without a reset
                    # it would come again only after ack_wait_s. Again now, from the floor
                    # (what was processed meanwhile is decided once more: idempotent).
                    try:
                        await self._js.reset_consumer(
                            self._nats.stream, jlog.consumer_name(self._nats, part)
                        )
                    except Exception as exc:
                        logger.debug("log: reset of partition %d: %r", part, exc)
                        await asyncio.sleep(_FETCH_WAIT_S)
                        continue
                    reconnects = self._nc.stats["reconnects"]
                try:
                    msgs = await self._fetch(sub, batch)
                except (TimeoutError, NatsTimeoutError):
                    continue
                except Exception as exc:  # NATS away or restarting: the lease decides
                    logger.debug("log: fetch of partition %d: %r", part, exc)
                    await asyncio.sleep(_FETCH_WAIT_S)
                    continue
                if not self.leases.valid(part):
                    continue  # lapsed while we waited: the next owner gets these again
                unacked = self._unacked[part]
                # One partition, one epoch: the whole fetch goes to the router at once, so a
                # shard gets one batch of it rather than one per (small) log message.
                fetched: list[RawMessage] = []
                for msg in msgs:
                    try:
                        lines = jlog.decode(msg.data)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        m.log_undecodable.inc()
                        lines = []
                    fetched += lines
                    self._seq += 1
                    unacked.append((self._seq, msg, len(lines)))
                    self._in_flight += len(lines)
                self._fetched += fetched
                self._epochs[part] = epoch
                if self._route_soon is None:
                    assert self._loop is not None
                    self._route_soon = self._loop.call_soon(self._route_fetched)
                self.consumed += len(fetched)
                m.log_consumed.inc(len(fetched))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _route_fetched(self) -> None:
        """Route what the partitions fetched since the last call as one batch, then mark it.

        A quiet partition's fetch brings a handful of messages; routed one fetch at a time,
        a shard would get a batch of one or two messages per partition per fetch, and a
        shard's cost is per batch (measured: the backlog grew at 10,000 lines/s with one
        worker). Together they make batches as large as the in-process feed's.
        """
        self._route_soon = None
        fetched, epochs = self._fetched, self._epochs
        self._fetched, self._epochs = [], {}
        gone = {p for p in epochs if p not in self._tasks}
        if gone:  # given up since it was fetched: the next owner gets these again
            n = self._nats.partitions
            fetched = [msg for msg in fetched if msg.mmsi % n not in gone]
            for part in gone:
                # Not routed, so never to be acknowledged here (the coming mark covers
                # their numbers): out of the partition's unacknowledged list, if it has one.
                unacked = self._unacked.get(part)
                while unacked and unacked[-1][0] > self._routed:
                    self._settle([unacked.pop()])
        if fetched:
            self._route(fetched, epochs, self._nats.partitions)
        if self._seq != self._routed:
            self._routed = self._seq
            mark = Mark(self._seq)
            for shard in self._shards:
                shard.tell(mark)

    @staticmethod
    async def _fetch(sub: Any, batch: int) -> list[Msg]:
        """Wait for the next message, then take at once as many more as are there.

        nats-py's `fetch(n)` keeps waiting, once a message came, until n came or the timeout
        passed: with a quiet partition every message would wait up to the timeout (measured:
        p50 250 ms socket → Redis at 10,000 lines/s). So one message is waited for (the long
        poll), and more are asked for only as many as its metadata says are pending: the
        server has them, so that fetch returns as soon as they are delivered.
        """
        msgs: list[Msg] = await sub.fetch(1, timeout=_FETCH_WAIT_S)
        more = min(batch - 1, msgs[0].metadata.num_pending or 0)
        if more > 0:
            with contextlib.suppress(TimeoutError, NatsTimeoutError):
                msgs += await sub.fetch(more, timeout=_FETCH_WAIT_S)
        return msgs

    # -- acknowledging -------------------------------------------------------------------

    def durable(self, upto: int) -> None:
        """Storage's callback (any thread): log messages numbered up to `upto` are safe."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._ack, upto)

    def _ack(self, upto: int) -> None:
        self._durable = max(self._durable, upto)
        settled: list[tuple[int, Msg, int]] = []
        for unacked in self._unacked.values():
            while unacked and unacked[0][0] <= upto:
                settled.append(unacked.popleft())
        self._settle(settled)
        done = [msg for _, msg, _ in settled]
        if done:
            self.acked += len(done)
            self._metrics.log_acked.inc(len(done))
            asyncio.get_running_loop().create_task(self._send_acks(done))

    async def _send_acks(self, msgs: list[Msg]) -> None:
        # A workqueue stream wants each message acknowledged (no AckAll).
        try:
            for msg in msgs:
                await msg.ack()
        except Exception as exc:  # not acked: delivered again, stored once
            logger.warning("log: ack failed: %s", exc)

    def status(self) -> dict[str, Any]:
        return {
            **self.leases.status(),
            "consumed": self.consumed,
            "acked": self.acked,
            "unacked": sum(len(q) for q in self._unacked.values()),
            "in_flight": self._in_flight,
            "durable_mark": self._durable,
        }
