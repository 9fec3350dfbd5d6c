"""`aisfusion import` on the real servers: every recorded file with receive times stores all
its valid position reports (against an independent count, tests/archive/corpus.py), files
without times follow the documented rule, a second import stores nothing new, compressed and
piped archives read the same, and the live picture only moves forward."""

from __future__ import annotations

import bz2
import fcntl
import gzip
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import zstandard

from aisfusion.archive.importer import BEYOND_RETENTION, NO_TIME, Summary, Timing, import_files
from aisfusion.config import Config
from aisfusion.messages import Position
from aisfusion.storage.redis import RedisStore
from tests.archive.corpus import expected_positions, has_times
from tests.conftest import SHARED_DATA
from tests.dbs import fresh_database, unique_name

CLI = [sys.executable, "-m", "aisfusion.cli"]
# Rejects that refuse a valid position report (the rest refuse what is not one, or a copy).
# (NO_TIME is not among them: the independent count has no time for such a report either.)
REFUSING = ("jump", "too_late", "future_time", BEYOND_RETENTION)


def recorded() -> list[Path]:
    return sorted(p for p in SHARED_DATA.iterdir() if p.suffix != ".md")


TIMED = [p for p in recorded() if has_times(p)]
UNTIMED = [p for p in recorded() if not has_times(p)]


class Stores(msgspec.Struct):
    pg_url: str
    redis_url: str
    prefix: str
    spool: str

    def config(self, **sections: dict[str, Any]) -> Config:
        raw = msgspec.to_builtins(Config())
        raw["postgres"]["url"] = self.pg_url
        raw["redis"].update(url=self.redis_url, key_prefix=self.prefix)
        raw["spool"]["dir"] = self.spool
        for section, values in sections.items():
            raw[section].update(values)
        return msgspec.convert(raw, Config)

    def settings(self) -> list[str]:
        """The same as `--set` arguments of the command line."""
        return [
            *("--set", f"postgres.url={self.pg_url}"),
            *("--set", f"redis.url={self.redis_url}"),
            *("--set", f"redis.key_prefix={self.prefix}"),
            *("--set", f"spool.dir={self.spool}"),
        ]


async def fresh_stores(servers: Any, spool: Path) -> Stores:
    """A database and a key prefix of their own on the test servers."""
    return Stores(
        await fresh_database(servers.postgres_url),
        servers.redis_url,
        unique_name("imp") + ":",
        str(spool),
    )


@pytest.fixture
async def stores(servers: Any, tmp_path: Path) -> Stores:
    return await fresh_stores(servers, tmp_path / "spool")


async def rows(pg_url: str) -> list[tuple[int, float, float, float]]:
    conn = await asyncpg.connect(pg_url)
    try:
        found = await conn.fetch(
            "SELECT mmsi, extract(epoch FROM ts)::float8 AS t, lat, lon FROM positions"
        )
    finally:
        await conn.close()
    return [(r["mmsi"], r["t"], r["lat"], r["lon"]) for r in found]


def test_the_corpus_has_files_of_both_kinds() -> None:
    # Tag blocks, NAIS trailers and $PGHP all among the timed files (else the test below
    # would prove less than it says).
    names = {p.name for p in TIMED}
    assert {"aisdb-20211101.nm4", "maritime-20181101.log", "dma-denmark-2013.nmea"} <= names
    assert "aishub-2015.nmea" in {p.name for p in UNTIMED}


