"""Bytes in, complete raw AIS messages out: the framing of one feed connection.

`FeedDecoder` owns everything that is per connection: the partial line at the end of the last
chunk, a tag block sent on its own line, and the open fragment groups. It never raises on
input: every line that yields nothing is counted under a `Reject` reason. Counters are plain
ints and one `Counter`, read by the TCP layer once per chunk (metrics are too slow to touch
per line).
"""

from __future__ import annotations

from collections import Counter

from aisfusion.feeds.fragments import FragmentBuffer
from aisfusion.feeds.nmea import (
    Reject,
    Sentence,
    TagBlock,
    merged,
    parse_gatehouse,
    parse_line,
    parse_sentence,
)
from aisfusion.feeds.payload import MIN_BITS, invalid_chars, routing_fields
from aisfusion.messages import RawMessage

_US = 1_000_000  # consecutive lines of one stream arrive 1 µs apart at least


class FeedDecoder:
    """Frames one connection's byte stream into `RawMessage`s.

    Lines end in ``\\n`` (a preceding ``\\r`` is dropped). Empty lines are skipped and not
    counted; every other line counts once in `lines`. Every line that yields nothing counts
    once in `rejects`, except fragments, which are counted per group: an incomplete group
    once, a fragment that fits no group once, a complete group with a bad payload once.
    Feeding a stream whole or in chunks split anywhere gives the same messages and counts.
    """

    def __init__(self, source: str, *, max_line_bytes: int, fragment_timeout_s: float) -> None:
        self.source = source
        self.max_line_bytes = max_line_bytes
        self.lines = 0
        self.messages = 0
        self.rejects: Counter[str] = Counter()
        self._fragments = FragmentBuffer(fragment_timeout_s, self.rejects)
        self._partial = b""
        # True while dropping the rest of an over-long line whose newline has not come yet.
        self._skipping = False
        self._pending_tag: TagBlock | None = None
        self._clock = 0  # the next line's earliest arrival time, in microseconds

    @property
    def open_groups(self) -> int:
        """Fragment groups waiting for more sentences."""
        return len(self._fragments)

    def feed(self, data: bytes, now: float) -> list[RawMessage]:
        """Consume a chunk read at `now` (UNIX seconds); return the messages it completed.

        Each line's arrival time is `now` plus 1 µs per line before it in the chunk, and never
        earlier than the previous chunk's last: arrival times of one stream are distinct and in
        order, so a message timed by its arrival keeps one time however often it is decided
        (the log delivers it again after a worker's failure).
        """
        out: list[RawMessage] = []
        # In whole microseconds: however the stream is cut into chunks, line i gets one time.
        base = max(round(now * _US), self._clock)
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            data = data[nl + 1 :]
            self._skipping = False
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        tail = lines.pop()
        too_long = len(tail) > self.max_line_bytes + 1  # +1: the line's \r may be in this chunk
        if too_long:
            # Counted now, not when its newline finally comes, so a peer that never sends
            # one is still seen; the rest of the line is skipped without being buffered.
            self.lines += 1
            self.rejects[Reject.TOO_LONG] += 1
            self._skipping = True
            tail = b""
        self._partial = tail

        # The loop below handles the common line (a single-sentence VDM/VDO without a tag
        # block) inline, and hands everything else to `_line`. Both give the same result;
        # the inline path only exists because this runs a few hundred thousand times a second.
        max_len = self.max_line_bytes
        source = self.source
        rejects = self.rejects
        append = out.append
        n_lines = n_messages = 0
        for line in lines:
            if len(line) < 2 and (not line or line == b"\r"):  # len() first: cheapest test
                continue
            t = (base + n_lines) / _US
            n_lines += 1
            if (
                line[:1] != b"!"
                or len(line) > max_len
                or self._pending_tag is not None
                # Something after the checksum (``*hh``, ``*hh\r``): maybe a NAIS trailer.
                or b"*" not in line[-4:-2]
            ):
                n_messages += self._line(line, t, out)
                continue
            sentence = parse_sentence(line)  # ignores whatever follows *hh, \r included
            if isinstance(sentence, Reject):
                rejects[sentence] += 1
                continue
            payload = sentence[4]
            fill = sentence[5]
            if sentence[0] != 1 or invalid_chars(payload) or len(payload) * 6 - fill < MIN_BITS:
                n_messages += self._sentence(None, sentence, t, out)
                continue
            msg_type, mmsi = routing_fields(payload)
            append(RawMessage(mmsi, msg_type, payload, fill, source, None, t, t, False))
            n_messages += 1
        # The over-long tail line takes its time slot too, as it does inside a chunk.
        self._clock = base + n_lines + too_long
        self.lines += n_lines
        self.messages += n_messages
        return out

    def flush(self, now: float) -> list[RawMessage]:
        """End of stream: parse a last unterminated line and drop open fragment groups."""
        out: list[RawMessage] = []
        now = max(round(now * _US), self._clock) / _US
        tail, self._partial = self._partial, b""
        self._skipping = False
        if tail and tail != b"\r":
            self.lines += 1
            self.messages += self._line(tail, now, out)
        self._fragments.clear()
        self._pending_tag = None
        return out

    def expire(self, now: float) -> int:
        """Drop fragment groups older than the timeout, counted as incomplete.

        Cheap enough to call on every chunk: the sweep stops at the first group still young.
        Returns how many groups were dropped.
        """
        return self._fragments.expire(now)

    def _line(self, line: bytes, now: float, out: list[RawMessage]) -> int:
        """Handle any non-empty line (already counted); return the number of messages."""
        if line[-1:] == b"\r":
            line = line[:-1]
        if len(line) > self.max_line_bytes:
            self.rejects[Reject.TOO_LONG] += 1
            return 0
        if line[:6] == b"$PGHP,":
            # Gatehouse: the receive time (and source) of the sentence that follows; it
            # completes a tag block on the line before it (DMA sends both).
            gatehouse = parse_gatehouse(line)
            if isinstance(gatehouse, Reject):
                self.rejects[gatehouse] += 1
                return 0
            pending = self._pending_tag
            self._pending_tag = gatehouse if pending is None else merged(gatehouse, pending)
            return 0
        parsed = parse_line(line)
        if isinstance(parsed, Reject):
            self.rejects[parsed] += 1
            return 0
        tag, sentence = parsed
        if sentence is None:
            self._pending_tag = tag
            return 0
        if tag is None:
            # A tag block on its own line describes the next AIS sentence. Other sentences
            # in between (the DMA feed puts a $PGHP time sentence there) were rejected
            # before reaching here and leave it pending.
            tag = self._pending_tag
        self._pending_tag = None
        return self._sentence(tag, sentence, now, out)

    def _sentence(
        self, tag: TagBlock | None, sentence: Sentence, now: float, out: list[RawMessage]
    ) -> int:
        """Turn a checked sentence into a message, joining fragments; return 0 or 1."""
        station, tag_time, group = (None, None, None) if tag is None else tag
        payload = sentence.payload
        fill = sentence.fill_bits
        if sentence.frag_count > 1:
            done = self._fragments.add(
                station=station,
                channel=sentence.channel,
                seq_id=sentence.seq_id,
                group=group,
                num=sentence.frag_num,
                count=sentence.frag_count,
                payload=payload,
                fill_bits=fill,
                tag_time=tag_time,
                now=now,
            )
            if done is None:
                return 0
            payload, fill, station, tag_time = done
        if invalid_chars(payload):
            self.rejects[Reject.BAD_PAYLOAD] += 1
            return 0
        if len(payload) * 6 - fill < MIN_BITS:
            self.rejects[Reject.SHORT_PAYLOAD] += 1
            return 0
        msg_type, mmsi = routing_fields(payload)
        received_at = now if tag_time is None else tag_time
        out.append(
            RawMessage(
                mmsi,
                msg_type,
                payload,
                fill,
                self.source,
                station,
                received_at,
                now,
                tag_time is not None,
            )
        )
        return 1
