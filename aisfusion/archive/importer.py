"""`aisfusion import`: historical archives into the pipeline, at full speed, in event time.

An archive is read straight into this process's pipeline (`Pipeline` in the ``import`` role):
framed by the feeds' own `FeedDecoder` (every receive-time form it knows: tag blocks, NAIS
trailers, Gatehouse ``$PGHP``) or by `csv_rows` (MarineCadastre, DMA), timed, and routed to
the shards. Nothing else changes: the vessels dedup, gate and fuse as for a live feed, and
history gets what they accept.

Event time: each batch carries the file's watermark, the newest receive time read so far
(`RawBatch.now`), and the shards judge lateness against it instead of the wall clock. So a
file from 2013 is as fresh to its vessels as a live feed, and a record an hour older than
what came before it in the file is as late as a live one would be. A batch spans at most
`_STEP_S` of event time (a sparse file's chunk may span hours), so the watermark a message is
judged against is at most that much newer than the ones before it. Times beyond the wall
clock's future tolerance do not move the watermark (the shards reject them as future). Each
file has its own clock: files of different years can be imported in any order.

Timing: a message with a receive time keeps it. One without is counted under ``no_time`` in a
file that has times elsewhere; a file without any is refused, unless ``--assume-rate`` or
``--start-time`` says how to time its lines (line i at start + i / rate). Such times are
deterministic, so importing the same file twice stores nothing new, as for timed files (the
history key is (mmsi, time)).

The vessels start from the archive alone, not from the live picture, so an import decides the
same however often it runs; a live record is written only over an older one (`RedisStore`
with `newer_only`): an archive never moves the live picture back in time. Past partitions are
created as the rows need them; with `retention.history_days` set, records older than the
retention horizon are refused (``beyond_retention``) rather than stored and then dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import pykka

from aisfusion.actors.shard import ShardStats
from aisfusion.archive import csv_rows
from aisfusion.archive.inputs import Input
from aisfusion.config import Config
from aisfusion.errors import AisFusionError
from aisfusion.feeds.decoder import FeedDecoder
from aisfusion.messages import RawMessage
from aisfusion.pipeline import Pipeline
from aisfusion.storage.partitions import DAY_S, day_of

log = logging.getLogger(__name__)

_US = 1_000_000
# The most event time one batch spans: a message is judged against a watermark at most this
# much newer than the newest message before it.
_STEP_S = 60.0
# Chunks routed and not yet decided, at most: the reader runs this far ahead of the shards.
_AHEAD = 2
_ASK_TIMEOUT_S = 120.0
DEFAULT_RATE = 10.0  # lines/s of a file timed by --start-time alone
NO_TIME = "no_time"
BEYOND_RETENTION = "beyond_retention"


class ArchiveError(AisFusionError):
    """A file that cannot be imported as asked (unreadable, no times, not the format)."""


class FileReport(msgspec.Struct):
    name: str
    format: str = "nmea"
    compression: str | None = None
    lines: int = 0
    messages: int = 0
    timed: int = 0  # messages with a receive time of their own
    rejects: dict[str, int] = msgspec.field(default_factory=dict)  # framing's and `refused`
    refused: dict[str, int] = msgspec.field(default_factory=dict)  # the importer's (its part)
    span: tuple[float, float] | None = None
    error: str | None = None


class Summary(msgspec.Struct):
    files: list[FileReport]
    lines: int
    messages: int
    positions_stored: int
    decided: int
    static_reports: int
    rejects: dict[str, int]  # the files' and the vessels'
    vessel_rejects: dict[str, int]
    span: tuple[float, float] | None
    seconds: float
    messages_per_s: float

    @property
    def ok(self) -> bool:
        return all(f.error is None for f in self.files)


class Timing(msgspec.Struct, frozen=True):
    """How lines without a receive time are timed: line i at `start` + i / `rate`."""

    rate: float | None = None
    start: float | None = None

    @property
    def given(self) -> bool:
        return self.rate is not None or self.start is not None


class Importer:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        source: str = "import",
        fmt: str | None = None,
        timing: Timing | None = None,
        progress: Callable[[Input], Any] | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        if pipeline.router is None or not pipeline.shards:
            raise RuntimeError("the pipeline is not running")
        self._pipeline = pipeline
        self._router = pipeline.router
        self._shards = pipeline.shards
        self._config = pipeline.config
        self._metrics = pipeline.metrics
        self._source = source
        self._format = fmt
        self._timing = timing or Timing()
        self._progress = progress
        # (i, n): this process decides the vessels with mmsi % n == i (`archive.parts`).
        self._part = part
        self._ahead: deque[list[pykka.Future[Any]]] = deque()
        actors = self._config.actors
        self._future_s = actors.max_future_skew_s
        self._step_s = min(_STEP_S, actors.max_lateness_s / 10)
        self._lateness_s = actors.max_lateness_s
        keep = self._config.retention.history_days
        self._keep_from = (day_of(time.time()) - keep) * DAY_S if keep else -math.inf
        self._inflight_limit = max(1, self._config.dlq.max_inflight_batches // 2)

    async def run(self, names: Iterable[str]) -> Summary:
        """Import every file in turn, then wait until all of it is in PostgreSQL."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        reports = [await loop.run_in_executor(None, self.read, name) for name in names]
        if not await self._pipeline.drain(self._config.breaker.call_timeout_s * 20):
            log.error("import: storage did not confirm everything in time (DLQ or spool)")
        return self._summary(reports, time.monotonic() - started)

    # -- one file (on a thread of its own: reading and framing block) ---------------------

    def read(self, name: str) -> FileReport:
        report = FileReport(name)
        try:
            inp = Input(name)
            bar = self._progress(inp) if self._progress is not None else None
            try:
                self._read(inp, report, bar)
            finally:
                if bar is not None:
                    bar.close()
        except (OSError, EOFError, ArchiveError, ValueError) as exc:
            # ValueError: what zstandard and bz2 raise on a corrupt stream.
            report.error = str(exc) if isinstance(exc, ArchiveError) else f"cannot read: {exc}"
        self._wait_decided(0)
        return report

    def _read(self, inp: Input, report: FileReport, bar: Any) -> None:
        own: Counter[str] = Counter()  # the importer's rejects; the reader counts its own
        reader: FeedDecoder | csv_rows.CsvReader | None = None
        clock = _Clock(self._future_s, self._step_s, self._lateness_s)
        timing = self._file_timing(inp)
        began = time.monotonic()
        for data, position in inp.chunks():
            if reader is None:
                reader = self._reader(data, report)
            self._take(_feed(reader, data), report, own, clock, timing)
            if bar is not None:
                bar.update(position - bar.n if position else len(data))
                rejects = sum(own.values()) + sum(reader.rejects.values())
                elapsed = max(1e-3, time.monotonic() - began)
                bar.set_postfix(  # as text: tqdm would show 10000 as 1e+4
                    lines=f"{reader.lines:,}",
                    lines_s=f"{reader.lines / elapsed:,.0f}",
                    rejects=f"{rejects:,}",
                    refresh=False,
                )
        report.compression = inp.compression
        if reader is None:
            return  # an empty file
        self._take(_feed(reader, None), report, own, clock, timing)
        report.lines, report.messages = reader.lines, reader.messages
        report.rejects = {str(k): n for k, n in sorted((reader.rejects + own).items())}
        report.refused = dict(sorted(own.items()))
        report.span = clock.span
        if report.messages and not report.timed and not timing.given:
            report.error = (
                f"no receive times in {report.messages} messages (no tag-block c:, NAIS trailer "
                "or $PGHP): refused; pass --assume-rate LINES_PER_S or --start-time TIME to "
                "time its lines"
            )

    def _reader(self, data: bytes, report: FileReport) -> FeedDecoder | csv_rows.CsvReader:
        header = data.split(b"\n", 1)[0].rstrip(b"\r")
        layout = csv_rows.detect(header)
        if self._format == "csv" and layout is None:
            raise ArchiveError(
                f"not a CSV layout aisfusion knows (MarineCadastre, DMA): header {header[:120]!r}"
            )
        if layout is not None and self._format != "nmea":
            report.format = f"csv/{layout.name}"
            return csv_rows.CsvReader(layout, self._source, Counter())
        feed = self._config.feed
        return FeedDecoder(
            self._source,
            max_line_bytes=feed.max_line_bytes,
            fragment_timeout_s=feed.fragment_timeout_s,
        )

    def _file_timing(self, inp: Input) -> Timing:
        """This file's timing of untimed lines (--start-time defaults to the file's
        modification time less its lines at the rate: a log ends when it was last written)."""
        t = self._timing
        if not t.given:
            return t
        rate = t.rate or DEFAULT_RATE
        start = t.start
        if start is None:
            if inp.mtime is None:
                raise ArchiveError("standard input has no modification time: pass --start-time")
            start = inp.mtime - _count_lines(inp.name) / rate
        return Timing(rate, start)

    def _take(
        self,
        msgs: list[RawMessage],
        report: FileReport,
        rejects: Counter[str],
        clock: _Clock,
        timing: Timing,
    ) -> None:
        """Time `msgs`, then route them in batches of at most `_STEP_S` of event time."""
        timed: list[RawMessage] = []
        replace = msgspec.structs.replace
        rate, start = timing.rate, timing.start
        keep_from = self._keep_from
        index, parts = self._part
        for msg in msgs:
            # Timed ones are counted in every part: whether the file has times at all.
            mine = parts == 1 or msg.mmsi % parts == index
            if msg.has_tag_time:
                report.timed += 1
                if not mine:
                    continue
                t = msg.received_at
            elif not mine:
                continue
            elif rate is not None and start is not None:
                # Fed at time 0, the decoder times line i at i µs.
                t = start + round(msg.arrival * _US) / rate
            else:
                # Refused with its file when no message of it has a time; else one that
                # cannot be placed among the others.
                rejects[NO_TIME] += 1
                continue
            if t < keep_from:
                rejects[BEYOND_RETENTION] += 1
                continue
            # Arrival too: the dedup window's "heard at the same moment" is event time here.
            timed.append(replace(msg, received_at=t, arrival=t))
        for batch, now in clock.batches(timed):
            self._router(batch, now=now)
        if timed:
            self._wait_decided(_AHEAD)

    def _wait_decided(self, ahead: int) -> None:
        """Backpressure: the reader stays at most `ahead` chunks ahead of the shards, and
        storage has room (a writer behind would send batches to the dead-letter queue)."""
        self._ahead.append([shard.ask(ShardStats(), block=False) for shard in self._shards])
        while len(self._ahead) > ahead:
            for future in self._ahead.popleft():
                with contextlib.suppress(pykka.ActorDeadError):
                    future.get(timeout=_ASK_TIMEOUT_S)
        gauge = functools.partial(
            self._metrics.registry.get_sample_value, "aisfusion_inflight_batches"
        )
        while (gauge() or 0) >= self._inflight_limit:
            if self._pipeline.failure is not None:
                break
            time.sleep(0.005)

    # -- the summary ------------------------------------------------------------------------

    def _summary(self, reports: list[FileReport], seconds: float) -> Summary:
        registry = self._metrics.registry
        vessels: Counter[str] = Counter()
        for metric in registry.collect():
            if metric.name == "aisfusion_vessel_rejected":
                for sample in metric.samples:
                    if sample.name.endswith("_total") and sample.value:
                        vessels[sample.labels["reason"]] += int(sample.value)

        def value(name: str, **labels: str) -> int:
            return int(registry.get_sample_value(name, labels) or 0)

        return summary(
            reports,
            positions_stored=value("aisfusion_batch_rows_total", store="postgres"),
            decided=value("aisfusion_decisions_total"),
            static_reports=value("aisfusion_static_reports_total"),
            vessel_rejects=vessels,
            seconds=seconds,
        )


