"""Feed NMEA lines to a TCP listener: recorded files, any line source, or a live simulated fleet.

Pacing is scheduled against the start time in small batches (every :data:`TICK_S`), so a rate
holds on average without per-line sleeps and without drift; unpaced sends go out in large chunks
under the transport's flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
from itertools import islice
from os import PathLike
from typing import IO, Final, Protocol

from aisfusion.traffic.nmea_out import tag_block
from aisfusion.traffic.receivers import Network, Receiver
from aisfusion.traffic.simulator import Fleet

logger = logging.getLogger(__name__)

TICK_S: Final = 0.01
# Allowance left unused (a source with nothing to send, a stalled peer) is kept for at most
# this long, so a paced send never bursts far above its rate when lines become available.
BURST_S: Final = 0.1
CHUNK_LINES: Final = 1024
PROGRESS_EVERY_S: Final = 1.0
_QUEUE_LINES: Final = 8192


class _Source(Protocol):
    async def take(self, n: int) -> list[str]:
        """Up to about ``n`` lines, waiting only while none are available; [] at the end."""
        ...

    async def aclose(self) -> None: ...


class _IterSource:
    def __init__(self, lines: Iterable[str]) -> None:
        self._it = iter(lines)

    async def take(self, n: int) -> list[str]:
        return list(islice(self._it, n))

    async def aclose(self) -> None:
        return None


class _AsyncIterSource:
    """Pumps an async iterable through a bounded queue; ``None`` marks the end.

    Taking what is already queued, instead of awaiting ``n`` items, keeps a slow live source
    from holding lines back until a whole chunk has accumulated.
    """

    def __init__(self, lines: AsyncIterable[str]) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(_QUEUE_LINES)
        self._error: Exception | None = None
        self._done = False
        self._task = asyncio.create_task(self._pump(lines))

    async def _pump(self, lines: AsyncIterable[str]) -> None:
        try:
            async for line in lines:
                await self._queue.put(line)
        except Exception as exc:  # handed to the consumer, raised there
            self._error = exc
            # The send is failing anyway: make room for the end marker without waiting.
            while not self._queue.empty():
                self._queue.get_nowait()
        await self._queue.put(None)

    async def take(self, n: int) -> list[str]:
        if self._done:
            return []
        out: list[str] = []
        item = await self._queue.get()
        while item is not None:
            out.append(item)
            if len(out) >= n or self._queue.empty():
                return out
            item = self._queue.get_nowait()
        self._done = True
        if self._error is not None:
            raise self._error
        return out

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _source(lines: Iterable[str] | AsyncIterable[str]) -> _Source:
    if isinstance(lines, AsyncIterable):
        return _AsyncIterSource(lines)
    return _IterSource(lines)


def _check_rate(rate: float | None) -> None:
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of lines/s, got {rate!r}")


def _encode(lines: list[str]) -> bytes:
    # latin-1 round-trips every byte read by read_file_lines.
    return "".join([line.rstrip("\r\n") + "\r\n" for line in lines]).encode("latin-1", "replace")


async def _pump(
    writer: asyncio.StreamWriter,
    source: _Source,
    rate: float | None,
    progress: Callable[[int], None] | None,
) -> int:
    loop = asyncio.get_running_loop()
    start = last_progress = loop.time()
    sent = forfeited = 0
    tick = 0
    burst = max(1, math.ceil(rate * BURST_S)) if rate is not None else 0
    while True:
        if rate is None:
            want = CHUNK_LINES
        else:
            # Allowance from the start time (plus one line so slow rates begin at once):
            # lateness is made up on the next tick rather than accumulating as drift.
            want = math.floor(rate * (loop.time() - start)) + 1 - sent - forfeited
            if want > burst:
                forfeited += want - burst
                want = burst
        if want > 0:
            batch = await source.take(want)
            if not batch:
                break
            writer.write(_encode(batch))
            await writer.drain()
            sent += len(batch)
            if rate is None:
                # drain() only yields under back-pressure; let other tasks run between chunks.
                await asyncio.sleep(0)
        now = loop.time()
        if progress is not None and now - last_progress >= PROGRESS_EVERY_S:
            progress(sent)
            last_progress = now
        if rate is not None:
            tick = max(tick + 1, math.floor((now - start) / TICK_S) + 1)
            await asyncio.sleep(start + tick * TICK_S - now)
    if progress is not None:
        progress(sent)
    return sent


async def _send(
    source: _Source,
    host: str,
    port: int,
    rate: float | None,
    progress: Callable[[int], None] | None,
) -> int:
    try:
        _, writer = await asyncio.open_connection(host, port)
        try:
            sent = await _pump(writer, source, rate, progress)
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            writer.close()
            # A peer that already went away has nothing left to tell us.
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    finally:
        await source.aclose()
    logger.info("sent %d lines to %s:%d", sent, host, port)
    return sent


async def send_lines(
    lines: Iterable[str] | AsyncIterable[str],
    host: str,
    port: int,
    *,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send ``lines`` (each terminated by CRLF) over one TCP connection; return how many.

    ``rate`` caps lines per second; ``progress`` receives the running count about once a second
    and once at the end.
    """
    _check_rate(rate)
    return await _send(_source(lines), host, port, rate, progress)


