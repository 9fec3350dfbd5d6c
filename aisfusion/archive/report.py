"""What `aisfusion import` shows a person: a progress bar per file on a terminal, and the
summary at the end (as text, or as JSON with ``--json``)."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any, TextIO

import msgspec
from tqdm import tqdm

from aisfusion.archive.importer import Summary
from aisfusion.archive.inputs import Input

# Vessel outcomes that are not a position refused: what the message was not.
_NOT_POSITIONS = {"not_vessel_data": "not vessel data (base stations, binary, safety, ...)"}


def progress_bar(stream: TextIO = sys.stderr) -> Any:
    """A bar factory for `Importer`: bytes read of each file, with lines and rejects."""

    def bar(inp: Input) -> Any:
        return tqdm(
            total=inp.size,
            desc=inp.name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=stream,
            leave=True,
            dynamic_ncols=True,
        )

    return bar


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(summary: Summary) -> str:
    out = []
    for f in summary.files:
        kind = f.format + (f" ({f.compression})" if f.compression else "")
        line = f"{f.name}: {kind}, {f.lines:,} lines, {f.messages:,} messages"
        if f.error is not None:
            line += f"\n  error: {f.error}"
        out.append(line)
    out.append(
        f"imported {summary.lines:,} lines, {summary.messages:,} messages in "
        f"{summary.seconds:.1f} s ({summary.messages_per_s:,.0f} messages/s)"
    )
    out.append(
        f"positions stored: {summary.positions_stored:,} new "
        f"(of {summary.decided:,} accepted; the rest were in history already)"
        if summary.decided != summary.positions_stored
        else f"positions stored: {summary.positions_stored:,}"
    )
    out.append(f"static reports: {summary.static_reports:,}")
    if summary.span is not None:
        first, last = summary.span
        out.append(f"time span: {_when(first)} .. {_when(last)}")
    if summary.rejects:
        out.append("not stored, by reason:")
        for reason, count in summary.rejects.items():
            note = _NOT_POSITIONS.get(reason)
            out.append(f"  {reason:<20} {count:>10,}" + (f"  {note}" if note else ""))
    return "\n".join(out)


def as_json(summary: Summary) -> str:
    return msgspec.json.encode(summary).decode()
