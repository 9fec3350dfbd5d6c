"""Messages between the feed side and the actors, and between actors.

Every message is a frozen msgspec Struct. This module is the contract that lets a shard live
in another process later: feeds produce `RawMessage` batches, shards produce `Position` and
`StaticReport` decisions, the batcher produces `HistoryBatch`es for the Postgres writer and the
live writer conflates `Position`s per vessel.
"""

from __future__ import annotations

from typing import Any

import msgspec


class RawMessage(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One complete AIS message (fragments already joined), not yet decoded.

    `mmsi` and `msg_type` come from the first 38 bits of the payload, so routing and
    de-duplication never pay for a full decode.
    """

    mmsi: int
    msg_type: int
    payload: bytes  # armored 6-bit payload, all fragments joined
    fill_bits: int
    source: str  # configured feed name
    station: str | None  # tag-block s: (receiver station) when present
    received_at: float  # UNIX seconds: tag-block c: when present, else arrival time
    arrival: float  # UNIX seconds the line was read from the socket
    has_tag_time: bool = False


class RawBatch(msgspec.Struct, frozen=True, gc=False):
    """Raw messages for one shard, in arrival order.

    `epochs` (worker processes): the ownership epoch (the revision of its lease) of each log
    partition (``mmsi % partitions``) these came from, stored with every position decided from
    them; None without the log.

    `now` (`aisfusion import`): the stream's own clock, the newest receive time read so far
    (a watermark), against which the shard judges lateness instead of the wall clock; None:
    the shard's clock.
    """

    messages: list[RawMessage]
    epochs: dict[int, int] | None = None
    partitions: int = 0
    now: float | None = None


class Position(msgspec.Struct, frozen=True, gc=False):
    """A decided position of one vessel: one row of history, one live record."""

    mmsi: int
    ts: float  # UNIX seconds, microsecond resolution
    lat: float
    lon: float
    sog: float | None  # knots
    cog: float | None  # degrees true
    heading: int | None  # degrees true
    nav_status: int | None
    msg_type: int
    source: str
    station: str | None
    arrival: float  # when the line was read from the socket, for latency figures
    epoch: int = 0  # the deciding worker's ownership epoch of the partition (0: no log)
    # CRC-32 of the payload it was decided from (0: unknown), kept in the live record: the
    # next owner of the vessel tells a second receiver's copy of it from a new report.
    payload_crc: int = 0


class StaticReport(msgspec.Struct, frozen=True, gc=False):
    """Static and voyage data of one vessel (types 5, 19 static part, 24)."""

    mmsi: int
    ts: float
    name: str | None = None
    callsign: str | None = None
    imo: int | None = None
    ship_type: int | None = None
    destination: str | None = None
    to_bow: int | None = None
    to_stern: int | None = None
    to_port: int | None = None
    to_starboard: int | None = None


class VesselSeen(msgspec.Struct, frozen=True, gc=False):
    """A vessel's activity summary for the `vessels` table (first/last seen, static data)."""

    mmsi: int
    first_seen: float
    last_seen: float
    static: StaticReport | None


class Decisions(msgspec.Struct, frozen=True, gc=False):
    """What one shard decided from one RawBatch: downstream to batcher and live writer."""

    positions: list[Position]
    vessels: list[VesselSeen]


class HistoryBatch(msgspec.Struct, frozen=True, gc=False):
    """One bulk write for PostgreSQL, built by the batcher.

    `upto` (worker processes only): once this batch and every earlier one are safe, every log
    message with a mark up to it is committed and may be acknowledged.
    """

    batch_id: int
    positions: list[Position]
    vessels: list[VesselSeen]
    upto: int = 0


class Mark(msgspec.Struct, frozen=True, gc=False):
    """Log intake → shards → batcher: the log messages numbered up to `upto` are routed.

    A shard passes it on behind the decisions of those messages (mailboxes are FIFO) with its
    own index as `shard`; the batcher waits for every shard's mark before it lets a batch carry
    the number (`HistoryBatch.upto`).
    """

    upto: int
    shard: int = -1


class Release(msgspec.Struct, frozen=True):
    """Control (ask), log intake → shards: these partitions went to another worker; drop their
    vessels, whose decisions now belong to the new owner (rehydrated there from Redis)."""

    partitions: frozenset[int]
    of: int  # the partition count (partition = MMSI % of)


class Claim(msgspec.Struct, frozen=True):
    """Log intake → shards, before a partition is consumed here: of its vessels, these have a
    live record in Redis (read after the lease was taken), so each is rehydrated from it when
    it first reports here; the others are new."""

    known: frozenset[int]


class Tick(msgspec.Struct, frozen=True):
    """Timer message: flush what is due."""

    now: float


class Flush(msgspec.Struct, frozen=True):
    """Control (ask): flush what is pending now; the reply says how much is still pending.

    With `everything`, batches waiting in the dead-letter queue or the spool count as pending
    even while Postgres is down (used to wait until all accepted data is in Postgres).
    """

    everything: bool = False


# -- supervision of the storage writers ---------------------------------------------------


class WriteBatch(msgspec.Struct, frozen=True, gc=False):
    """Supervisor → Postgres writer: write this batch; `ticket` identifies it in the reply."""

    ticket: int
    batch: HistoryBatch


class BatchWritten(msgspec.Struct, frozen=True, gc=False):
    """Writer → supervisor: the batch is committed (rows rejected permanently are returned)."""

    ticket: int
    inserted: int
    seconds: float
    rejected: HistoryBatch | None = None
    rejected_error: str | None = None


class BatchFailed(msgspec.Struct, frozen=True, gc=False):
    """Writer → supervisor: the batch was not written (transient: try again later)."""

    ticket: int
    error: str


class ChildExited(msgspec.Struct, frozen=True):
    """Supervised actor → its supervisor: it crashed (pykka `on_failure`). `ref` is the
    incarnation that crashed."""

    name: str
    error: str
    ref: Any = None


# -- source quality ------------------------------------------------------------------------


class SourceTally(msgspec.Struct, frozen=True, gc=False):
    """What one shard's vessels made of one source's messages in one batch.

    `scored`/`score_sum` are graded outcomes in [0, 1] (1: agreed with the fused track, 0:
    rejected as a jump or a clock error); `outcomes` counts every outcome by name; `skew_*`
    sum the receive time minus the message's own UTC second (wrapped to ±30 s).
    """

    source: str
    scored: int
    score_sum: float
    outcomes: dict[str, int]
    skew_n: int = 0
    skew_sum: float = 0.0
    last_ts: float = 0.0  # newest observation time from this source in the batch


class SourceOutcomes(msgspec.Struct, frozen=True, gc=False):
    """Shard → source-quality actor: the tallies of one batch."""

    tallies: list[SourceTally]


class SourceWeights(msgspec.Struct, frozen=True, gc=False):
    """Source-quality actor → shards: the effective weight (base weight x quality, reduced
    while demoted) of every known source. Each snapshot is a new dict that nobody mutates:
    a shard swaps its reference, so no lock is needed."""

    version: int
    weights: dict[str, float]
    demoted: frozenset[str] = frozenset()
