"""Multi-sentence reassembly: order, keys, eviction and counting."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aisfusion.feeds.fragments import Completed, FragmentBuffer


def frag(
    buf: FragmentBuffer,
    num: int,
    count: int,
    payload: bytes,
    *,
    station: str | None = None,
    channel: bytes = b"A",
    seq_id: bytes = b"1",
    group: str | None = None,
    fill_bits: int = 0,
    tag_time: float | None = None,
    now: float = 100.0,
) -> Completed | None:
    return buf.add(
        station=station,
        channel=channel,
        seq_id=seq_id,
        group=group,
        num=num,
        count=count,
        payload=payload,
        fill_bits=fill_bits,
        tag_time=tag_time,
        now=now,
    )


def make(timeout_s: float = 10.0, **kwargs: Any) -> tuple[FragmentBuffer, Counter[str]]:
    rejects: Counter[str] = Counter()
    return FragmentBuffer(timeout_s, rejects, **kwargs), rejects


def test_two_fragments_in_order() -> None:
    buf, rejects = make()
    assert frag(buf, 1, 2, b"AAA", station="r1", tag_time=5.0, fill_bits=0) is None
    done = frag(buf, 2, 2, b"BB", fill_bits=2)
    # Station and time come from the first fragment's tag block, fill bits from the last.
    assert done == Completed(b"AAABB", 2, "r1", 5.0)
    assert len(buf) == 0
    assert not rejects


def test_three_fragments() -> None:
    buf, _ = make()
    assert frag(buf, 1, 3, b"a") is None
    assert frag(buf, 2, 3, b"b") is None
    assert frag(buf, 3, 3, b"c", fill_bits=4) == Completed(b"abc", 4, None, None)


def test_continuation_without_group_is_an_orphan() -> None:
    buf, rejects = make()
    assert frag(buf, 2, 2, b"x") is None
    assert rejects == {"orphan_fragment": 1}


def test_gap_is_an_orphan_and_the_group_waits() -> None:
    buf, rejects = make()
    frag(buf, 1, 3, b"a")
    assert frag(buf, 3, 3, b"c") is None
    assert rejects == {"orphan_fragment": 1}
    assert len(buf) == 1


def test_duplicate_continuation_does_not_break_the_group() -> None:
    buf, rejects = make()
    frag(buf, 1, 3, b"a")
    frag(buf, 2, 3, b"b")
    assert frag(buf, 2, 3, b"b") is None
    assert frag(buf, 3, 3, b"c") == Completed(b"abc", 0, None, None)
    assert rejects == {"orphan_fragment": 1}


def test_fragment_count_mismatch_is_an_orphan() -> None:
    buf, rejects = make()
    frag(buf, 1, 2, b"a")
    assert frag(buf, 2, 3, b"b") is None
    assert rejects == {"orphan_fragment": 1}


def test_new_first_fragment_evicts_the_old_group() -> None:
    buf, rejects = make()
    frag(buf, 1, 2, b"old")
    frag(buf, 1, 2, b"new")
    assert frag(buf, 2, 2, b"!") == Completed(b"new!", 0, None, None)
    assert rejects == {"incomplete_group": 1}


def test_two_stations_interleave_with_the_same_sequence_id() -> None:
    buf, rejects = make()
    frag(buf, 1, 2, b"a1", station="r1")
    frag(buf, 1, 2, b"b1", station="r2")
    assert frag(buf, 2, 2, b"a2", station="r1") == Completed(b"a1a2", 0, "r1", None)
    assert frag(buf, 2, 2, b"b2", station="r2") == Completed(b"b1b2", 0, "r2", None)
    assert not rejects


def test_channels_and_sequence_ids_are_separate_groups() -> None:
    buf, rejects = make()
    frag(buf, 1, 2, b"a", channel=b"A")
    frag(buf, 1, 2, b"b", channel=b"B")
    frag(buf, 1, 2, b"c", channel=b"A", seq_id=b"2")
    assert frag(buf, 2, 2, b"1", channel=b"B") == Completed(b"b1", 0, None, None)
    assert frag(buf, 2, 2, b"2", channel=b"A", seq_id=b"2") == Completed(b"c2", 0, None, None)
    assert frag(buf, 2, 2, b"3", channel=b"A") == Completed(b"a3", 0, None, None)
    assert not rejects


def test_tag_group_continuation_without_station() -> None:
    # gfw-listener: \g:1-2-7218,s:117,c:...\ then \g:2-2-7218*51\ (no s:, no c:).
    buf, rejects = make()
    frag(buf, 1, 2, b"a", station="117", group="7218", seq_id=b"9", channel=b"", tag_time=7.0)
    done = frag(buf, 2, 2, b"b", group="7218", seq_id=b"9", channel=b"")
    assert done == Completed(b"ab", 0, "117", 7.0)
    assert not rejects


def test_tag_groups_keep_interleaved_stations_apart() -> None:
    buf, rejects = make()
    frag(buf, 1, 2, b"a", station="117", group="1", seq_id=b"")
    frag(buf, 1, 2, b"b", station="118", group="2", seq_id=b"")
    assert frag(buf, 2, 2, b"B", group="2", seq_id=b"") == Completed(b"bB", 0, "118", None)
    assert frag(buf, 2, 2, b"A", group="1", seq_id=b"") == Completed(b"aA", 0, "117", None)
    assert not rejects


def test_continuation_naming_another_station_does_not_join() -> None:
    buf, rejects = make()
    frag(buf, 1, 2, b"a", station="r1")
    assert frag(buf, 2, 2, b"b", station="r2") is None
    assert rejects == {"orphan_fragment": 1}


def test_station_only_on_a_later_fragment() -> None:
    buf, _ = make()
    frag(buf, 1, 2, b"a")
    assert frag(buf, 2, 2, b"b", station="r9", tag_time=3.0) == Completed(b"ab", 0, "r9", 3.0)


def test_expiry_after_timeout() -> None:
    buf, rejects = make(timeout_s=10.0)
    frag(buf, 1, 2, b"a", now=100.0)
    frag(buf, 1, 2, b"b", channel=b"B", now=105.0)
    assert buf.expire(109.0) == 0
    assert buf.expire(110.0) == 1
    assert len(buf) == 1
    assert frag(buf, 2, 2, b"x", now=110.0) is None  # its group is gone
    assert frag(buf, 2, 2, b"y", channel=b"B", now=110.0) == Completed(b"by", 0, None, None)
    assert rejects == {"incomplete_group": 1, "orphan_fragment": 1}


def test_reopened_key_moves_to_the_back_of_the_expiry_queue() -> None:
    buf, rejects = make(timeout_s=10.0)
    frag(buf, 1, 2, b"a", now=100.0)
    frag(buf, 1, 2, b"b", channel=b"B", now=101.0)
    frag(buf, 1, 2, b"c", now=108.0)  # replaces the first group
    assert buf.expire(111.5) == 1  # only the channel-B group is due
    assert frag(buf, 2, 2, b"!", now=112.0) == Completed(b"c!", 0, None, None)
    assert rejects == {"incomplete_group": 2}


def test_bound_drops_the_oldest_group() -> None:
    buf, rejects = make(max_groups=3)
    for seq in b"1234":
        frag(buf, 1, 2, b"p", seq_id=bytes([seq]))
    assert len(buf) == 3
    assert rejects == {"incomplete_group": 1}
    assert frag(buf, 2, 2, b"x", seq_id=b"1") is None
    assert frag(buf, 2, 2, b"x", seq_id=b"4") == Completed(b"px", 0, None, None)


def test_clear_counts_every_open_group() -> None:
    buf, rejects = make()
    frag(buf, 1, 2, b"a")
    frag(buf, 1, 3, b"b", channel=b"B")
    assert buf.clear() == 2
    assert rejects == {"incomplete_group": 2}
    assert frag(buf, 2, 2, b"c") is None
    assert rejects["orphan_fragment"] == 1