@pytest.mark.parametrize("path", TIMED, ids=lambda p: p.name)
async def test_a_timed_file_stores_every_valid_position_report(path: Path, stores: Stores) -> None:
    expected = expected_positions(path)
    summary = await import_files(stores.config(), [str(path)])
    assert summary.ok, summary.files[0].error
    stored = await rows(stores.pg_url)
    assert summary.positions_stored == len(stored)
    refused = sum(summary.rejects.get(reason, 0) for reason in REFUSING)
    # Every valid report is a row, but for the ones refused by a reason the summary names
    # (in this corpus: two junk MMSIs, 1 and 400000000, heard all over the world: jumps).
    assert len(stored) + refused == len(expected), summary.rejects
    assert refused <= max(2, len(expected) // 1000), summary.rejects
    # The rows are those reports: the same vessels at the same times (to the µs spread
    # of reports sharing a time) and positions (to AIS resolution).
    found = {(m, round(t), round(lat, 4), round(lon, 4)) for m, t, lat, lon in stored}
    wanted = {(m, round(t), round(lat, 4), round(lon, 4)) for m, t, lat, lon in expected}
    assert found <= wanted
    if stored:
        # The span is of receive times; a row is timed by its transmission, up to 30 s
        # earlier.
        assert summary.span is not None
        assert summary.span[0] - 30 <= min(t for _, t, _, _ in stored) <= summary.span[1]


async def test_a_second_import_stores_nothing_new(stores: Stores) -> None:
    path = SHARED_DATA / "dma-denmark-2013.nmea"
    first = await import_files(stores.config(), [str(path)])
    before = await rows(stores.pg_url)
    second = await import_files(stores.config(), [str(path)])
    assert first.positions_stored == len(before) > 20_000
    assert second.positions_stored == 0
    assert second.decided > 20_000  # decided again, and found in history already
    assert sorted(await rows(stores.pg_url)) == sorted(before)


async def test_a_file_without_times_is_refused_unless_told_how_to_time_it(
    stores: Stores,
) -> None:
    path = SHARED_DATA / "pyais-nmea_data_sample.nmea"
    refused = await import_files(stores.config(), [str(path)])
    assert not refused.ok
    error = refused.files[0].error
    assert error is not None
    assert "no receive times" in error
    assert "--assume-rate" in error
    assert await rows(stores.pg_url) == []
    assert refused.rejects[NO_TIME] == refused.messages

    start = 1_600_000_000.0
    timed = await import_files(stores.config(), [str(path)], timing=Timing(2.0, start))
    assert timed.ok
    stored = await rows(stores.pg_url)
    assert len(stored) == timed.positions_stored > 20
    lines = path.read_bytes().count(b"\n")
    # Line i at start + i / rate: within the file's span at that rate.
    assert all(start <= t <= start + lines / 2.0 for _, t, _, _ in stored)
    again = await import_files(stores.config(), [str(path)], timing=Timing(2.0, start))
    assert again.positions_stored == 0  # the same times again: nothing new


async def test_records_beyond_retention_are_refused_not_stored_then_dropped(
    stores: Stores,
) -> None:
    config = stores.config(retention={"history_days": 30})
    summary = await import_files(config, [str(SHARED_DATA / "aisdb-20211101.nm4")])
    assert await rows(stores.pg_url) == []
    assert summary.rejects[BEYOND_RETENTION] > 900


async def test_the_live_picture_only_moves_forward(stores: Stores, servers: Any) -> None:
    """Older records than a vessel's live record go to history alone; a vessel without one
    gets the newest position of the archive."""
    path = SHARED_DATA / "aisdb-20211101.nm4"
    expected = expected_positions(path)
    newest: dict[int, float] = {}
    for mmsi, t, _, _ in expected:
        newest[mmsi] = max(t, newest.get(mmsi, 0.0))
    ahead = next(iter(sorted(newest)))  # this vessel is live already, with a newer report
    config = stores.config()
    redis = RedisStore(servers.redis_url, stores.prefix)
    await redis.connect()
    try:
        now = time.time()
        await redis.write_live(
            [Position(ahead, now, 10.0, 20.0, None, None, None, None, 1, "live", None, now)]
        )
        await import_files(config, [str(path)])
        records = await redis.live_records(sorted(newest))
    finally:
        await redis.close()
    assert float(records[ahead]["lat"]) == 10.0  # not moved back in time
    assert float(records[ahead]["ts"]) == pytest.approx(now, abs=1e-3)
    others = [m for m in newest if m != ahead]
    assert all(m in records for m in others)
    assert all(float(records[m]["ts"]) == pytest.approx(newest[m], abs=1.0) for m in others)


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, "import", *args], input=stdin, capture_output=True, timeout=300, check=False
    )


def summary_of(done: subprocess.CompletedProcess[bytes]) -> Summary:
    return msgspec.json.decode(done.stdout, type=Summary)


