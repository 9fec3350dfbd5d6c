"""One vessel's entity: its fusion window, live decision and static data.

A vessel is a virtual actor: a plain object owned by exactly one shard thread, so every decision
about it is atomic without locks. For each raw message of its MMSI, in order (DESIGN.md,
"Fusion"):

1. validate the receive time (finite, not too far in the future, not too late);
2. drop a duplicate of the same transmission before paying for the decode: the payload heard
   again within the dedup window (by receive time or by arrival) is one observation, and a
   duplicate from another source is a witness that vouches for it;
3. decode (full-length position reports by hand, the rest with pyais);
4. treat "not available" values as absent;
5. cross-check the receive time against the message's own UTC second: a mismatch beyond the
   tolerance is the receiver's clock error, the time is corrected to the UTC second;
6. gate: a position implying an impossible speed from the live position (by class) is a jump
   and waits in quarantine until another source corroborates it. It counts against its source
   only once a second source has vouched for the track it jumps from: until then, whichever
   receiver was heard first may be the wrong one;
7. accept: every accepted observation goes to history; among the observations newer than the
   live position, the best score (source weight x quality x freshness x corroboration)
   becomes live.
   A decision is emitted only when it changes and never moves back in time.

Every message also leaves an outcome for its source (agreed, jump, clock, witness, ...), which
the shard tallies for the source-quality actor.
"""

from __future__ import annotations

import math
import zlib
from time import perf_counter
from typing import Any, TypeVar

import msgspec
from pyais.bit_vector import bit_vector
from pyais.messages import MSG_CLASS

from aisfusion.actors import fusion
from aisfusion.actors.batch import Batch, Tally
from aisfusion.actors.sources import source_key
from aisfusion.actors.static import fuse_static, plain
from aisfusion.config import FusionConfig
from aisfusion.feeds.payload import position_fields
from aisfusion.messages import Position, RawMessage, StaticReport

POSITION_TYPES = frozenset({1, 2, 3, 9, 18, 19, 27})
STATIC_TYPES = frozenset({5, 19, 24})
# History is keyed by (mmsi, ts), so distinct observations with one time (whole-second tag
# blocks, two receivers' arrival times) are spread by 1 µs. One stream's arrival times are
# distinct and ordered already (feeds/decoder.py), so a message decided again (redelivered by
# the log) gets the time it got the first time.
_US = 1_000_000
# AIS "not available" sentinels: absent values, not measurements. SAR aircraft (type 9) report
# speed in whole knots and long-range reports (type 27) use coarser fields.
_SOG_NA = {9: 1023.0, 27: 63.0}
_COG_NA = {27: 511.0}
_SOG_NA_DEFAULT = 102.3
_COG_NA_DEFAULT = 360.0
_HEADING_NA = 511
_MINUTE = 60.0
_PENDING_MAX = 8  # accepted observations newer than the live one that lost on score
_EMITTED_MAX = 32  # recent history times, to keep (mmsi, ts) unique


class Observation(msgspec.Struct, gc=False, eq=False):
    """One accepted (or quarantined) position and the sources that vouch for it.

    Plain data out of the garbage collector's sight (`gc=False`: it never references back to
    anything that references it), as is `_Seen`: one of each is made per message, and tracked
    objects would make every collection walk the whole fleet's windows.
    """

    position: Position
    ts: float
    support: tuple[str, ...]  # distinct sources; the first is the one it came from
    second: int  # its UTC second field (60: not available)
    msg_type: int


_T = TypeVar("_T")


def _appended(window: tuple[_T, ...], item: _T, size: int) -> tuple[_T, ...]:
    """`window` with `item` added, keeping the newest `size` (the windows are tuples)."""
    return (*window[max(0, len(window) + 1 - size) :], item)


def _observation(position: Position, key: str, second: int, msg_type: int) -> Observation:
    return Observation(position, position.ts, (key,), second, msg_type)


class _Seen(msgspec.Struct, gc=False, eq=False):
    """One entry of the dedup window: a payload, when it came, who first, what it became."""

    payload: bytes
    ts: float
    arrival: float
    key: str
    feed: str
    obs: Observation | None = None


