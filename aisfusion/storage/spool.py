"""The local append-only spool: history batches on disk while Redis (and so the DLQ) is down.

Synchronous and single-owner: the storage supervisor calls it from its actor thread. Batches
are appended to numbered segment files and drained oldest segment first::

    DIR/LOCK              flock'ed while a Spool owns DIR (holds the owner's pid)
    DIR/00000001.spool    closed segment, waiting to be drained
    DIR/00000002.spool    the segment being written (always the newest)

A segment starts with the 8-byte magic ``AISSPL1\\n``, then records::

    u32 length (little-endian) | u32 CRC-32 of the body | body: msgpack HistoryBatch

Each record is written with one ``write``; when that fails (disk full) the segment is cut back
to the record's start, so a failed append never leaves a hole before later records. A crash
mid-write leaves a torn record at the end of the segment: on open, the records before it are
kept, it is counted in `corrupt_records` and the rest of the segment is ignored.

A Spool never appends to a segment it did not create: on open it starts a new one, so what an
earlier process left (perhaps torn) is only read and drained. `oldest()` closes the segment
being written when it is the only one, so everything can be drained; `remove()` deletes a
segment once its batches were handed on.

Durability (`fsync`): "always" fdatasyncs every record before `append` returns (~160 µs per
8 kB here; batches are large, so that is cheap per row); "batch" fdatasyncs every
`fsync_every` appends, on `flush()`, rotation and close; "never" leaves it to the OS. New and
removed segment files are made durable with an fsync of the directory, except with "never".
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import msgspec

from aisfusion.errors import DataDirLockedError, PermanentStorageError, TransientStorageError
from aisfusion.messages import HistoryBatch

log = logging.getLogger(__name__)

MAGIC = b"AISSPL1\n"
SUFFIX = ".spool"
LOCK_NAME = "LOCK"
_HEADER = struct.Struct("<II")  # body length, CRC-32 of body
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EINTR, errno.EAGAIN})

FsyncPolicy = Literal["always", "batch", "never"]


class _Positions(msgspec.Struct):
    """Decodes only the positions of a HistoryBatch, lazily, to count rows on open."""

    positions: list[msgspec.Raw]


@dataclass
class _Segment:
    seq: int
    batches: int = 0
    rows: int = 0
    size: int = 0  # bytes, for the segment being written


class Spool:
    """Append-only, crash-safe spool of history batches in one locked directory."""

    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: FsyncPolicy = "always",
        segment_bytes: int = 64 << 20,
        fsync_every: int = 32,
    ) -> None:
        if fsync not in ("always", "batch", "never"):
            raise ValueError(f"fsync must be 'always', 'batch' or 'never', not {fsync!r}")
        if segment_bytes < 1 or fsync_every < 1:
            raise ValueError("segment_bytes and fsync_every must be positive")
        self.directory = Path(directory)
        self.fsync: FsyncPolicy = fsync
        self.segment_bytes = segment_bytes
        self.fsync_every = fsync_every
        self.corrupt_records = 0
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(HistoryBatch)
        self._rows_decoder = msgspec.msgpack.Decoder(_Positions)
        self._closed_segments: dict[int, _Segment] = {}  # by seq, oldest first
        self._active: _Segment | None = None
        self._fd = -1  # the active segment's file
        self._unsynced = 0
        self._batches = 0
        self._rows = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        try:
            self._recover()
        except BaseException:
            self._unlock()
            raise

    # -- the owner's interface -------------------------------------------------------------

    def append(self, batch: HistoryBatch) -> None:
        """Add one batch; with fsync="always" it is on disk when this returns."""
        self._check_open()
        body = self._encoder.encode(batch)
        record = _HEADER.pack(len(body), zlib.crc32(body)) + body
        active = self._active
        if (
            active is not None
            and active.size > len(MAGIC)
            and (active.size + len(record) > self.segment_bytes)
        ):
            self._rotate()
            active = None
        if active is None:
            active = self._open_segment()
        try:
            _write_all(self._fd, record)
        except OSError as exc:
            self._cut_back(active)
            raise _wrap(exc, f"append to spool segment {self._path(active.seq)}") from exc
        active.size += len(record)
        active.batches += 1
        active.rows += len(batch.positions)
        self._batches += 1
        self._rows += len(batch.positions)
        self._unsynced += 1
        if self.fsync == "always" or (self.fsync == "batch" and self._unsynced >= self.fsync_every):
            self._sync()

    def flush(self) -> None:
        """Make every appended batch durable (a no-op with fsync="never")."""
        if self._active is not None and self.fsync != "never":
            self._sync()

    def pending_batches(self) -> int:
        """Batches spooled and not yet removed, old segments included."""
        return self._batches

    def pending_rows(self) -> int:
        """Positions in the pending batches."""
        return self._rows

    def oldest(self) -> tuple[str, list[HistoryBatch]] | None:
        """The oldest segment's id and its batches, in append order; None if nothing is
        spooled. The segment stays until `remove`d, so a crash before then replays it again
        (harmless: history inserts are idempotent). A segment whose records are all unreadable
        comes back with no batches, to be removed like any other."""
        self._check_open()
        if not self._closed_segments:
            if self._active is None or self._active.batches == 0:
                return None
            self._rotate()
        seq = min(self._closed_segments)
        return _segment_id(seq), self._batches_of(self._path(seq))

    def remove(self, segment_id: str) -> None:
        """Delete a drained segment (its batches were written or diverted again)."""
        self._check_open()
        seq = int(segment_id)
        if seq not in self._closed_segments:
            raise KeyError(f"no closed spool segment {segment_id!r} in {self.directory}")
        try:
            self._path(seq).unlink(missing_ok=True)
        except OSError as exc:
            raise _wrap(exc, f"remove spool segment {segment_id}") from exc
        segment = self._closed_segments.pop(seq)
        try:
            self._sync_directory()
        except OSError:
            log.warning("spool: cannot fsync %s after a removal", self.directory, exc_info=True)
        self._batches -= segment.batches
        self._rows -= segment.rows
        log.info("spool: segment %s removed (%d batches)", segment_id, segment.batches)

    def close(self) -> None:
        """Close the segment being written (durable unless fsync="never") and release the
        directory. Idempotent."""
        if self._lock_fd < 0:
            return
        try:
            if self._active is not None:
                self._rotate()
        finally:
            self._unlock()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- segments --------------------------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self.directory / (_segment_id(seq) + SUFFIX)

    def _recover(self) -> None:
        """Count what earlier processes left; their segments are only read from now on."""
        seqs = sorted(int(p.stem) for p in self.directory.glob("*" + SUFFIX) if p.stem.isdigit())
        for seq in seqs:
            segment = _Segment(seq, *self._count(self._path(seq)))
            self._closed_segments[seq] = segment
            self._batches += segment.batches
            self._rows += segment.rows
        self._next_seq = (seqs[-1] + 1) if seqs else 1
        if seqs:
            log.info(
                "spool %s: %d batches (%d rows) in %d segments to drain, %d corrupt records",
                self.directory,
                self._batches,
                self._rows,
                len(seqs),
                self.corrupt_records,
            )

    def _open_segment(self) -> _Segment:
        seq = self._next_seq
        self._next_seq += 1
        path = self._path(seq)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise _wrap(exc, f"create spool segment {path}") from exc
        try:
            _write_all(fd, MAGIC)
            self._sync_directory()
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise _wrap(exc, f"create spool segment {path}") from exc
        self._fd = fd
        self._active = _Segment(seq, size=len(MAGIC))
        return self._active

    def _rotate(self) -> None:
        """Close the segment being written; the next append starts a new one."""
        active, fd = self._active, self._fd
        if active is None:
            return
        self._active, self._fd = None, -1
        if active.batches:
            self._closed_segments[active.seq] = active
        try:
            if self.fsync != "never":
                _fdatasync(fd)
        finally:
            os.close(fd)
            self._unsynced = 0
        if not active.batches:
            self._path(active.seq).unlink(missing_ok=True)

    def _cut_back(self, active: _Segment) -> None:
        """A record could not be written whole: drop what was written of it, or, if even that
        fails, abandon the segment so no later record sits behind a torn one."""
        try:
            os.ftruncate(self._fd, active.size)
        except OSError:
            log.exception(
                "spool: cannot cut back %s; starting a new segment", self._path(active.seq)
            )
            os.close(self._fd)
            self._fd = -1
            self._active = None
            if active.batches:
                self._closed_segments[active.seq] = active

    def _sync(self) -> None:
        _fdatasync(self._fd)
        self._unsynced = 0

    def _sync_directory(self) -> None:
        if self.fsync == "never":
            return
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _count(self, path: Path) -> tuple[int, int]:
        """Batches and rows of a segment left by an earlier process; counts what is corrupt.
        Only the positions are decoded, and only as raw items, to keep opening cheap."""
        batches = rows = 0
        for body in self._bodies(path, count_corrupt=True):
            try:
                rows += len(self._rows_decoder.decode(body).positions)
            except msgspec.DecodeError as exc:
                log.error("spool %s: undecodable record skipped: %s", path, exc)  # noqa: TRY400
                self.corrupt_records += 1
                continue
            batches += 1
        return batches, rows

    def _batches_of(self, path: Path) -> list[HistoryBatch]:
        batches = []
        for body in self._bodies(path, count_corrupt=False):
            try:
                batches.append(self._decoder.decode(body))
            except msgspec.DecodeError as exc:  # counted when the segment was opened
                log.error("spool %s: undecodable record skipped: %s", path, exc)  # noqa: TRY400
        return batches

    def _bodies(self, path: Path, *, count_corrupt: bool) -> Iterator[bytes]:
        """The intact record bodies of a segment, up to the first torn or corrupt record."""
        data = path.read_bytes()
        if len(data) <= len(MAGIC) and MAGIC.startswith(data):
            return  # created, never written to (or torn within its magic)
        problem = None if data.startswith(MAGIC) else "not a spool segment (bad magic)"
        offset = len(MAGIC)
        while problem is None and offset < len(data):
            if offset + _HEADER.size > len(data):
                problem = f"torn record header at byte {offset}"
                break
            length, crc = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if end > len(data):
                problem = f"torn record at byte {offset} ({length} bytes announced)"
                break
            body = data[offset + _HEADER.size : end]
            if zlib.crc32(body) != crc:
                problem = f"CRC mismatch in the record at byte {offset}"
                break
            yield body
            offset = end
        if problem is not None:
            log.error("spool %s: %s; the rest of the segment is ignored", path, problem)
            if count_corrupt:
                self.corrupt_records += 1

    # -- the directory lock ----------------------------------------------------------------

    def _lock(self) -> int:
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLockedError(
                f"spool directory {self.directory} is in use by another aisfusion instance "
                f"(pid {owner}, lock {path}); give each instance its own spool directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _unlock(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = -1

    def _check_open(self) -> None:
        if self._lock_fd < 0:
            raise PermanentStorageError(f"spool {self.directory} is closed")


def _segment_id(seq: int) -> str:
    return f"{seq:08d}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fdatasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError as exc:
        raise _wrap(exc, "fdatasync a spool segment") from exc


def _wrap(exc: OSError, what: str) -> Exception:
    if exc.errno in _TRANSIENT_ERRNOS:
        return TransientStorageError(f"{what}: {exc}")
    return PermanentStorageError(f"{what}: {exc}")
