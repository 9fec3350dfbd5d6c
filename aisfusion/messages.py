"""Messages between the feed side and the actors, and between actors.

Every message is a frozen msgspec Struct. This module is the contract that lets a shard live
in another process later: feeds produce `RawMessage` batches, shards produce `Position` and
`StaticReport` decisions, the batcher produces `HistoryBatch`es for the Postgres writer and the
live writer conflates `Position`s per vessel.
"""

from __future__ import annotations

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
    """Raw messages for one shard, in arrival order."""

    messages: list[RawMessage]


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
    """One bulk write for PostgreSQL, built by the batcher."""

    batch_id: int
    positions: list[Position]
    vessels: list[VesselSeen]


class Tick(msgspec.Struct, frozen=True):
    """Timer message: flush what is due."""

    now: float


class Flush(msgspec.Struct, frozen=True):
    """Control (ask): flush everything pending now and reply when it is written."""
