"""Live record layouts: how one vessel's live position is stored under ``{prefix}vessel:{mmsi}``.

``compact`` (any Redis or Valkey)
    One string: a MessagePack array ``[1, ts_us, lat_e7, lon_e7, sog_x10, cog_x10, hdg, nav,
    src, stn, typ, crc]`` (the leading 1 is the format version; absent values are nil; ``typ``,
    the AIS message type, tells a rehydrated vessel's class to the speed gate; ``crc``, the
    CRC-32 of the payload decided, lets it recognise a second receiver's copy of that
    transmission — records written before these were added have ten or eleven elements and
    still read). Integers in the
    units AIS itself uses or finer (1e-7 degree is 1 cm; AIS resolves 1/600000 degree) pack to
    about 50 bytes, against about 120 for the same fields in a hash: the live picture of the
    world's fleet fits a small server (`bench/redis_memory.py`).
``json`` (servers with the JSON module: Redis Stack, Redis 8, Valkey with valkey-json)
    A JSON document ``{"lat": …, "lon": …, "ts": …, "src": …, "sog": …, "cog": …, "hdg": …,
    "nav": …, "stn": …, "typ": …, "crc": …}`` (absent values left out), which other tools can
    query in place (``JSON.GET P:vessel:219000001 $.lat``). It costs more memory than compact.

Both read back as the same ``dict[str, str]`` of those field names (``ts`` with six decimals),
the view the rest of the service uses (`actors.shard.position_from_record`, the shell).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final, Protocol

import msgspec

from aisfusion.messages import Position
from aisfusion.storage.resp import Arg, Command

log = logging.getLogger(__name__)

LAYOUTS: Final = ("compact", "json")
_VERSION = 1
_msgpack_encode = msgspec.msgpack.Encoder().encode
_msgpack_decode = msgspec.msgpack.Decoder(list[Any]).decode
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(dict[str, Any]).decode


class Layout(Protocol):
    """The commands that write and read records (sent by `RedisStore`, packed or pipelined)."""

    name: str

    def writes(self, records: Sequence[tuple[str, Position]], *, cluster: bool) -> list[Command]:
        """Commands writing each (key, position); in a cluster, one key per command."""
        ...

    def read(self, key: str) -> Command: ...

    def decode(self, reply: Any) -> dict[str, str] | None: ...


def _scaled(value: float | None, factor: float) -> int | None:
    return None if value is None else round(value * factor)


def pack(p: Position) -> bytes:
    """The compact record of a position."""
    return _msgpack_encode(
        (
            _VERSION,
            round(p.ts * 1e6),
            round(p.lat * 1e7),
            round(p.lon * 1e7),
            _scaled(p.sog, 10),
            _scaled(p.cog, 10),
            p.heading,
            p.nav_status,
            p.source,
            p.station,
            p.msg_type,
            p.payload_crc or None,
        )
    )


def unpack(blob: bytes) -> dict[str, str] | None:
    """A compact record as the field view; None if it is not one (logged)."""
    try:
        fields = _msgpack_decode(blob)
        version, ts_us, lat, lon, sog, cog, hdg, nav, src, stn = fields[:10]
        typ = fields[10] if len(fields) > 10 else None
        crc = fields[11] if len(fields) > 11 else None
        record = {
            "lat": repr(lat / 1e7),
            "lon": repr(lon / 1e7),
            "ts": f"{ts_us / 1e6:.6f}",
            "src": str(src),
        }
    except (msgspec.DecodeError, ValueError, TypeError):
        version = None
    if version != _VERSION:
        log.warning("redis: a live record is not in the compact layout: %r", blob[:64])
        return None
    if sog is not None:
        record["sog"] = repr(sog / 10)
    if cog is not None:
        record["cog"] = repr(cog / 10)
    if hdg is not None:
        record["hdg"] = str(hdg)
    if nav is not None:
        record["nav"] = str(nav)
    if stn is not None:
        record["stn"] = str(stn)
    if typ is not None:
        record["typ"] = str(typ)
    if crc is not None:
        record["crc"] = str(crc)
    return record


def document(p: Position) -> bytes:
    """The JSON record of a position."""
    doc: dict[str, Any] = {"lat": p.lat, "lon": p.lon, "ts": p.ts, "src": p.source}
    if p.sog is not None:
        doc["sog"] = p.sog
    if p.cog is not None:
        doc["cog"] = p.cog
    if p.heading is not None:
        doc["hdg"] = p.heading
    if p.nav_status is not None:
        doc["nav"] = p.nav_status
    if p.station is not None:
        doc["stn"] = p.station
    doc["typ"] = p.msg_type
    if p.payload_crc:
        doc["crc"] = p.payload_crc
    return _json_encode(doc)


def from_document(text: bytes | str) -> dict[str, str] | None:
    """A JSON record as the field view; None if it is not one (logged)."""
    try:
        doc = _json_decode(text)
        record = {"ts": f"{float(doc['ts']):.6f}"}
        for name in ("lat", "lon", "sog", "cog"):
            if doc.get(name) is not None:
                record[name] = repr(float(doc[name]))
        for name in ("hdg", "nav", "typ", "crc"):
            if doc.get(name) is not None:
                record[name] = str(int(doc[name]))
        for name in ("src", "stn"):
            if doc.get(name) is not None:
                record[name] = str(doc[name])
    except (msgspec.DecodeError, KeyError, ValueError, TypeError):
        log.warning("redis: a live record is not a JSON record: %r", text[:64])
        return None
    return record


class CompactLayout:
    name = "compact"

    def writes(self, records: Sequence[tuple[str, Position]], *, cluster: bool) -> list[Command]:
        if cluster:  # keys hash to different slots: one SET each
            return [("SET", key, pack(p)) for key, p in records]
        mset: list[Arg] = ["MSET"]
        for key, p in records:
            mset += (key, pack(p))
        return [mset]

    def read(self, key: str) -> Command:
        return ("GET", key)

    def decode(self, reply: Any) -> dict[str, str] | None:
        return unpack(reply) if isinstance(reply, bytes) else None


class JsonLayout:
    name = "json"

    def writes(self, records: Sequence[tuple[str, Position]], *, cluster: bool) -> list[Command]:
        # One JSON.SET per key: JSON.MSET is not in every JSON module version.
        return [("JSON.SET", key, "$", document(p)) for key, p in records]

    def read(self, key: str) -> Command:
        return ("JSON.GET", key)

    def decode(self, reply: Any) -> dict[str, str] | None:
        return from_document(reply) if isinstance(reply, bytes | str) else None


def layout(name: str) -> Layout:
    if name == "compact":
        return CompactLayout()
    if name == "json":
        return JsonLayout()
    raise ValueError(f"unknown live record layout {name!r} (known: {', '.join(LAYOUTS)})")
