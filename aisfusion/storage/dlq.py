"""The dead-letter queue for history batches, in Redis.

A batch lands here while the Postgres breaker is open or after a transient write failure. Each
entry carries its attempt count, the last error, who diverted it and a retry time; a writer
*leases* due entries (`take_due`), then `ack`s them once written or `fail`s them, which
reschedules them with exponential backoff and jitter, or parks them after `max_attempts`. A
parked entry is only retried by an operator (`retry_now`). A lease that is not settled within
`lease_s` (the writer crashed or stalled) expires: it counts as a failed attempt and the entry
is due again, or parked if that was its last attempt, so a batch that crashes its writer every
time cannot loop for ever.

Keys, under the store's environment prefix ``P``::

    P{dlq}:due       zset    id -> next retry time (UNIX s); ready when <= now
    P{dlq}:leased    zset    id -> lease expiry (UNIX s)
    P{dlq}:parked    zset    id -> time parked (UNIX s)
    P{dlq}:age       zset    id -> first_failed_at (every entry; gives the oldest age)
    P{dlq}:entry     hash    id -> msgpack [source, first_failed_at, HistoryBatch]
    P{dlq}:attempts  hash    id -> failed attempts so far
    P{dlq}:error     hash    id -> last error
    P{dlq}:rowcount  hash    id -> positions in the batch
    P{dlq}:rows      string  positions in all entries

Every entry id is in exactly one of ``due``, ``leased`` and ``parked``. Every operation that
moves an entry runs as one Lua script (or MULTI transaction) over these fixed keys, so they
must live in one Redis Cluster slot: the ``{dlq}`` hash tag puts them there. It is the only
hash tag in the key space (DESIGN: hash tags only where atomicity across keys is needed).
Per-entry data sits in fields of shared hashes rather than in one key per entry because a
script may only touch keys it is given in KEYS; it cannot build key names from the ids it
reads. Entry ids are ``<µs since epoch, 16 hex>-<sequence>-<random>``, so they sort by the
time the entry was pushed.

Times come from the injected Python clock and are passed to Redis as scores, so tests can run
a fake clock against a real server. All coroutines run on the storage event loop; Redis
errors are raised as `TransientStorageError` (connection lost, timeout) or
`PermanentStorageError`.
"""

from __future__ import annotations

import importlib.resources
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from aisfusion.messages import HistoryBatch
from aisfusion.storage.redis import RedisStore
from aisfusion.storage.redis import _wrap as wrap_redis_error

log = logging.getLogger(__name__)

_KEY_NAMES = ("due", "leased", "parked", "age", "entry", "attempts", "error", "rowcount", "rows")


class DlqEntry(msgspec.Struct, frozen=True):
    """One dead-lettered batch. For a parked entry `next_retry_at` is the time it was parked."""

    id: str
    batch: HistoryBatch
    attempts: int  # failed attempts so far
    error: str  # the last error
    source: str  # who diverted it, e.g. "postgres-breaker-open", "write-failed"
    first_failed_at: float
    next_retry_at: float
    parked: bool = False


class DlqStats(msgspec.Struct, frozen=True):
    ready: int  # due now (expired leases included)
    scheduled: int  # waiting for their retry time
    leased: int  # taken by a writer, not yet acked/failed
    parked: int  # gave up after max_attempts; only an operator retries them
    rows: int  # positions in ready+scheduled+leased+parked
    oldest_age_s: float | None


class _Stored(msgspec.Struct, frozen=True, array_like=True):
    """The immutable part of an entry, as stored in ``{dlq}:entry``."""

    source: str
    first_failed_at: float
    batch: HistoryBatch


# The scripts (storage/lua/dlq_*.lua), each run after the helpers of dlq_common.lua.
_SCRIPTS = importlib.resources.files("aisfusion.storage.lua")


def _script(name: str) -> str:
    return (_SCRIPTS / "dlq_common.lua").read_text() + (_SCRIPTS / f"dlq_{name}.lua").read_text()


