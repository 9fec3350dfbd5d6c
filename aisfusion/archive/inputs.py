"""Archive inputs: a path or ``-`` (stdin), plain or compressed.

The compression is told by the first bytes, not the name (archives get renamed): gzip
(``1f 8b``), bzip2 (``BZh``), Zstandard (``28 b5 2f fd``); anything else is read as it is.
`Input.chunks` yields the decompressed bytes with how far into the file (compressed bytes) it
has read, for the progress bar.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, cast

import zstandard

CHUNK_BYTES = 1 << 20

_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd"}


def compression_of(head: bytes) -> str | None:
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Input:
    """One file named on the command line (``-``: standard input)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stdin = name == "-"
        stat = None if self.stdin else Path(name).stat()  # OSError: the caller reports it
        self.size: int | None = None if stat is None else stat.st_size
        self.mtime: float | None = None if stat is None else stat.st_mtime
        self.compression: str | None = None

    def chunks(self) -> Iterator[tuple[bytes, int]]:
        """The decompressed content in pieces, each with the compressed bytes read so far.
        Raises OSError (or EOFError, zstandard.ZstdError) on an unreadable or corrupt file."""
        raw = cast(
            io.BufferedReader,
            sys.stdin.buffer if self.stdin else open(self.name, "rb"),  # noqa: SIM115 - closed below
        )
        try:
            self.compression = compression_of(raw.peek(4)[:4])
            stream = self._decompressed(raw)
            while data := stream.read(CHUNK_BYTES):
                yield data, self._position(raw)
        finally:
            if not self.stdin:
                raw.close()

    def _decompressed(self, raw: io.BufferedReader) -> _Readable:
        match self.compression:
            case "gzip":
                return gzip.GzipFile(fileobj=raw)
            case "bzip2":
                return bz2.BZ2File(raw)
            case "zstd":
                # read_across_frames: `zstd` concatenations (`cat a.zst b.zst`) read whole.
                return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            case _:
                return raw

    def _position(self, raw: io.BufferedReader) -> int:
        if self.stdin:
            return 0
        try:
            return os.lseek(raw.fileno(), 0, os.SEEK_CUR)
        except OSError:
            return 0