def read_file_lines(path: str | PathLike[str]) -> Iterator[str]:
    """A recorded NMEA file's non-empty lines, line endings stripped, read as latin-1."""
    with open(path, encoding="latin-1", newline="") as f:
        for raw in f:
            line = raw.rstrip("\r\n")
            if line:
                yield line


class _FleetSource:
    """A fleet advancing with the wall clock; lines tag-blocked with the time they are taken,
    or, with a `network`, as each simulated receiver stamped them (its clock, its delay).

    If the consumer (a rate cap, or a slow peer) falls behind, the oldest reports beyond
    ``max_backlog`` lines are dropped whole, so positions stay current and a multi-fragment
    message is never split. Deliveries still in flight at the end are not sent.
    """

    def __init__(
        self,
        fleet: Fleet,
        duration_s: float,
        station: str | None,
        max_backlog: int,
        network: Network | None = None,
    ) -> None:
        self._fleet = fleet
        self._network = network
        self._duration = duration_s
        self._station = station
        self._max_backlog = max_backlog
        self._elapsed = 0.0
        self._backlog: deque[list[str]] = deque()
        self._queued = 0
        self._dropped = 0
        self._last_warning = -math.inf
        self._start = asyncio.get_running_loop().time()

    def _advance(self) -> None:
        loop = asyncio.get_running_loop()
        target = min(loop.time() - self._start, self._duration)
        if target > self._elapsed:
            if self._network is not None:
                for delivery in self._network.step(target - self._elapsed):
                    self._backlog.append(delivery.lines)
                    self._queued += len(delivery.lines)
            else:
                for report in self._fleet.step(target - self._elapsed):
                    self._backlog.append(report.sentences)
                    self._queued += len(report.sentences)
            self._elapsed = target
        while self._queued > self._max_backlog:
            self._queued -= len(self._backlog.popleft())
            self._dropped += 1
        if self._dropped and loop.time() - self._last_warning >= 10.0:
            logger.warning("simulator behind its consumer: %d reports dropped", self._dropped)
            self._last_warning = loop.time()

    async def take(self, n: int) -> list[str]:
        self._advance()
        while not self._backlog:
            if self._elapsed >= self._duration:
                return []
            source = self._network if self._network is not None else self._fleet
            wait = min(source.next_due - self._fleet.now, self._duration - self._elapsed)
            await asyncio.sleep(min(max(wait, TICK_S), 0.5))
            self._advance()
        out: list[str] = []
        stamp = time.time()  # the wall time of sending, so the service sees current times
        while self._backlog and len(out) < n:
            sentences = self._backlog.popleft()
            self._queued -= len(sentences)
            if self._network is not None:
                out.extend(sentences)  # tag-blocked by their receivers
            else:
                out.extend(tag_block(s, station=self._station, t=stamp) for s in sentences)
        return out

    async def aclose(self) -> None:
        if self._dropped:
            logger.warning("simulator dropped %d reports in total", self._dropped)


async def simulate(
    host: str,
    port: int,
    *,
    vessels: int,
    rate: float | None,
    duration_s: float,
    seed: int,
    station: str | None,
    progress: Callable[[int], None] | None = None,
    receivers: Sequence[Receiver] | None = None,
    truth: str | PathLike[str] | IO[str] | None = None,
) -> int:
    """Stream a simulated fleet live for ``duration_s`` of wall time; return lines sent.

    The fleet's clock starts at the current UNIX time and advances with the wall clock;
    ``rate`` caps lines per second: reports beyond about a second's backlog are dropped (and
    logged), and the stream may run up to that second past ``duration_s`` to send the rest.

    With `receivers`, every transmission is heard by each simulated receiver (loss, noise,
    delay, duplicates, clock skew, faults: `aisfusion.traffic.receivers`); with `truth` (a path
    or an open text file), the true position of every transmitted position report is written
    there as CSV (t, mmsi, lat, lon, sog, cog).
    """
    _check_rate(rate)
    with contextlib.ExitStack() as stack:
        if isinstance(truth, str | PathLike):
            # A local file, opened once; its rows are small writes as the fleet advances.
            truth = stack.enter_context(open(truth, "w", newline="", encoding="utf-8"))  # noqa: ASYNC230
        fleet = Fleet(vessels, seed=seed, start_time=time.time())
        network = None
        if receivers is not None or truth is not None:
            if receivers is None:
                receivers = [Receiver(station or "sim-rx")]
            network = Network(fleet, receivers, seed=seed, truth=truth)
        # About a second of output: a capped stream stays current and ends close to duration_s.
        max_backlog = max(10, math.ceil(rate)) if rate is not None else 100_000
        source = _FleetSource(fleet, duration_s, station, max_backlog, network)
        return await _send(source, host, port, rate, progress)