class Vessel:
    """State of one MMSI, touched only by its shard's thread."""

    __slots__ = (
        "emitted",
        "emitted_at",
        "first_seen",
        "heard",
        "interval_s",
        "last",
        "last_seen",
        "live",
        "mmsi",
        "newest_ts",
        "pending",
        "quarantine",
        "quarantine_size",
        "recent",
        "static",
        "touched",
        "votes",
        "vouched",
        "window_size",
    )

    def __init__(self, mmsi: int, window_size: int, quarantine_size: int = 4) -> None:
        self.mmsi = mmsi
        # The windows are tuples, replaced on each change: a tuple of untracked objects drops
        # out of the garbage collector's sight, so a full collection does not walk every
        # vessel's windows (heap.py): 20,000 vessels took 46 ms with deques and lists, 14 with
        # tuples for recent and emitted.
        self.window_size = window_size
        self.recent: tuple[_Seen, ...] = ()
        # A restored decision's transmission, known by its payload's CRC only (restore).
        self.heard: tuple[int, _Seen] | None = None
        self.live: Observation | None = None
        self.last: Position | None = None  # the live decision
        # Whether a second source has vouched for the track the live decision continues.
        self.vouched = False
        self.pending: tuple[Observation, ...] = ()
        self.quarantine_size = quarantine_size
        self.quarantine: tuple[Observation, ...] = ()
        self.emitted: tuple[float, ...] = ()
        self.emitted_at: tuple[tuple[float, float], ...] = ()  # (lat, lon) of each
        self.newest_ts = -math.inf
        self.static: StaticReport | None = None
        self.votes: dict[str, Any] | None = None
        self.first_seen = math.inf
        self.last_seen = -math.inf
        self.touched = 0.0  # shard clock of the last message (passivation)
        # Nominal reporting interval from the live decision: how long idle is "gone".
        self.interval_s = 180.0

    # -- restore ---------------------------------------------------------------------------

    def restore(self, position: Position) -> None:
        """Take a saved decision as the live one (rehydration): it gates and is never undone."""
        key = source_key(position.source, position.station)
        self.live = _observation(position, key, fusion.SECOND_NA, position.msg_type)
        self.last = position
        self.vouched = True  # a decision of the fused picture
        self.interval_s = fusion.report_interval_s(
            position.msg_type, position.sog, position.nav_status
        )
        self.newest_ts = max(self.newest_ts, position.ts)
        self.first_seen = min(self.first_seen, position.ts)
        self.last_seen = max(self.last_seen, position.ts)
        # The dedup window died with the previous owner; the live record keeps the decided
        # payload's CRC, so another receiver's copy of that transmission is still a witness
        # and not a new report (a second row, a second later).
        if position.payload_crc:
            seen = _Seen(b"", position.ts, position.arrival, key, position.source, self.live)
            self.heard = (position.payload_crc, seen)

    # -- ingest ----------------------------------------------------------------------------

    def ingest(self, msg: RawMessage, b: Batch) -> None:
        """Validate, dedup, decode, gate and decide one message; results go into `b`."""
        started = perf_counter()
        cfg = b.actors
        ts = msg.received_at
        key = source_key(msg.source, msg.station)
        if not math.isfinite(ts):
            b.rejects["bad_time"] += 1
            b.tally(key).grade("bad_time", 0.0)
            return
        if ts > b.now + cfg.max_future_skew_s:
            b.rejects["future_time"] += 1
            b.tally(key).grade("future_time", 0.0)
            return
        if ts < b.now - cfg.max_lateness_s:
            b.rejects["too_late"] += 1
            b.tally(key).outcomes["too_late"] += 1
            return
        window = cfg.dedup_window_s
        # By arrival too, for receivers whose clocks are off; but the same payload is sent
        # again by a vessel that does not move, a whole minute later (its UTC second field
        # cycles every minute): times that far apart are two transmissions.
        arrival_window = window if window < _MINUTE - window else 0.0
        payload = msg.payload
        for seen in self.recent:
            if seen.payload == payload and (
                abs(ts - seen.ts) <= window
                or (
                    abs(msg.arrival - seen.arrival) <= arrival_window
                    and abs(ts - seen.ts) < _MINUTE - window
                )
            ):
                b.rejects["duplicate"] += 1
                self._witness(seen, msg, key, ts, b)
                return
        heard = self.heard
        if heard is not None:
            crc, seen = heard
            if ts - seen.ts > window:
                self.heard = None  # no copy of it can come any more
            elif key != seen.key and abs(ts - seen.ts) <= window and zlib.crc32(payload) == crc:
                # Its own receiver's copy goes on: redelivered, it may not be in history yet
                # (the live record can be written before the history row is committed).
                b.rejects["duplicate"] += 1
                self._witness(seen, msg, key, ts, b)
                return
        seen = _Seen(payload, ts, msg.arrival, key, msg.source)
        self.recent = _appended(self.recent, seen, self.window_size)
        deduped = perf_counter()
        try:
            # Full-length class A/B position reports (most of the traffic) by hand; the rest
            # with pyais.
            fields = position_fields(payload, msg.fill_bits, msg.msg_type)
            if fields is None:
                decoded = MSG_CLASS[msg.msg_type].from_vector(bit_vector(payload, msg.fill_bits))
                fields = decoded.asdict()
        except Exception:  # any pyais failure is one counted bad message, never raised
            b.rejects["decode_error"] += 1
            return
        finally:
            decoded_at = perf_counter()
            if b.stages is not None:
                b.stages[0] += deduped - started
                b.stages[1] += decoded_at - deduped
        try:
            self._decoded(msg, fields, ts, key, seen, b)
        finally:
            if b.stages is not None:
                b.stages[2] += perf_counter() - decoded_at

    def _decoded(
        self, msg: RawMessage, f: dict[str, Any], ts: float, key: str, seen: _Seen, b: Batch
    ) -> None:
        if f.get("mmsi") != self.mmsi:
            # pyais decodes truncated payloads leniently into empty fields.
            b.rejects["decode_error"] += 1
            return
        self.first_seen = min(self.first_seen, ts)
        self.last_seen = max(self.last_seen, ts)
        kind = msg.msg_type
        if kind in POSITION_TYPES:
            self._position(msg, f, ts, key, seen, b)
        if kind in STATIC_TYPES:
            self._static(kind, f, ts, b)
        elif kind not in POSITION_TYPES:
            b.rejects["not_vessel_data"] += 1

    # -- witnesses ---------------------------------------------------------------------------

    def _witness(self, seen: _Seen, msg: RawMessage, key: str, ts: float, b: Batch) -> None:
        """A duplicate: the same transmission heard again. From the same source it is no new
        evidence; from another source it vouches for the observation (once per source)."""
        tally = b.tally(key)
        obs = seen.obs
        if key != seen.key:
            b.overlap[(msg.source, seen.feed)] += 1
        if key == seen.key or (obs is not None and key in obs.support):
            tally.outcomes["repeat"] += 1
            return
        if obs is None:  # not a position, or one that was rejected
            tally.outcomes["witness"] += 1
            return
        offset = fusion.clock_offset_s(ts, obs.second) if msg.has_tag_time else None
        if offset is not None:
            tally.skew_n += 1
            tally.skew_sum += offset
        if offset is not None and abs(offset) > b.fusion.clock_tolerance_s:
            tally.grade("clock", 0.0)
        else:
            tally.grade("witness", 1.0)
        obs.support = (*obs.support, key)
        if obs is self.live:
            self.vouched = True
        if obs in self.quarantine:
            self._release(obs, b)
        elif obs is not self.live and obs in self.pending:
            self._decide(b)

    # -- positions ---------------------------------------------------------------------------

    def _position(
        self, msg: RawMessage, f: dict[str, Any], ts: float, key: str, seen: _Seen, b: Batch
    ) -> None:
        lat, lon = f.get("lat"), f.get("lon")
        if lat is None or lon is None:
            b.rejects["decode_error"] += 1
            return
        if lat == 91.0 or lon == 181.0:
            b.rejects["no_position"] += 1
            return
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            b.rejects["bad_position"] += 1
            return
        cfg = b.fusion
        tally = b.tally(key)
        kind = msg.msg_type
        second = f.get("second", fusion.SECOND_NA)
        second = second if isinstance(second, int) else fusion.SECOND_NA
        graded = False
        if msg.has_tag_time:
            offset = fusion.clock_offset_s(ts, second)
            if offset is not None:
                tally.skew_n += 1
                tally.skew_sum += offset
                # A position is timed by its transmission: the vessel's own UTC second, on
                # the receiver's minute. So every receiver's copy of one transmission (and a
                # redelivery of it to a worker that lost the dedup window) is the same
                # (mmsi, ts) row in history, stored once.
                ts -= offset
                if abs(offset) > cfg.clock_tolerance_s:
                    tally.grade("clock", 0.0)  # the receiver's clock is wrong, not the vessel's
                    graded = True
        ts = round(ts * _US) / _US
        if ts in self.emitted and self.emitted_at[self.emitted.index(ts)] == (lat, lon):
            # A report in history already, heard again past the dedup window (a receiver
            # far behind the others, one that re-encodes, a redelivery): the same row, not
            # a distinct observation to give the next microsecond.
            b.rejects["duplicate"] += 1
            tally.outcomes["repeat"] += 1
            return
        ts = self._unique_ts(ts)
        tally.last_ts = max(tally.last_ts, ts)
        sog, cog, heading = f.get("speed"), f.get("course"), f.get("heading")
        position = Position(
            mmsi=self.mmsi,
            ts=ts,
            lat=lat,
            lon=lon,
            sog=None if sog is None or sog >= _SOG_NA.get(kind, _SOG_NA_DEFAULT) else float(sog),
            cog=None if cog is None or cog >= _COG_NA.get(kind, _COG_NA_DEFAULT) else float(cog),
            heading=None if heading is None or heading == _HEADING_NA else int(heading),
            nav_status=plain(f["status"]) if "status" in f else None,
            msg_type=kind,
            source=msg.source,
            station=msg.station,
            arrival=msg.arrival,
            epoch=b.epoch(self.mmsi),
            payload_crc=zlib.crc32(msg.payload),
        )
        obs = _observation(position, key, second, kind)
        seen.obs = obs
        live = self.live
        if live is not None and self._is_jump(live, obs, b):
            partner = self._corroborating(obs, b)
            if partner is None:
                self.quarantine = _appended(self.quarantine, obs, self.quarantine_size)
                b.rejects["jump"] += 1
                # Only another source can contradict a source: a jump from the source's own
                # last position may as well be the vessel's (bad GPS, a shared MMSI). And only
                # a track two sources vouch for convicts it: against one other source's word
                # either may be wrong (whichever receiver is heard first seeds a track).
                if key in live.support or not self.vouched:
                    tally.outcomes["jump"] += 1
                elif not graded:
                    tally.grade("jump", 0.0)
                return
            # Each vouches for the other; a quarantined partner is accepted too.
            obs.support = (*obs.support, partner.support[0])
            if key not in partner.support:
                partner.support = (*partner.support, key)
            if partner in self.quarantine:
                self._release(partner, b, decide=False)  # decided below, with `obs`
            if not graded:
                tally.grade("corroborated", 1.0)
                graded = True
        if not graded:
            self._grade(live, obs, tally, cfg)
        self._accept(obs, b)

    def _unique_ts(self, ts: float) -> float:
        while ts in self.emitted:
            ts = (round(ts * _US) + 1) / _US
        return ts

    def _gates(self, live: Observation, b: Batch) -> bool:
        """A live position gates others unless only demoted sources vouch for it."""
        return not b.demoted or any(k not in b.demoted for k in live.support)

    def _is_jump(self, live: Observation, obs: Observation, b: Batch) -> bool:
        ref, p = live.position, obs.position
        dt = p.ts - ref.ts
        if abs(dt) > fusion.track_timeout_s(self.interval_s, b.fusion) or not self._gates(live, b):
            return False
        return self._implausible(ref, p, obs.msg_type, b.fusion)

    def _implausible(self, a: Position, p: Position, msg_type: int, cfg: FusionConfig) -> bool:
        ship_type = self.static.ship_type if self.static is not None else None
        limit = fusion.speed_limit_kn(msg_type, ship_type, a.sog, cfg)
        dist = fusion.distance_m(a.lat, a.lon, p.lat, p.lon)
        return fusion.implied_speed_kn(dist, p.ts - a.ts, cfg.jump_allowance_m) > limit

    def _corroborating(self, obs: Observation, b: Batch) -> Observation | None:
        """Another source's quarantined or pending observation that puts the vessel where
        `obs` does: within the agreement tolerance once dead-reckoned to its time, and no
        further away in time than the gate looks back."""
        cfg = b.fusion
        own = obs.support[0]
        p = obs.position
        for other in (*self.quarantine, *self.pending):
            if own in other.support:
                continue
            q = other.position
            dt = p.ts - q.ts
            interval = fusion.report_interval_s(other.msg_type, q.sog, q.nav_status)
            if abs(dt) > fusion.track_timeout_s(interval, cfg):
                continue
            lat, lon = fusion.dead_reckon(q.lat, q.lon, q.sog, q.cog, dt)
            residual = fusion.distance_m(lat, lon, p.lat, p.lon)
            if fusion.agreement(residual, dt, cfg) >= 1.0:
                return other
        return None

    def _release(self, obs: Observation, b: Batch, *, decide: bool = True) -> None:
        """A quarantined jump was corroborated: accept it after all."""
        self.quarantine = tuple(o for o in self.quarantine if o is not obs)
        b.corroborated += 1
        b.tally(obs.support[0]).grade("corroborated", 1.0)
        self._accept(obs, b, decide=decide)

    def _grade(
        self, live: Observation | None, obs: Observation, tally: Tally, cfg: FusionConfig
    ) -> None:
        """Agreement of an accepted observation with the live decision of other sources
        (a disagreement counts against it only on a track two sources vouch for)."""
        if live is None or obs.support[0] in live.support:
            tally.outcomes["ungraded"] += 1
            return
        ref, p = live.position, obs.position
        dt = p.ts - ref.ts
        if abs(dt) > cfg.agree_horizon_s:
            tally.outcomes["ungraded"] += 1
            return
        lat, lon = fusion.dead_reckon(ref.lat, ref.lon, ref.sog, ref.cog, dt)
        value = fusion.agreement(fusion.distance_m(lat, lon, p.lat, p.lon), dt, cfg)
        if value >= 0.5:
            tally.grade("agreed", value)
            self.vouched = True  # another source puts the vessel on the same track
        elif self.vouched:
            tally.grade("disagreed", value)
        else:
            tally.outcomes["disagreed"] += 1  # one source's word against another's

    def _accept(self, obs: Observation, b: Batch, *, decide: bool = True) -> None:
        p = obs.position
        b.history.append(p)
        self.emitted = _appended(self.emitted, p.ts, _EMITTED_MAX)
        self.emitted_at = _appended(self.emitted_at, (p.lat, p.lon), _EMITTED_MAX)
        self.newest_ts = max(self.newest_ts, p.ts)
        live = self.live
        if live is not None and p.ts <= live.ts:
            b.tally(obs.support[0]).outcomes["late"] += 1
            return
        self.pending = (*self.pending, obs)
        if len(self.pending) > _PENDING_MAX:
            self.pending = tuple(sorted(self.pending, key=lambda o: o.ts)[1:])
        if decide:
            self._decide(b)

    def _score(self, obs: Observation, t_ref: float, b: Batch) -> float:
        support = obs.support
        weight = b.weight(support[0]) if len(support) == 1 else max(map(b.weight, support))
        return fusion.score(weight, len(support), t_ref - obs.ts, b.fusion)

    def _decide(self, b: Batch) -> None:
        """Make the best-scoring observation newer than the live one live (if any is)."""
        live, pending = self.live, self.pending
        if not pending:
            return
        if len(pending) == 1 and (
            live is None
            or (
                # Newer, at least as trusted and as corroborated: no need to score.
                len(pending[0].support) >= len(live.support)
                and b.weight(pending[0].support[0]) >= max(map(b.weight, live.support))
            )
        ):
            best: Observation | None = pending[0]
        else:
            t_ref = pending[0].ts if len(pending) == 1 else max(o.ts for o in pending)
            best, best_score = live, -1.0
            if live is not None:
                best_score = self._score(live, t_ref, b)
            for obs in pending:
                s = self._score(obs, t_ref, b)
                if s > best_score or (s == best_score and best is not None and obs.ts > best.ts):
                    best, best_score = obs, s
        if best is live or best is None:
            return
        # The track goes on (vouched as before) unless the old one went stale.
        same_track = live is not None and abs(best.ts - live.ts) <= fusion.track_timeout_s(
            self.interval_s, b.fusion
        )
        self.vouched = (same_track and self.vouched) or len(best.support) > 1
        self.live = best
        self.last = best.position
        self.interval_s = fusion.report_interval_s(
            best.msg_type, best.position.sog, best.position.nav_status
        )
        self.pending = tuple(o for o in pending if o.ts > best.ts) if len(pending) > 1 else ()
        b.live.append(best.position)

    # -- static and voyage data ------------------------------------------------------------

    def _static(self, msg_type: int, f: dict[str, Any], ts: float, b: Batch) -> None:
        static, self.votes = fuse_static(self.mmsi, self.static, self.votes, msg_type, f, ts)
        if static is None:  # a truncated report carried no static field
            b.rejects["decode_error"] += 1
            return
        b.statics += 1
        self.static = static

    # -- queries ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        live = self.live
        return {
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "support": list(live.support) if live is not None else [],
            "vouched": self.vouched,
            "window": len(self.recent),
            "pending": len(self.pending),
            "quarantine": [
                {"ts": o.ts, "lat": o.position.lat, "lon": o.position.lon, "source": o.support[0]}
                for o in self.quarantine
            ],
            "unconfirmed": dict(self.votes) if self.votes else {},
        }