class DeadLetterQueue:
    """History batches waiting for Postgres, with attempts, retry schedule and leases.

    Retry schedule: after `n` failed attempts an entry waits
    ``min(retry_max_s, retry_base_s * 2**n)``, shortened by up to half at random (jitter) so
    that many entries diverted at once do not come back at once. `push` schedules the first
    retry the same way (``n = attempts``, 0 by default, so about `retry_base_s` from now)
    rather than making the entry due at once: a batch is diverted because its dependency is
    failing, and retrying it immediately would only hammer that dependency.
    """

    def __init__(
        self,
        store: RedisStore,
        *,
        max_attempts: int = 10,
        retry_base_s: float = 1.0,
        retry_max_s: float = 300.0,
        lease_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        if not 0 < retry_base_s <= retry_max_s:
            raise ValueError(
                f"need 0 < retry_base_s <= retry_max_s, got {retry_base_s} and {retry_max_s}"
            )
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, not {lease_s}")
        self._store = store
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.lease_s = lease_s
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._seq = itertools.count()
        self._keys = [store.key("{dlq}", name) for name in _KEY_NAMES]
        self._scripts: dict[str, AsyncScript] = {}
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(_Stored)

    def backoff(self, attempts: int, jitter: float) -> float:
        """Seconds to wait after `attempts` failures; `jitter` in [0, 1) shortens it by up
        to half."""
        # Exponent capped so a large attempt count cannot overflow the float.
        delay = min(self.retry_max_s, self.retry_base_s * 2.0 ** min(attempts, 64))
        return delay * (1.0 - jitter / 2.0)

    # -- writers --------------------------------------------------------------------------

    async def push(self, batch: HistoryBatch, *, error: str, source: str, attempts: int = 0) -> str:
        """Add `batch`; returns its entry id. With ``attempts >= max_attempts`` the entry is
        parked at once (e.g. rows Postgres rejected permanently)."""
        if attempts < 0:
            raise ValueError(f"attempts cannot be negative, not {attempts}")
        now = self._clock()
        entry_id = (
            f"{round(now * 1e6):016x}-{next(self._seq) & 0xFFFFFF:06x}"
            f"-{self._rng.getrandbits(32):08x}"
        )
        blob = self._encoder.encode(_Stored(source, now, batch))
        due, _, parked, age, entry, attempts_key, error_key, rowcount, rows = self._keys
        pipe = self._store.client.pipeline(transaction=True)
        pipe.hset(entry, entry_id, blob)
        pipe.hset(attempts_key, entry_id, attempts)
        pipe.hset(error_key, entry_id, error)
        pipe.hset(rowcount, entry_id, len(batch.positions))
        pipe.incrby(rows, len(batch.positions))
        pipe.zadd(age, {entry_id: now})
        if attempts >= self.max_attempts:
            pipe.zadd(parked, {entry_id: now})
        else:
            pipe.zadd(due, {entry_id: now + self.backoff(attempts, self._rng.random())})
        try:
            await pipe.execute()
        except RedisError as exc:
            raise wrap_redis_error(exc, f"dead-letter batch {batch.batch_id}") from exc
        log.debug("dlq: batch %d is entry %s (%s: %s)", batch.batch_id, entry_id, source, error)
        return entry_id

    async def take_due(self, limit: int) -> list[DlqEntry]:
        """Lease up to `limit` due entries, earliest retry time first. An entry is never leased
        to two takers at once; an unsettled lease expires after `lease_s`."""
        if limit <= 0:
            return []
        now = self._clock()
        reply = await self._eval(
            "take_due",
            [repr(now), limit, repr(now + self.lease_s), self.max_attempts, self._lease_error],
        )
        entries = []
        for i in range(0, len(reply), 5):
            entry_id, score, attempts, error, blob = reply[i : i + 5]
            entry = self._entry(entry_id, blob, attempts, error, score, parked=False)
            if entry is not None:
                entries.append(entry)
        return entries

    async def ack(self, entry_id: str) -> None:
        """The entry's batch is in Postgres: delete the entry (a no-op if it is gone)."""
        if not await self._eval("ack", [entry_id]):
            log.info("dlq: ack of unknown entry %s (settled or cleared already)", entry_id)

    async def fail(self, entry_id: str, error: str) -> bool:
        """Another attempt failed: reschedule the entry with backoff, or park it when it has
        had `max_attempts`. Returns True if the entry is parked.

        An unknown entry (cleared by an operator meanwhile) is logged and returns False.
        """
        now = self._clock()
        jitter = self._rng.random()
        # The script knows the attempt count, Python the schedule: send the retry time for
        # every count that does not park.
        schedule = [repr(now + self.backoff(n, jitter)) for n in range(1, self.max_attempts)]
        result = await self._eval(
            "fail", [entry_id, repr(now), error, self.max_attempts, *schedule]
        )
        if result == -1:
            log.warning("dlq: fail of unknown entry %s (%s)", entry_id, error)
            return False
        if result == 1:
            log.warning(
                "dlq: entry %s parked after %d attempts: %s", entry_id, self.max_attempts, error
            )
        return bool(result == 1)

    # -- operators ------------------------------------------------------------------------

    async def stats(self) -> DlqStats:
        now = repr(self._clock())
        due, leased, parked, age, *_, rows = self._keys
        pipe = self._store.client.pipeline(transaction=True)
        pipe.zcount(due, "-inf", now)
        pipe.zcard(due)
        pipe.zcount(leased, "-inf", now)
        pipe.zcard(leased)
        pipe.zcard(parked)
        pipe.get(rows)
        pipe.zrange(age, 0, 0, withscores=True)
        try:
            ready, due_n, expired, leased_n, parked_n, rows_n, oldest = await pipe.execute()
        except RedisError as exc:
            raise wrap_redis_error(exc, "dead-letter queue stats") from exc
        return DlqStats(
            ready=ready + expired,
            scheduled=due_n - ready,
            leased=leased_n - expired,
            parked=parked_n,
            rows=int(rows_n or 0),
            oldest_age_s=max(0.0, float(now) - oldest[0][1]) if oldest else None,
        )

    async def peek(self, limit: int = 10, *, parked: bool = False) -> list[DlqEntry]:
        """Up to `limit` waiting (ready or scheduled) or parked entries, oldest first, without
        leasing them."""
        if limit <= 0:
            return []
        key = self._keys[2] if parked else self._keys[0]
        _, _, _, _, entry_key, attempts_key, error_key, *_ = self._keys
        client = self._store.client
        try:
            # Ids sort by push time; the set is read whole, which an operator command affords.
            members = cast(list[bytes], await client.zrange(key, 0, -1))  # no WITHSCORES
            ids = sorted(members)[:limit]
            pipe = client.pipeline(transaction=True)
            for entry_id in ids:
                pipe.zscore(key, entry_id)
                pipe.hget(entry_key, entry_id)
                pipe.hget(attempts_key, entry_id)
                pipe.hget(error_key, entry_id)
            reply = await pipe.execute()
        except RedisError as exc:
            raise wrap_redis_error(exc, "peek into the dead-letter queue") from exc
        entries: list[DlqEntry] = []
        for entry_id, i in zip(ids, range(0, len(reply), 4), strict=True):
            score, blob, n, err = reply[i : i + 4]
            if score is None or blob is None:
                continue  # settled since the listing
            entry = self._entry(entry_id, blob, n, err, score, parked=parked)
            if entry is not None:
                entries.append(entry)
        return entries

    async def retry_now(self, entry_id: str | None = None) -> int:
        """Make one entry, or every scheduled and parked entry, due now; returns how many it
        moved. Entries already due and leased ones are left alone. A parked entry keeps its
        attempt count: if the retry fails too, it is parked again at once."""
        return int(await self._eval("retry_now", [repr(self._clock()), entry_id or ""]))

    async def clear(self, *, parked_only: bool = False) -> int:
        """Delete every entry (leased ones included), or only the parked ones; returns how
        many. A writer still holding a deleted entry finds its ack and fail ignored."""
        n = int(await self._eval("clear", ["parked" if parked_only else "all"]))
        if n:
            log.warning("dlq: %d %sentries cleared", n, "parked " if parked_only else "")
        return n

    # -- internals ------------------------------------------------------------------------

    @property
    def _lease_error(self) -> str:
        return f"lease expired after {self.lease_s:g} s (writer crashed or stalled)"

    async def _eval(self, name: str, args: Sequence[Any]) -> Any:
        client = self._store.client
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(_script(name))
        try:
            # The script object loads itself again after a server restart (NOSCRIPT).
            return await script(keys=self._keys, args=list(args), client=client)
        except RedisError as exc:
            raise wrap_redis_error(exc, f"dead-letter queue {name}") from exc

    def _entry(
        self,
        entry_id: bytes | str,
        blob: bytes,
        attempts: Any,
        error: Any,
        score: Any,
        *,
        parked: bool,
    ) -> DlqEntry | None:
        """An entry from its stored parts; None (logged) if its batch cannot be decoded: a
        leased one then expires, counts as an attempt and is parked in the end."""
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        try:
            stored = self._decoder.decode(blob)
        except msgspec.DecodeError:
            log.exception("dlq: entry %s cannot be decoded; skipped", entry_id)
            return None
        return DlqEntry(
            id=entry_id,
            batch=stored.batch,
            attempts=int(attempts or 0),
            error=error.decode() if isinstance(error, bytes) else str(error or ""),
            source=stored.source,
            first_failed_at=stored.first_failed_at,
            next_retry_at=float(score),
            parked=parked,
        )
