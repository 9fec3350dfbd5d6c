"""Partition ownership: leases in a JetStream KV bucket, taken and renewed by compare-and-set.

nats-py has no pinned-client consumer groups, so ownership is the engine's KV primitive: a
lease is the key ``p<partition>`` in the bucket ``<stream>_leases`` whose entries expire after
`workers.lease_ttl_s`. A worker takes a free partition with `create` (fails if the key holds a
value), renews it with `update(last=revision)` (fails if anybody else wrote it since) and gives
it back with `delete(last=revision)`. The revision it holds is the partition's ownership epoch:
it only grows, so two owners of one partition never share one.

Which worker should own which partition: every worker heartbeats into ``<stream>_workers``
(same expiry; the value is its pid and metrics endpoint) and ranks the live workers per
partition by rendezvous hashing; the winner takes it, the others leave it alone, and a holder
that is no longer the winner (a new worker joined) hands it over: it stops consuming the
partition, lets what it took be committed and acknowledged while it keeps renewing the lease,
and only then deletes it, so the next owner starts where this one ended. A worker that dies stops
renewing: its leases and heartbeat expire within the TTL and the survivors take its partitions.
A holder that cannot renew in time (NATS unreachable, the process paused) stops processing the
partition once its lease may have expired (`valid`), before anyone else can have taken it.

The leases are kept on a thread of their own, with its own event loop and NATS connection: the
worker's loop is busy decoding and routing what it consumes, and renewals queued behind that
work took longer than the TTL under full load (measured: 64 renewals 3 s), so a busy worker
lost its partitions to nobody. The callbacks (`acquired`, `released`) run on the loop that
called `start`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from aisfusion.config import NatsConfig, WorkersConfig
from aisfusion.jetstream import log as jlog
from aisfusion.metrics import Metrics

logger = logging.getLogger(__name__)

Acquired = Callable[[int, int], Awaitable[None]]  # (partition, epoch)
Released = Callable[[int, bool], Awaitable[None]]  # (partition, handed over: drain it first)
Connect = Callable[[], Awaitable[Nats]]


def rendezvous(partition: int, workers: list[str]) -> str | None:
    """The worker that should own `partition` (highest hash of worker and partition)."""
    best, best_score = None, b""
    for worker in workers:
        score = hashlib.blake2b(f"{worker}/{partition}".encode(), digest_size=8).digest()
        if best is None or score > best_score:
            best, best_score = worker, score
    return best


async def open_buckets(
    nc: Nats, nats_config: NatsConfig, ttl_s: float
) -> tuple[KeyValue, KeyValue]:
    js = nc.jetstream()
    buckets = []
    for name in (jlog.leases_bucket(nats_config), jlog.members_bucket(nats_config)):
        buckets.append(
            await js.create_key_value(
                bucket=name, ttl=ttl_s, history=1, replicas=nats_config.replicas
            )
        )
    return buckets[0], buckets[1]


async def live_keys(js: JetStreamContext, bucket: str, kv: KeyValue) -> dict[str, bytes]:
    """Every key of `bucket` that holds a value (expired and deleted ones are not listed).

    The keys come from the bucket stream's subjects (stream info), not from `kv.keys()`: that
    opens an ephemeral consumer per call which the server keeps for minutes, and listing every
    round hit the server's consumer limit within a minute ("maximum consumers limit reached").
    """
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    keys = [subject[len(prefix) :] for subject in (info.state.subjects or {})]
    entries = await asyncio.gather(*(kv.get(key) for key in keys), return_exceptions=True)
    out = {}
    for key, entry in zip(keys, entries, strict=True):
        if isinstance(entry, (KeyNotFoundError, KeyDeletedError)):
            continue
        if isinstance(entry, BaseException):
            raise entry
        if entry.value:
            out[key] = entry.value
    return out


class Leases:
    def __init__(
        self,
        connect: Connect,
        nats_config: NatsConfig,
        config: WorkersConfig,
        worker_id: str,
        metrics: Metrics,
        acquired: Acquired,
        released: Released,
        card: dict[str, Any] | None = None,
    ) -> None:
        self._connect = connect
        self._nats = nats_config
        self._config = config
        self.worker_id = worker_id
        self._metrics = metrics
        self._acquired = acquired
        self._released = released
        # What the heartbeat tells the others about this worker (pid, metrics endpoint).
        self._card = json.dumps(card or {}).encode()
        self._js: JetStreamContext | None = None
        self._leases: KeyValue | None = None
        self._members: KeyValue | None = None
        self.held: dict[int, int] = {}  # partition -> revision (its epoch is the first one)
        self.epochs: dict[int, int] = {}
        self._renewed: dict[int, float] = {}  # partition -> monotonic time of the last renewal
        self.workers: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.moves = 0
        self._handing: dict[int, asyncio.Task[None]] = {}  # hand-overs draining
        self._home: asyncio.AbstractEventLoop | None = None  # where the callbacks run
        self._loop: asyncio.AbstractEventLoop | None = None  # the keeper thread's
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    async def start(self) -> None:
        """Start the keeper thread; returns once it is connected and has its buckets."""
        self._home = asyncio.get_running_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._keep(ready),), name="leases", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def _keep(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            nc = await self._connect()
            self._js = nc.jetstream()
            self._leases, self._members = await open_buckets(
                nc, self._nats, self._config.lease_ttl_s
            )
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self._task = self._loop.create_task(self._run())
        ready.set_result(None)
        try:
            await self._stopped.wait()
        finally:
            await nc.close()

    async def _home_call(self, coro: Awaitable[None]) -> None:
        """Run a callback on the home loop and wait for it (from the keeper thread)."""
        assert self._home is not None
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._home))  # type: ignore[arg-type]

    def valid(self, partition: int) -> bool:
        """Whether the lease on `partition` is certainly still ours: renewed within the TTL,
        less a margin for the clock of the NATS server."""
        renewed = self._renewed.get(partition)
        margin = self._config.renew_interval_s / 2
        return (
            renewed is not None and time.monotonic() - renewed < self._config.lease_ttl_s - margin
        )

    async def _run(self) -> None:
        while not jlog.stopping():
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: leases lapse by `valid`, we try again
                logger.warning("leases: %s: %s", type(exc).__name__, exc)
                try:
                    await self._drop_invalid()
                except Exception:
                    logger.exception("leases: giving up lapsed partitions failed")
            await asyncio.sleep(self._config.renew_interval_s)

    async def _round(self) -> None:
        assert self._leases is not None
        assert self._members is not None
        await self._members.put(self.worker_id, self._card)
        assert self._js is not None
        members = jlog.members_bucket(self._nats)
        self.workers = sorted(await live_keys(self._js, members, self._members))
        self._metrics.workers_alive.set(len(self.workers))
        # Renew what we hold first, all at once (one round trip): that is what keeps
        # processing going.
        held = list(self.held.items())
        started = time.monotonic()
        me = self.worker_id.encode()
        results = await asyncio.gather(
            *(self._leases.update(f"p{part}", me, last=rev) for part, rev in held),
            return_exceptions=True,
        )
        for (part, _), result in zip(held, results, strict=True):
            if isinstance(result, int):
                if part not in self.held:
                    continue  # handed over meanwhile
                self.held[part] = result
                self._renewed[part] = started
            elif isinstance(result, KeyWrongLastSequenceError):
                logger.warning("leases: partition %d was taken over", part)
                await self._give_up(part, "lost")
            elif isinstance(result, BaseException):
                raise result
        spent = time.monotonic() - started
        if spent > self._config.lease_ttl_s / 4:
            logger.warning("leases: renewing %d leases took %.2f s", len(held), spent)
        for part in range(self._nats.partitions):
            winner = rendezvous(part, self.workers)
            if part in self.held and winner != self.worker_id and winner is not None:
                if part not in self._handing:
                    assert self._loop is not None
                    self._handing[part] = self._loop.create_task(self._hand_over(part))
            elif part not in self.held and winner == self.worker_id:
                await self._try_take(part)

    async def _try_take(self, part: int) -> None:
        assert self._leases is not None
        started = time.monotonic()
        try:
            revision = await self._leases.create(f"p{part}", self.worker_id.encode())
        except KeyWrongLastSequenceError:
            return  # still held (its owner is handing it over or has not expired yet)
        self.held[part] = revision
        self.epochs[part] = revision
        self._renewed[part] = started
        self.moves += 1
        self._metrics.partition_moves.labels("acquired").inc()
        self._metrics.partitions_owned.set(len(self.held))
        logger.info("leases: took partition %d (epoch %d)", part, revision)
        try:
            await self._home_call(self._acquired(part, revision))
        except Exception:
            logger.exception("leases: cannot consume partition %d; giving it back", part)
            await self._hand_over(part)

    async def _hand_over(self, part: int) -> None:
        """Give `part` away: drained first (its lease still renewed by the rounds, as it
        stays in `held`), then released and the lease deleted."""
        assert self._leases is not None
        try:
            await self._home_call(self._released(part, True))
        finally:
            self._handing.pop(part, None)
        revision = self.held.get(part)
        if revision is None:
            return  # lost while draining (given up there)
        await self._give_up(part, "released", notify=False)
        with contextlib.suppress(KeyWrongLastSequenceError):  # it had been taken already
            await self._leases.delete(f"p{part}", last=revision)
        logger.info("leases: handed partition %d over", part)

    async def _give_up(self, part: int, change: str, *, notify: bool = True) -> None:
        self.held.pop(part, None)
        self.epochs.pop(part, None)
        self._renewed.pop(part, None)
        self.moves += 1
        self._metrics.partition_moves.labels(change).inc()
        self._metrics.partitions_owned.set(len(self.held))
        if notify:
            await self._home_call(self._released(part, False))

    async def _drop_invalid(self) -> None:
        lapsed = [p for p in self.held if not self.valid(p)]
        if lapsed:
            logger.warning("leases: partitions %s lapsed (cannot renew)", lapsed)
        for part in lapsed:
            await self._give_up(part, "lost")

    async def stop(self) -> None:
        """Give every lease back at once (a graceful stop: no one waits for the TTL), then
        end the keeper thread."""
        if self._loop is None or self._thread is None:
            return
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._leave(), self._loop))
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    def freeze(self) -> None:
        """Stop renewing and keep believing (tests: a paused or cut-off process)."""
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)

    async def _leave(self) -> None:
        assert self._stopped is not None
        await jlog.cancel(self._task)
        self._task = None
        for task in list(self._handing.values()):
            with contextlib.suppress(Exception):
                await task
        for part in list(self.held):
            try:
                await self._hand_over(part)
            except Exception as exc:  # NATS away: the lease expires instead
                logger.warning("leases: cannot give back partition %d: %s", part, exc)
        if self._members is not None:
            try:
                await self._members.delete(self.worker_id)
            except Exception as exc:
                logger.warning("leases: cannot leave the worker list: %s", exc)
        self._stopped.set()

    def status(self) -> dict[str, Any]:
        return {
            "worker": self.worker_id,
            "workers": self.workers,
            "partitions": {str(p): {"epoch": e} for p, e in sorted(self.epochs.items())},
            "moves": self.moves,
        }