def summary(
    reports: list[FileReport],
    *,
    positions_stored: int,
    decided: int,
    static_reports: int,
    vessel_rejects: Counter[str],
    seconds: float,
) -> Summary:
    rejects = Counter(vessel_rejects)
    for report in reports:
        rejects.update(report.rejects)
    messages = sum(r.messages for r in reports)
    return Summary(
        files=reports,
        lines=sum(r.lines for r in reports),
        messages=messages,
        positions_stored=positions_stored,
        decided=decided,
        static_reports=static_reports,
        rejects=dict(sorted(rejects.items())),
        vessel_rejects=dict(sorted(vessel_rejects.items())),
        span=span_of([r.span for r in reports]),
        seconds=round(seconds, 3),
        messages_per_s=round(messages / seconds, 1) if seconds > 0 else 0.0,
    )


def span_of(spans: list[tuple[float, float] | None]) -> tuple[float, float] | None:
    """The time span covering `spans` (None: none known)."""
    known = [s for s in spans if s is not None]
    return (min(s[0] for s in known), max(s[1] for s in known)) if known else None


class _Clock:
    """One file's watermark, and its messages cut into batches of bounded event time."""

    def __init__(self, future_s: float, step_s: float, lateness_s: float) -> None:
        self._future_s = future_s
        self._step_s = step_s
        self._lateness_s = lateness_s
        self.watermark = -math.inf
        self.first, self.last = math.inf, -math.inf

    @property
    def span(self) -> tuple[float, float] | None:
        return None if self.last == -math.inf else (self.first, self.last)

    def batches(self, msgs: list[RawMessage]) -> list[tuple[list[RawMessage], float]]:
        out: list[tuple[list[RawMessage], float]] = []
        limit = time.time() + self._future_s
        w = self.watermark
        begin, floor = 0, w
        for i, msg in enumerate(msgs):
            t = msg.received_at
            if t > limit:
                continue
            if t > w:
                if w == -math.inf:
                    floor = t
                elif t - floor > self._step_s and i > begin:
                    out.append((msgs[begin:i], w))
                    begin, floor = i, w
                w = t
            elif t < w - self._lateness_s:
                # Far older than the stream so far: not a late record but the next of the
                # logs this archive concatenates. Its own clock starts here.
                if i > begin:
                    out.append((msgs[begin:i], w))
                begin, floor, w = i, t, t
            self.first, self.last = min(self.first, t), max(self.last, t)
        if begin < len(msgs):
            # A batch before any time was read (all beyond the future limit): the wall clock.
            out.append((msgs[begin:], w if w != -math.inf else time.time()))
        self.watermark = w
        return out