async def test_compressed_and_piped_archives_read_the_same(stores: Stores, tmp_path: Path) -> None:
    data = (SHARED_DATA / "aisdb-20211101.nm4").read_bytes()
    expected = len(expected_positions(SHARED_DATA / "aisdb-20211101.nm4"))
    # Names that do not say the compression: it is told by the content.
    (tmp_path / "a.gz").write_bytes(gzip.compress(data))
    (tmp_path / "a.log").write_bytes(bz2.compress(data))
    (tmp_path / "a.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    for name, compression in (("a.gz", "gzip"), ("a.log", "bzip2"), ("a.zst", "zstd")):
        done = run_cli(str(tmp_path / name), "--json", *stores.settings())
        assert done.returncode == 0, done.stderr.decode()
        summary = summary_of(done)
        assert summary.files[0].compression == compression
        assert summary.messages == 997 - 18  # the 18 two-fragment groups are one message
        assert len(await rows(stores.pg_url)) == expected
    piped = run_cli("-", "--json", "--source", "piped", *stores.settings(), stdin=data)
    assert piped.returncode == 0, piped.stderr.decode()
    assert summary_of(piped).positions_stored == 0  # the same reports: in history already


def test_an_unreadable_file_fails_the_command_and_the_others_go_in(stores: Stores) -> None:
    good = SHARED_DATA / "libais-tagblock.nmea"
    done = run_cli("/nonexistent/archive.nmea", str(good), *stores.settings())
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "/nonexistent/archive.nmea" in err
    assert "No such file" in err
    out = done.stdout.decode()
    assert "positions stored: 3" in out
    assert "libais-tagblock.nmea: nmea, 5 lines" in out


def test_bad_arguments_are_named() -> None:
    done = run_cli("x.nmea", "--assume-rate", "fast")
    assert done.returncode == 2
    assert "--assume-rate" in done.stderr.decode()
    done = run_cli("x.nmea", "--start-time", "yesterday")
    assert done.returncode == 2
    assert "--start-time" in done.stderr.decode()


def test_the_text_summary_names_rejects_and_span(stores: Stores) -> None:
    done = run_cli(str(SHARED_DATA / "dma-denmark-2013.nmea"), *stores.settings())
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "time span: 2013-11-12" in out
    assert "not_ais" in out  # the DMA file's other NMEA sentences


MARINECADASTRE = (
    "MMSI,BaseDateTime,LAT,LON,SOG,COG,Heading,VesselName,IMO,CallSign,VesselType,Status,"
    "Length,Width,Draft,Cargo,TransceiverClass"
)
DMA = (
    "# Timestamp,Type of mobile,MMSI,Latitude,Longitude,Navigational status,ROT,SOG,COG,"
    "Heading,IMO,Callsign,Name,Ship type,Cargo type,Width,Length,"
    "Type of position fixing device,Draught,Destination,ETA,Data source type,A,B,C,D"
)


def tracks(vessels: int, reports: int) -> list[tuple[int, float, float, float, str]]:
    """Vessels steaming north at 10 kn, one report a minute: (mmsi, t, lat, lon, class)."""
    start = 1_672_531_200.0  # 2023-01-01
    return [
        (367_000_000 + v, start + i * 60, 29.0 + v * 0.1 + i * 10 / 3600, -90.0 + v * 0.1,
         "A" if v % 2 == 0 else "B")
        for v in range(vessels)
        for i in range(reports)
    ]  # fmt: skip


def marinecadastre_csv(rows: list[tuple[int, float, float, float, str]]) -> str:
    lines = [MARINECADASTRE]
    for mmsi, t, lat, lon, kind in rows:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
        lines.append(
            f"{mmsi},{when},{lat:.5f},{lon:.5f},10.0,0.0,0,SHIP {mmsi % 100},IMO9241061,"
            f"WDA{mmsi % 10000},70,0,100,20,5.0,70,{kind}"
        )
    lines += [
        "36700x001,2023-01-01T00:00:00,29.0,-90.0,10.0,0.0,0,,,,,,,,,,A",  # not a number
        "367999999,yesterday,29.0,-90.0,10.0,0.0,0,,,,,,,,,,A",
        "367999998,2023-01-01T00:00:00,91.0,181.0,10.0,0.0,0,,,,,,,,,,A",
        "367999997,2023-01-01T00:00:00,29.0",
    ]
    return "\n".join(lines) + "\n"


def dma_csv(rows: list[tuple[int, float, float, float, str]]) -> str:
    lines = [DMA]
    for mmsi, t, lat, lon, kind in rows:
        when = time.strftime("%d/%m/%Y %H:%M:%S", time.gmtime(t))
        lines.append(
            f"{when},Class {kind},{mmsi},{lat:.6f},{lon:.6f},Under way using engine,0.0,10.0,"
            f'0.0,0,9241061,OXYZ{mmsi % 100},"SHIP, {mmsi % 100}",Cargo,,20,100,GPS,5.0,'
            "AARHUS,01/01/2023 12:00:00,AIS,50,50,10,10"
        )
    lines.append(
        "01/01/2023 00:00:00,Base Station,2190067,55.0,10.0,Unknown value,,,,,,,,,,,,,,,,AIS,,,,"
    )
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("layout", ["marinecadastre", "dma"])
async def test_a_csv_export_stores_every_valid_row(
    layout: str, stores: Stores, tmp_path: Path
) -> None:
    wanted = tracks(vessels=6, reports=40)
    text = marinecadastre_csv(wanted) if layout == "marinecadastre" else dma_csv(wanted)
    path = tmp_path / "export.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    done = run_cli(str(path), "--json", *stores.settings())
    assert done.returncode == 0, done.stderr.decode()
    summary = summary_of(done)
    assert summary.files[0].format == f"csv/{layout}"
    stored = await rows(stores.pg_url)
    assert summary.positions_stored == len(stored) == len(wanted)
    assert {(m, round(t)) for m, t, _, _ in stored} == {(m, round(t)) for m, t, *_ in wanted}
    assert summary.static_reports > 0
    if layout == "marinecadastre":
        for reason in ("csv_bad_mmsi", "csv_bad_time", "csv_bad_position", "csv_columns"):
            assert summary.rejects[reason] == 1, summary.rejects
    else:
        assert summary.rejects["not_vessel_data"] == 1  # the base station's report


def test_format_csv_on_an_nmea_file_is_refused(stores: Stores) -> None:
    done = run_cli(str(SHARED_DATA / "libais-tagblock.nmea"), "--format", "csv", *stores.settings())
    assert done.returncode == 1
    assert "not a CSV layout aisfusion knows" in done.stderr.decode()


def test_a_terminal_shows_a_progress_bar(stores: Stores) -> None:
    """On a terminal (a pseudo-terminal here, as a person's shell gives) stderr carries a bar
    per file: its name, the bytes read, lines and rejects."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    path = SHARED_DATA / "gfw-listener-tagblock.nmea"
    try:
        done = subprocess.run(
            [*CLI, "import", str(path), *stores.settings()],
            stderr=follower,
            stdout=subprocess.PIPE,
            timeout=300,
            check=False,
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other side closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    text = shown.decode(errors="replace")
    assert path.name in text
    assert "100%" in text
    assert "lines=10,000" in text
    assert "rejects=" in text


async def test_jobs_split_the_vessels_and_sum_to_one_process(
    stores: Stores, servers: Any, tmp_path: Path
) -> None:
    """`--jobs 3`: three processes, each deciding its third of the vessels, store what one
    does, and their summary is one process's (lines and framing rejects counted once)."""
    path = SHARED_DATA / "gfw-listener-tagblock.nmea"
    alone = await import_files(stores.config(), [str(path)])
    single = sorted(await rows(stores.pg_url))
    other = await fresh_stores(servers, tmp_path / "spool-jobs")
    done = run_cli(str(path), "--json", "--jobs", "3", *other.settings())
    assert done.returncode == 0, done.stderr.decode()
    split = summary_of(done)
    assert sorted(await rows(other.pg_url)) == single
    assert (split.lines, split.messages) == (alone.lines, alone.messages)
    assert split.positions_stored == alone.positions_stored == len(single)
    assert split.rejects == alone.rejects
    assert split.span == alone.span
