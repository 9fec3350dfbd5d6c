"""Reassembly of multi-sentence AIS messages, for one connection.

A long message (type 5 static data, binary broadcasts) is split over up to nine sentences
that share a sequential message id and channel. Sentences from several receivers can
interleave on one aggregated connection, and the one-digit sequence id repeats every ten
messages, so a group is keyed by ``(station, channel, seq_id, tag-group id)``; the source is
implicit because there is one buffer per connection.

NMEA 4.10 feeds often put the station (``s:``) and time (``c:``) only in the tag block of the
first fragment and tie the rest to it with ``g:``; networks that send the tag block on its
own line do the same. So a continuation that names no station joins the most recently opened
group with the same channel, sequence id and tag-group id (even when an older station-less
group has its exact key), and one that names a station joins its own group, else the most
recent such group that named none.
A continuation with no tag block at all that still matches nothing joins the most recently
opened group with its channel and sequence id, whatever that group's tag-group id: a stray
tag block on its own line before an untagged first fragment must not cost the message.
The talker (AI, AB, BS...) is not part of the key: aggregators rewrite it, and recorded feeds
have an ``!ABVDM`` first fragment followed by its ``!AIVDM`` second.

Fragments must arrive in order. A continuation that does not fit the group's next slot is an
orphan; the group keeps waiting, which makes a duplicated continuation harmless. Open groups
are dropped as incomplete after the timeout, when a new first fragment reuses their key, when
the per-connection bound is reached (oldest first) and at end of stream.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from aisfusion.feeds.nmea import Reject

# (station, channel, seq_id, tag-group id)
_Key = tuple[str | None, bytes, bytes, str | None]
# (channel, seq_id, tag-group id): the part of the key a station-less continuation can match
_Loose = tuple[bytes, bytes, str | None]
# (channel, seq_id): the part of the key an untagged continuation can match as a last resort
_Seq = tuple[bytes, bytes]

#: Enough for hundreds of receivers on one aggregated connection, small enough that a flood
#: of unmatched first fragments cannot grow memory without limit.
DEFAULT_MAX_GROUPS = 4096


class Completed(NamedTuple):
    """The joined payload of a complete group and what its tag blocks said."""

    payload: bytes
    fill_bits: int  # from the last fragment: only it carries padding
    station: str | None
    tag_time: float | None


class _Group:
    __slots__ = ("count", "next_num", "parts", "started", "station", "tag_time")

    def __init__(
        self, count: int, payload: bytes, station: str | None, tag_time: float | None, now: float
    ) -> None:
        self.count = count
        self.next_num = 2
        self.parts = [payload]
        self.started = now
        self.station = station
        self.tag_time = tag_time


class FragmentBuffer:
    """Open fragment groups of one connection.

    Incomplete groups and orphan fragments are counted into `rejects`, the owning decoder's
    counter, so that every reason lives in one place.
    """

    def __init__(
        self,
        timeout_s: float,
        rejects: Counter[str],
        *,
        max_groups: int = DEFAULT_MAX_GROUPS,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_groups = max_groups
        self._rejects = rejects
        # Insertion order is start order (a reused key is deleted before it is re-added), so
        # the oldest groups are always at the front: expiry stops at the first young one.
        self._groups: dict[_Key, _Group] = {}
        self._latest: dict[_Loose, _Key] = {}
        self._latest_seq: dict[_Seq, _Key] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def add(
        self,
        *,
        station: str | None,
        channel: bytes,
        seq_id: bytes,
        group: str | None,
        num: int,
        count: int,
        payload: bytes,
        fill_bits: int,
        tag_time: float | None,
        now: float,
    ) -> Completed | None:
        """Add fragment `num` of `count` (``count > 1``); return the message once complete."""
        loose = (channel, seq_id, group)
        key = (station, channel, seq_id, group)
        groups = self._groups
        if num == 1:
            if groups.pop(key, None) is not None:
                self._rejects[Reject.INCOMPLETE_GROUP] += 1
            elif len(groups) >= self.max_groups:
                self._drop(next(iter(groups)))
            groups[key] = _Group(count, payload, station, tag_time, now)
            self._latest[loose] = key
            self._latest_seq[(channel, seq_id)] = key
            return None
        if station is None:
            # The most recently opened group of this channel, sequence id and tag-group id,
            # whatever its station: an older station-less group with the same key (a stray
            # first fragment) must not take the continuation of the one opened after it.
            key = self._latest.get(loose, key)
        g = groups.get(key)
        if g is None:
            fallback = self._latest.get(loose)
            if fallback is not None and (station is None or fallback[0] is None):
                key = fallback
                g = groups[key]
            elif station is None and group is None:
                fallback = self._latest_seq.get((channel, seq_id))
                if fallback is not None:
                    key = fallback
                    g = groups[key]
        if g is None or g.count != count or g.next_num != num:
            self._rejects[Reject.ORPHAN_FRAGMENT] += 1
            return None
        g.parts.append(payload)
        if g.station is None:
            g.station = station
        if g.tag_time is None:
            g.tag_time = tag_time
        if num < count:
            g.next_num = num + 1
            return None
        self._forget(key)
        return Completed(b"".join(g.parts), fill_bits, g.station, g.tag_time)

    def expire(self, now: float) -> int:
        """Drop groups older than the timeout; return how many were dropped."""
        deadline = now - self.timeout_s
        dropped = 0
        groups = self._groups
        while groups:
            key = next(iter(groups))
            if groups[key].started > deadline:
                break
            self._drop(key)
            dropped += 1
        return dropped

    def clear(self) -> int:
        """Drop every open group (end of stream); return how many were dropped."""
        dropped = len(self._groups)
        if dropped:
            self._rejects[Reject.INCOMPLETE_GROUP] += dropped
        self._groups.clear()
        self._latest.clear()
        self._latest_seq.clear()
        return dropped

    def _drop(self, key: _Key) -> None:
        self._forget(key)
        self._rejects[Reject.INCOMPLETE_GROUP] += 1

    def _forget(self, key: _Key) -> None:
        del self._groups[key]
        loose = key[1:]
        if self._latest.get(loose) == key:
            del self._latest[loose]
        seq = key[1:3]
        if self._latest_seq.get(seq) == key:
            del self._latest_seq[seq]
