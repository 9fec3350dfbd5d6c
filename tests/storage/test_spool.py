"""The local spool: round trips, restarts, torn tails, the directory lock, rotation, and a
property test that appends and drains never lose or duplicate a batch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aisfusion.errors import DataDirLockedError, PermanentStorageError
from aisfusion.messages import HistoryBatch, Position, StaticReport, VesselSeen
from aisfusion.storage.spool import MAGIC, Spool

T0 = 1_700_000_000.25


def batch(batch_id: int, rows: int = 3) -> HistoryBatch:
    positions = [
        Position(
            mmsi=366_000_000 + i,
            ts=T0 + i / 1000,
            lat=-33.9 + i / 100,
            lon=151.2,
            sog=None if i % 2 else 0.1,
            cog=359.9,
            heading=None,
            nav_status=15,
            msg_type=18,
            source="feed-b",
            station=None,
            arrival=T0 + 1,
        )
        for i in range(rows)
    ]
    vessels = [VesselSeen(366_000_000, T0, T0, StaticReport(366_000_000, T0, name="Ñandú"))]
    return HistoryBatch(batch_id, positions, vessels)


def drain(spool: Spool) -> list[HistoryBatch]:
    out: list[HistoryBatch] = []
    while (oldest := spool.oldest()) is not None:
        segment, batches = oldest
        out += batches
        spool.remove(segment)
    return out


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.spool"))


def test_append_oldest_remove_round_trip(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        assert spool.oldest() is None
        batches = [batch(1), batch(2, rows=0), batch(3, rows=5)]
        for b in batches:
            spool.append(b)
        assert (spool.pending_batches(), spool.pending_rows()) == (3, 8)
        # The only segment is the one being written: oldest() closes it so it can drain.
        segment, got = spool.oldest()  # type: ignore[misc]
        assert (segment, got) == ("00000001", batches)
        assert spool.oldest() == (segment, batches), "stays until removed"
        spool.append(batch(4))  # goes to a new segment
        assert segments(tmp_path) == ["00000001.spool", "00000002.spool"]
        spool.remove(segment)
        assert (spool.pending_batches(), spool.pending_rows()) == (1, 3)
        with pytest.raises(KeyError):
            spool.remove(segment)
        assert drain(spool) == [batch(4)]
        assert (spool.pending_batches(), spool.pending_rows()) == (0, 0)
        assert segments(tmp_path) == []
        assert spool.corrupt_records == 0
    with pytest.raises(PermanentStorageError):
        spool.append(batch(5))
    spool.close()  # idempotent


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
def test_survives_reopening(tmp_path: Path, fsync: str) -> None:
    spool = Spool(tmp_path, fsync=fsync, fsync_every=2)  # type: ignore[arg-type]
    for i in range(5):
        spool.append(batch(i, rows=i))
    spool.flush()
    spool.close()

    reopened = Spool(tmp_path, fsync=fsync)  # type: ignore[arg-type]
    assert (reopened.pending_batches(), reopened.pending_rows()) == (5, 10)
    reopened.append(batch(5))  # never appended to the old segment
    assert segments(tmp_path) == ["00000001.spool", "00000002.spool"]
    assert [b.batch_id for b in drain(reopened)] == [0, 1, 2, 3, 4, 5]
    reopened.close()


def test_a_process_that_dies_leaves_a_drainable_spool(tmp_path: Path) -> None:
    """No close(): the lock goes with the file descriptor, the records are already written."""
    spool = Spool(tmp_path)
    spool.append(batch(1))
    os.close(spool._lock_fd)  # what the kernel does when the process dies
    os.close(spool._fd)
    with Spool(tmp_path) as after:
        assert drain(after) == [batch(1)]


def test_torn_tail_keeps_earlier_records(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        for i in range(3):
            spool.append(batch(i))
    path = tmp_path / "00000001.spool"
    size = path.stat().st_size
    os.truncate(path, size - 10)  # a crash in the middle of the third record

    with Spool(tmp_path) as spool:
        assert spool.corrupt_records == 1
        assert (spool.pending_batches(), spool.pending_rows()) == (2, 6)
        assert [b.batch_id for b in drain(spool)] == [0, 1]


def test_corrupt_record_ignores_the_rest_of_its_segment(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=1) as spool:  # one record per segment
        for i in range(3):
            spool.append(batch(i))
    second = tmp_path / "00000002.spool"
    data = bytearray(second.read_bytes())
    data[-1] ^= 0x40  # a flipped bit: CRC mismatch
    second.write_bytes(bytes(data))
    (tmp_path / "00000004.spool").write_bytes(b"not a spool")  # bad magic
    (tmp_path / "00000005.spool").write_bytes(MAGIC[:3])  # crashed while being created: empty

    with Spool(tmp_path) as spool:
        assert spool.corrupt_records == 2
        assert spool.pending_batches() == 2
        assert [b.batch_id for b in drain(spool)] == [0, 2]
        assert segments(tmp_path) == []


def test_second_spool_on_the_same_directory_refuses(tmp_path: Path) -> None:
    with Spool(tmp_path):
        with pytest.raises(DataDirLockedError, match=f"pid {os.getpid()}"):
            Spool(tmp_path)
        with pytest.raises(DataDirLockedError, match="in use"):
            Spool(str(tmp_path))
    with Spool(tmp_path):  # released on close
        pass


def test_segments_rotate_at_segment_bytes(tmp_path: Path) -> None:
    record_bytes = 8 + len(msgspec.msgpack.encode(batch(0, rows=2)))
    with Spool(tmp_path, fsync="never", segment_bytes=2048) as spool:
        for i in range(20):
            spool.append(batch(i, rows=2))
        names = segments(tmp_path)
        assert len(names) > 3
        sizes = [(tmp_path / n).stat().st_size for n in names]
        assert all(size <= 2048 for size in sizes)
        assert all(size + record_bytes > 2048 for size in sizes[:-1]), "filled before rotating"
        assert [b.batch_id for b in drain(spool)] == list(range(20))
        big = batch(99, rows=200)  # larger than a segment: stored alone
        spool.append(big)
        spool.append(batch(100))
        assert spool.oldest() == (f"{len(names) + 1:08d}", [big])


# An operation: ("append", rows), ("drain", how many segments), ("reopen", None).
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 40)),
        st.tuples(st.just("drain"), st.integers(1, 3)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(OPERATIONS, st.sampled_from([512, 4096, 1 << 20]))
def test_appends_and_drains_never_lose_or_duplicate(
    operations: list[tuple[str, int | None]], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(directory, fsync="never", segment_bytes=segment_bytes)
        appended: list[int] = []
        drained: list[int] = []
        try:
            for op, arg in operations:
                if op == "append":
                    assert arg is not None
                    spool.append(batch(len(appended), rows=arg))
                    appended.append(len(appended))
                elif op == "drain":
                    assert arg is not None
                    for _ in range(arg):
                        oldest = spool.oldest()
                        if oldest is None:
                            break
                        segment, batches = oldest
                        drained += [b.batch_id for b in batches]
                        spool.remove(segment)
                else:
                    spool.close()
                    spool = Spool(directory, fsync="never", segment_bytes=segment_bytes)
                assert spool.pending_batches() == len(appended) - len(drained)
            drained += [b.batch_id for b in drain(spool)]
        finally:
            spool.close()
        assert drained == appended, "every batch exactly once, in append order"
        assert spool.corrupt_records == 0
