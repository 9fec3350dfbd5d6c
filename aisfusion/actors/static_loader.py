"""Static data of new vessel actors, read back from the `vessels` table in PostgreSQL.

A vessel actor created without static data in memory (after a restart, or once its shard's
recently-parked cache has forgotten it) would start with none: until its next static report
(6 minutes for a Class A ship) a high-speed craft would be gated as a ship, and the first
report after a restart would change its name, call sign, IMO or ship type unconfirmed.

Reads never hold up ingest: the shard hands over the MMSIs it creates without static data, one
read per shard is in flight on the storage loop, and its answer is told back to the shard
(`StaticLoaded`), which applies it on its own thread. Until it lands (milliseconds) the vessel
gates without its ship type; a static report heard in between is newer and wins. After a failed
read, new vessels start without static data for a while (counted, no read).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
import pykka

from aisfusion.actors.vessel import Vessel
from aisfusion.messages import StaticReport
from aisfusion.metrics import Metrics
from aisfusion.storage.bridge import AsyncBridge
from aisfusion.storage.postgres import PostgresStore

log = logging.getLogger(__name__)

_TIMEOUT_S = 5.0
_BACKOFF_S = 5.0  # after a failed read, new vessels start without static data this long
_FIELDS = (
    "name",
    "callsign",
    "imo",
    "ship_type",
    "destination",
    "to_bow",
    "to_stern",
    "to_port",
    "to_starboard",
)


class StaticLoaded(msgspec.Struct, frozen=True):
    """Internal (tell, from the storage loop): what PostgreSQL knows of `asked` vessels:
    mmsi -> (static data or None, first seen); `error` when the read failed."""

    asked: int
    found: dict[int, tuple[StaticReport | None, float]]
    error: str | None = None


def static_from_row(row: Mapping[str, Any]) -> StaticReport | None:
    """A `vessels` row (`PostgresStore.vessels`) as static data as of its last sighting; None
    when it has no static field."""
    fields = {name: row[name] for name in _FIELDS if row.get(name) is not None}
    if not fields:
        return None
    return StaticReport(mmsi=row["mmsi"], ts=row["last_seen"], **fields)


class StaticLoader:
    """One shard's reads of static data; used only from that shard's thread."""

    def __init__(
        self,
        store: PostgresStore,
        bridge: AsyncBridge,
        metrics: Metrics,
        count: Callable[[str, int], None],
        shard: int,
    ) -> None:
        self._store = store
        self._bridge = bridge
        self._metrics = metrics
        self._count = count  # the shard's statistics
        self._shard = shard
        self._wanted: set[int] = set()  # created without static data, not yet asked
        self._loading = False
        self._retry_at = -math.inf

    def want(self, mmsis: Iterable[int], now: float, reply_to: pykka.ActorRef[Any]) -> None:
        """Ask for the static data of `mmsis` (now, or after the read in flight)."""
        self._wanted.update(mmsis)
        self._read(now, reply_to)

    def loaded(
        self,
        message: StaticLoaded,
        vessels: Mapping[int, Vessel],
        now: float,
        reply_to: pykka.ActorRef[Any],
    ) -> None:
        """Apply an answer to the vessels still hosted, then ask for those waiting since."""
        self._loading = False
        m = self._metrics
        if message.error is not None:
            self._retry_at = now + _BACKOFF_S
            m.vessel_static_loads.labels("error").inc(message.asked)
            self._count("static_errors", message.asked)
            log.warning(
                "shard %d: cannot read the static data of %d vessels from PostgreSQL, "
                "new vessels start without it for %.0f s: %s",
                self._shard,
                message.asked,
                _BACKOFF_S,
                message.error,
            )
        else:
            hits = 0
            for mmsi, (static, first_seen) in message.found.items():
                vessel = vessels.get(mmsi)
                if vessel is None:
                    continue  # passivated since: the next activation asks again
                vessel.first_seen = min(vessel.first_seen, first_seen)
                if static is not None and vessel.static is None:  # else a newer report won
                    vessel.static = static
                    hits += 1
            m.vessel_static_loads.labels("hit").inc(hits)
            m.vessel_static_loads.labels("miss").inc(message.asked - hits)
            self._count("static_hits", hits)
            self._count("static_misses", message.asked - hits)
        self._read(now, reply_to)

    def _read(self, now: float, reply_to: pykka.ActorRef[Any]) -> None:
        if self._loading or not self._wanted:
            return
        mmsis = sorted(self._wanted)
        self._wanted.clear()
        if now < self._retry_at:
            self._count("static_skipped", len(mmsis))  # PostgreSQL failed a moment ago
            return
        read = asyncio.wait_for(self._store.vessels(mmsis, include_deleted=True), _TIMEOUT_S)
        try:
            future = self._bridge.submit(read)
        except RuntimeError:  # the storage loop is stopping with the service
            return
        self._loading = True

        def answered(done: concurrent.futures.Future[dict[int, dict[str, Any]]]) -> None:
            try:
                rows = done.result()
            except BaseException as exc:  # timeout, cancelled, PostgreSQL down: counted
                answer = StaticLoaded(len(mmsis), {}, repr(exc))
            else:
                found = {m: (static_from_row(r), r["first_seen"]) for m, r in rows.items()}
                answer = StaticLoaded(len(mmsis), found)
            with contextlib.suppress(pykka.ActorDeadError):
                reply_to.tell(answer)

        future.add_done_callback(answered)