def _feed(reader: FeedDecoder | csv_rows.CsvReader, data: bytes | None) -> list[RawMessage]:
    """A chunk to the file's reader (None: the end). An NMEA file is fed at time 0, so the
    decoder times line i at i µs (`_take` times untimed lines from that)."""
    if isinstance(reader, csv_rows.CsvReader):
        return reader.flush() if data is None else reader.feed(data)
    return reader.flush(0.0) if data is None else reader.feed(data, 0.0)


def _count_lines(name: str) -> int:
    """Lines of a file (decompressed), for the default start of an untimed one."""
    lines = 0
    for data, _ in Input(name).chunks():
        lines += data.count(b"\n")
    return lines


async def import_files(
    config: Config,
    names: list[str],
    *,
    source: str = "import",
    fmt: str | None = None,
    timing: Timing | None = None,
    progress: Callable[[Input], Any] | None = None,
    part: tuple[int, int] = (0, 1),
) -> Summary:
    """`aisfusion import`: a pipeline of its own on the configured stores, for these files
    (with `part`, for the vessels of that part only)."""
    pipeline = Pipeline(config, role="import")
    await pipeline.start()
    try:
        importer = Importer(
            pipeline, source=source, fmt=fmt, timing=timing, progress=progress, part=part
        )
        return await importer.run(names)
    finally:
        await pipeline.stop()
