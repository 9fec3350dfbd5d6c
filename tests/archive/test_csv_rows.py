"""CSV rows (MarineCadastre, DMA) into raw messages: layout detection, the round trip through
pyais and the vessel's own decoding, static data, rejects, and framing split anywhere."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyais.bit_vector import bit_vector
from pyais.messages import MSG_CLASS

from aisfusion.actors import fusion
from aisfusion.actors.batch import Batch
from aisfusion.actors.static import fuse_static, plain
from aisfusion.actors.vessel import Vessel
from aisfusion.archive.csv_rows import CsvReader, detect
from aisfusion.config import ActorsConfig, FusionConfig
from aisfusion.feeds.payload import position_fields, routing_fields
from aisfusion.messages import RawMessage, StaticReport

MC_HEADER = (
    b"MMSI,BaseDateTime,LAT,LON,SOG,COG,Heading,VesselName,IMO,CallSign,VesselType,Status,"
    b"Length,Width,Draft,Cargo,TransceiverClass"
)
DMA_HEADER = (
    b"# Timestamp,Type of mobile,MMSI,Latitude,Longitude,Navigational status,ROT,SOG,COG,"
    b"Heading,IMO,Callsign,Name,Ship type,Cargo type,Width,Length,"
    b"Type of position fixing device,Draught,Destination,ETA,Data source type,A,B,C,D"
)
MC_COLUMNS = MC_HEADER.decode().split(",")
DMA_COLUMNS = DMA_HEADER.decode().removeprefix("# ").split(",")
T0 = datetime(2023, 1, 1, tzinfo=UTC).timestamp()
DEG = 1 / 600_000  # AIS position resolution


def mc(**values: Any) -> str:
    """A MarineCadastre row: a moving class A vessel unless told otherwise."""
    row = {
        "MMSI": 367733230,
        "BaseDateTime": "2023-01-01T00:00:07",
        "LAT": 38.42409,
        "LON": -82.59932,
        "SOG": 10.3,
        "COG": 181.2,
        "Heading": "180.0",
        "VesselName": "EDITH",
        "IMO": "IMO9241061",
        "CallSign": "WDI7890",
        "VesselType": 52,
        "Status": 0,
        "Length": 37,
        "Width": 13,
        "Draft": 2.3,
        "Cargo": 52,
        "TransceiverClass": "A",
    } | values
    return ",".join(str(row[c]) for c in MC_COLUMNS)


def dma(**values: Any) -> str:
    row = {
        "Timestamp": "01/01/2023 00:00:07",
        "Type of mobile": "Class A",
        "MMSI": 219000873,
        "Latitude": 56.99091,
        "Longitude": 10.304543,
        "Navigational status": "Under way using engine",
        "ROT": 0.0,
        "SOG": 12.5,
        "COG": 241.8,
        "Heading": 241,
        "IMO": 9241061,
        "Callsign": "OXRB2",
        "Name": "HELGA",
        "Ship type": "Cargo",
        "Cargo type": "",
        "Width": 20,
        "Length": 150,
        "Type of position fixing device": "GPS",
        "Draught": 5.0,
        "Destination": "AARHUS",
        "ETA": "",
        "Data source type": "AIS",
        "A": 120,
        "B": 30,
        "C": 8,
        "D": 12,
    } | values
    return ",".join(str(row[c]) for c in DMA_COLUMNS)


def file(header: bytes, *rows: str, end: bytes = b"\n") -> bytes:
    return b"\n".join([header, *(r.encode() for r in rows)]) + end


def read(data: bytes, cuts: list[int] | None = None) -> tuple[list[RawMessage], CsvReader]:
    """Every message of a file fed in pieces cut at `cuts` (whole without), and the reader."""
    layout = detect(data.split(b"\n", 1)[0].rstrip(b"\r"))
    assert layout is not None
    reader = CsvReader(layout, "csv", Counter())
    out: list[RawMessage] = []
    start = 0
    for cut in [*(cuts or []), len(data)]:
        out += reader.feed(data[start:cut])
        start = cut
    out += reader.flush()
    return out, reader


def decoded(msg: RawMessage) -> dict[str, Any]:
    """The message as the vessel decodes it (pyais; position reports also by hand)."""
    fields: dict[str, Any] = (
        MSG_CLASS[msg.msg_type].from_vector(bit_vector(msg.payload, msg.fill_bits)).asdict()
    )
    by_hand = position_fields(msg.payload, msg.fill_bits, msg.msg_type)
    if by_hand is not None:
        assert by_hand == {k: plain(fields[k]) for k in by_hand}
    return fields


def positions(msgs: list[RawMessage]) -> list[RawMessage]:
    return [m for m in msgs if m.msg_type not in (5, 24)]


def static_report(msgs: list[RawMessage]) -> StaticReport | None:
    """The static data the vessel would make of these messages' static reports."""
    report: StaticReport | None = None
    for m in msgs:
        if m.msg_type in (5, 24):
            new, _ = fuse_static(m.mmsi, report, None, m.msg_type, decoded(m), m.received_at)
            report = new or report
    return report


# -- detection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        MC_HEADER,
        MC_HEADER.rsplit(b",", 1)[0],  # before 2018: no TransceiverClass
        b"\xef\xbb\xbf" + MC_HEADER.lower().replace(b",", b" , ") + b" \r",
        b"mmsi,base_date_time,longitude,latitude,sog,cog,heading,vessel_name,imo,call_sign,"
        b"vessel_type,status,length,width,draft,cargo,transceiver",  # 2025 files
    ],
)
def test_marinecadastre_headers_are_detected(header: bytes) -> None:
    layout = detect(header)
    assert layout is not None
    assert layout.name == "marinecadastre"
    assert layout.width == header.count(b",") + 1
    names = [n.strip().lower() for n in header.decode("utf-8", "replace").split(",")]
    assert names[layout.column("lon")] in ("lon", "longitude")
    assert layout.column("to_bow") == -1
    assert (layout.column("kind") == -1) == (b"transceiver" not in header.lower())


@pytest.mark.parametrize(
    "header",
    [
        DMA_HEADER,
        DMA_HEADER.removeprefix(b"# "),
        DMA_HEADER.upper().replace(b"# ", b"#"),
        DMA_HEADER.rsplit(b",A,", 1)[0],  # older files: no antenna columns
    ],
)
def test_dma_headers_are_detected(header: bytes) -> None:
    layout = detect(header)
    assert layout is not None
    assert layout.name == "dma"
    assert layout.column("time") == 0
    assert layout.column("mmsi") == 2
    assert layout.column("to_bow") == (22 if header.endswith(b",D") else -1)


@pytest.mark.parametrize(
    "header",
    [
        b"!AIVDM,1,1,,A,13u?etPv2;0n:dDPwUM1U1Cb069D,0*24",
        b"\\s:2573135,c:1671620143*0E\\!AIVDM,1,1,,A,13u?etPv2;0n:dDPwUM1U1Cb069D,0*24",
        b"mmsi,time,lat,lon",
        b"MMSI,BaseDateTime,SOG,COG",  # no position columns
        b'MMSI,"BaseDateTime,LAT,LON',  # bad quoting
        b"",
    ],
)
def test_other_lines_are_not_a_layout(header: bytes) -> None:
    assert detect(header) is None


# -- rows into messages ----------------------------------------------------------------------


def assert_position(msg: RawMessage, *, mmsi: int, ts: float, lat: float, lon: float) -> None:
    f = decoded(msg)
    assert (msg.mmsi, msg.msg_type) == (f["mmsi"], f["msg_type"]) == (mmsi, msg.msg_type)
    assert routing_fields(msg.payload) == (msg.msg_type, mmsi)
    assert abs(f["lat"] - lat) <= DEG / 2 + 1e-9
    assert abs(f["lon"] - lon) <= DEG / 2 + 1e-9
    assert (msg.received_at, msg.arrival, msg.has_tag_time) == (ts, ts, True)
    assert (msg.source, msg.station) == ("csv", None)
    if "second" in f:
        assert f["second"] == int(ts) % 60
        assert fusion.clock_offset_s(msg.received_at, f["second"]) == 0.0


def test_marinecadastre_rows_round_trip() -> None:
    msgs, reader = read(
        file(
            MC_HEADER,
            mc(),
            mc(
                MMSI=338075892,
                BaseDateTime="2023-01-01T12:34:56",
                LAT=-43.65,
                LON=170.25,
                SOG=0.0,
                COG=358.8,
                Heading=511.0,
                VesselName="PILOT BOAT",
                TransceiverClass="B",
            ),
        )
    )
    assert [m.msg_type for m in msgs] == [5, 1, 24, 24, 18]
    assert (reader.lines, reader.messages, reader.rejects) == (2, 5, {})
    a, b = positions(msgs)
    assert_position(a, mmsi=367733230, ts=T0 + 7, lat=38.42409, lon=-82.59932)
    fa = decoded(a)
    assert (fa["speed"], fa["course"], fa["heading"], plain(fa["status"])) == (10.3, 181.2, 180, 0)
    assert_position(b, mmsi=338075892, ts=T0 + 12 * 3600 + 34 * 60 + 56, lat=-43.65, lon=170.25)
    fb = decoded(b)
    assert (fb["speed"], fb["course"], fb["heading"], fb["second"]) == (0.0, 358.8, 511, 56)


def test_older_marinecadastre_files_are_class_a() -> None:
    header = MC_HEADER.rsplit(b",", 1)[0]
    msgs, _ = read(file(header, mc().rsplit(",", 1)[0]))
    assert [m.msg_type for m in msgs] == [5, 1]


def test_dma_rows_round_trip() -> None:
    msgs, reader = read(
        file(
            DMA_HEADER,
            dma(),
            dma(
                **{"Type of mobile": "Class B", "MMSI": 219012345, "Navigational status": ""},
                Timestamp="31/12/2023 23:59:59",
                Latitude=55.1,
                Longitude=-0.5,
                SOG="",
                COG="",
                Heading="",
                Name="LILLE MØ",
            ),
            end=b"\r\n",
        )
    )
    assert [m.msg_type for m in msgs] == [5, 1, 24, 24, 18]
    assert (reader.lines, reader.rejects) == (2, {})
    a, b = positions(msgs)
    assert_position(a, mmsi=219000873, ts=T0 + 7, lat=56.99091, lon=10.304543)
    fa = decoded(a)
    assert (fa["speed"], fa["course"], fa["heading"], plain(fa["status"])) == (12.5, 241.8, 241, 0)
    ts_b = datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert_position(b, mmsi=219012345, ts=ts_b, lat=55.1, lon=-0.5)
    fb = decoded(b)
    assert (fb["speed"], fb["course"], fb["heading"]) == (102.3, 360.0, 511)  # not available
    static_b = static_report(msgs[2:4])
    assert static_b is not None and static_b.name == "LILLE M?"  # not six-bit: "?"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Under way using engine", 0),
        ("At anchor", 1),
        ("Not under command", 2),
        ("Restricted maneuverability", 3),
        ("Restricted manoeuverability", 3),
        ("Constrained by her draught", 4),
        ("Moored", 5),
        ("Aground", 6),
        ("Engaged in fishing", 7),
        ("Under way sailing", 8),
        ("Reserved for future amendment [HSC]", 9),
        ("Reserved for future amendment [WIG]", 10),
        ("Power-driven vessel towing astern", 11),
        ("Power-driven vessel pushing ahead or towing alongside", 12),
        ("Reserved for future use", 13),
        ("AIS-SART", 14),
        ("Unknown value", 15),
        ("", 15),
    ],
)
def test_dma_navigational_status_words(text: str, code: int) -> None:
    msgs, _ = read(file(DMA_HEADER, dma(**{"Navigational status": text})))
    assert plain(decoded(positions(msgs)[0])["status"]) == code


@pytest.mark.parametrize(("status", "code"), [("5", 5), ("15", 15), ("", 15), ("99", 15)])
def test_marinecadastre_status_codes(status: str, code: int) -> None:
    msgs, _ = read(file(MC_HEADER, mc(Status=status)))
    assert plain(decoded(positions(msgs)[0])["status"]) == code


@pytest.mark.parametrize(
    ("sog", "cog", "heading", "expected"),
    [
        ("102.3", "360.0", "511.0", (102.3, 360.0, 511)),
        ("", "", "", (102.3, 360.0, 511)),
        ("Unknown", "nan", "inf", (102.3, 360.0, 511)),
        ("-1", "-0.5", "360", (102.3, 360.0, 511)),
        ("102.2", "359.96", "359.6", (102.2, 0.0, 0)),
        ("0.04", "0.0", "0", (0.0, 0.0, 0)),
    ],
)
def test_not_available_and_edge_values(
    sog: str, cog: str, heading: str, expected: tuple[float, float, int]
) -> None:
    msgs, _ = read(file(MC_HEADER, mc(SOG=sog, COG=cog, Heading=heading)))
    f = decoded(positions(msgs)[0])
    assert (f["speed"], f["course"], f["heading"]) == expected


def test_stations_aids_and_aircraft() -> None:
    msgs, reader = read(
        file(
            DMA_HEADER,
            dma(**{"Type of mobile": "Base Station", "MMSI": 2190064, "SOG": ""}),
            dma(**{"Type of mobile": "AtoN", "MMSI": 992191234}, Name="DROGDEN"),
            dma(**{"Type of mobile": "SAR airborne", "MMSI": 111219500}, SOG=140.0),
            dma(**{"Type of mobile": "Search and Rescue Transponder"}),
        )
    )
    assert [m.msg_type for m in msgs] == [4, 21, 9]
    assert reader.rejects == {"csv_not_vessel": 1}
    for m, mmsi in zip(msgs, (2190064, 992191234, 111219500), strict=True):
        assert_position(m, mmsi=mmsi, ts=T0 + 7, lat=56.99091, lon=10.304543)
    station, aid, aircraft = (decoded(m) for m in msgs)
    when = (station["year"], station["month"], station["day"], station["hour"], station["minute"])
    assert when == (2023, 1, 1, 0, 0)
    assert station["second"] == 7
    assert (aid["name"], aid["to_bow"], aid["to_starboard"]) == ("DROGDEN", 120, 12)
    assert (aircraft["speed"], aircraft["course"], aircraft["alt"]) == (140, 241.8, 4095)


# -- static data ---------------------------------------------------------------------------


def test_static_data_of_each_layout() -> None:
    msgs, _ = read(file(DMA_HEADER, dma()))
    assert static_report(msgs) == StaticReport(
        mmsi=219000873,
        ts=T0 + 7,
        name="HELGA",
        callsign="OXRB2",
        imo=9241061,
        ship_type=70,
        destination="AARHUS",
        to_bow=120,
        to_stern=30,
        to_port=8,
        to_starboard=12,
    )
    # No antenna position in the file: half the length and width each side.
    msgs, _ = read(file(DMA_HEADER, dma(A="", B="", C="", D="")))
    report = static_report(msgs)
    assert report is not None
    assert (report.to_bow, report.to_stern, report.to_port, report.to_starboard) == (75, 75, 10, 10)
    msgs, _ = read(file(MC_HEADER, mc()))
    assert static_report(msgs) == StaticReport(
        mmsi=367733230,
        ts=T0 + 7,
        name="EDITH",
        callsign="WDI7890",
        imo=9241061,
        ship_type=52,
        to_bow=19,
        to_stern=18,
        to_port=6,
        to_starboard=7,
    )


def test_class_b_static_data_is_type_24() -> None:
    msgs, _ = read(file(MC_HEADER, mc(TransceiverClass="B", VesselType=37)))
    parts = [decoded(m) for m in msgs if m.msg_type == 24]
    assert [p["partno"] for p in parts] == [0, 1]
    report = static_report(msgs)
    assert report is not None
    assert (report.name, report.callsign, report.ship_type, report.imo) == (
        "EDITH",
        "WDI7890",
        37,
        None,  # type 24 has no IMO
    )


def test_nothing_known_sends_no_static_data() -> None:
    unknown = {"Ship type": "Undefined", "Width": "", "Length": "", "A": "", "B": "", "C": ""}
    row = dma(**unknown, D="", IMO="Unknown", Callsign="Unknown", Name="", Destination="Unknown")
    msgs, _ = read(file(DMA_HEADER, row))
    assert [m.msg_type for m in msgs] == [1]


def at(seconds: float) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_static_data_goes_out_on_change_and_once_again_later() -> None:
    rows = [
        mc(BaseDateTime=at(0)),
        mc(BaseDateTime=at(10)),  # unchanged: nothing
        mc(BaseDateTime=at(20), VesselName="", CallSign=""),  # less said: nothing either
        mc(BaseDateTime=at(370)),  # six minutes after the change: once more
        mc(BaseDateTime=at(400)),
        mc(BaseDateTime=at(800)),
        mc(BaseDateTime=at(810), VesselName="EDITH II"),  # renamed: sent, and repeated
        mc(BaseDateTime=at(1000), VesselName="EDITH II"),
        mc(BaseDateTime=at(1170), VesselName="EDITH II"),
        mc(BaseDateTime=at(1300), VesselName="EDITH II"),
    ]
    msgs, _ = read(file(MC_HEADER, *rows))
    sent = [m for m in msgs if m.msg_type == 5]
    assert [m.received_at - T0 for m in sent] == [0, 370, 810, 1170]
    assert sent[0].payload == sent[1].payload != sent[2].payload == sent[3].payload
    # Each row's static report comes before its position, at the same time.
    kinds = [(m.msg_type, m.received_at) for m in msgs]
    assert kinds[:2] == [(5, T0), (1, T0)]
    assert all(kinds[i + 1] == (1, t) for i, (k, t) in enumerate(kinds) if k == 5)


def test_each_vessel_has_its_own_static_data() -> None:
    rows = [mc(), mc(MMSI=367000001), mc(), mc(MMSI=367000001, VesselName="OTHER")]
    msgs, _ = read(file(MC_HEADER, *rows))
    assert [(m.mmsi, m.msg_type) for m in msgs if m.msg_type == 5] == [
        (367733230, 5),
        (367000001, 5),
        (367000001, 5),
    ]


def test_rows_through_a_vessel() -> None:
    """The vessel takes each row as a position at its time (no clock correction) and the
    static data, a rename included once the repeat confirms it."""
    # Northbound at 10.3 knots: 0.00143 degrees of latitude in 30 s.
    lats = [38.42409 + 0.00143 * k for k in (0, 1, 2, 3, 14)]
    rows = [
        mc(BaseDateTime=at(0), LAT=lats[0], COG=0.0),
        mc(BaseDateTime=at(30), LAT=lats[1], COG=0.0, Heading=511),
        mc(BaseDateTime=at(60), LAT=lats[2], COG=0.0, VesselName="EDITH II"),
        mc(BaseDateTime=at(90), LAT=lats[3], COG=0.0, VesselName="EDITH II"),
        mc(BaseDateTime=at(420), LAT=lats[4], COG=0.0, VesselName="EDITH II"),
    ]
    msgs, _ = read(file(MC_HEADER, *rows))
    vessel = Vessel(367733230, 16)
    b = Batch(T0 + 420, ActorsConfig(), FusionConfig())
    names = []
    for m in msgs:
        vessel.ingest(m, b)
        names.append(vessel.static.name if vessel.static is not None else None)
    assert [p.ts - T0 for p in b.history] == [0, 30, 60, 90, 420]
    assert [p.lat for p in b.history] == pytest.approx(lats, abs=DEG)
    assert b.history[1].heading is None
    assert not b.rejects
    assert names[-1] == "EDITH II"
    assert "EDITH" in names  # until the rename was confirmed


# -- rejects -------------------------------------------------------------------------------


def test_every_bad_row_is_counted_once() -> None:
    good = mc()
    rows = [
        good + ",extra",  # one column too many
        good.rsplit(",", 1)[0],  # one too few
        good.replace("EDITH", '"EDITH'),  # unterminated quote
        "",  # empty: not a line
        mc(MMSI="abc"),
        mc(MMSI=0),
        mc(MMSI=1_000_000_000),
        mc(BaseDateTime="2023-13-01T00:00:00"),
        mc(BaseDateTime="2023-01-01"),
        mc(BaseDateTime=""),
        mc(LAT=91.0),
        mc(LON=181.0),
        mc(LAT=-90.5),
        mc(LON="abc"),
        mc(LAT="nan"),
        mc(TransceiverClass="X"),
        "\r",
        good,
    ]
    msgs, reader = read(file(MC_HEADER, *rows))
    assert reader.rejects == {
        "csv_columns": 3,
        "csv_bad_mmsi": 3,
        "csv_bad_time": 3,
        "csv_bad_position": 5,
        "csv_not_vessel": 1,
    }
    assert reader.lines == 16
    assert [m.msg_type for m in msgs] == [5, 1]
    assert reader.messages == 2


def test_dma_bad_times_and_kinds() -> None:
    rows = [
        dma(Timestamp="2023-01-01 00:00:00"),  # not DMA's form
        dma(Timestamp="32/01/2023 00:00:00"),
        dma(**{"Type of mobile": "Undefined"}),
    ]
    _, reader = read(file(DMA_HEADER, *rows))
    assert reader.rejects == {"csv_bad_time": 2, "csv_not_vessel": 1}


def test_quoted_fields() -> None:
    row = dma(Name='"NORD, SYD"', Destination='"SAID ""X"""')
    msgs, reader = read(file(DMA_HEADER, row))
    assert reader.rejects == {}
    report = static_report(msgs)
    assert report is not None
    assert (report.name, report.destination) == ("NORD, SYD", 'SAID "X"')


# -- framing -------------------------------------------------------------------------------

SAMPLE = file(
    DMA_HEADER,
    dma(),
    dma(Name='"ÆRØ, FÆRGE"', Timestamp="01/01/2023 00:00:09"),
    "",
    dma(**{"Type of mobile": "Class B", "MMSI": 219000001}),
    dma(MMSI="x"),
    dma(Latitude=91),
    end=b"\r\n" + dma(Timestamp="01/01/2023 00:10:00").encode(),  # no newline at the end
)


def outcome(msgs: list[RawMessage], reader: CsvReader) -> tuple[Any, ...]:
    return msgs, reader.lines, reader.messages, dict(reader.rejects)


def test_split_at_every_offset_changes_nothing() -> None:
    whole = outcome(*read(SAMPLE))
    assert whole[1:] == (6, 9, {"csv_bad_mmsi": 1, "csv_bad_position": 1})
    for cut in range(len(SAMPLE) + 1):
        assert outcome(*read(SAMPLE, [cut])) == whole, cut


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, len(SAMPLE)), max_size=12))
def test_split_anywhere_changes_nothing(cuts: list[int]) -> None:
    assert outcome(*read(SAMPLE, sorted(cuts))) == outcome(*read(SAMPLE))


def fields_of(row: str) -> st.SearchStrategy[bytes]:
    """Rows of the layout of `row`: each field its value in `row` or arbitrary bytes."""
    return st.tuples(
        *(st.one_of(st.just(v.encode()), st.binary(max_size=12)) for v in row.split(","))
    ).map(b",".join)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([(MC_HEADER, mc()), (DMA_HEADER, dma())]).flatmap(
        lambda layout: st.tuples(
            st.just(layout[0]),
            st.lists(st.one_of(fields_of(layout[1]), st.binary(max_size=60)), max_size=8),
        )
    )
)
def test_arbitrary_rows_are_counted_never_raised(case: tuple[bytes, list[bytes]]) -> None:
    header, rows = case
    msgs, reader = read(header + b"\n" + b"\n".join(rows))
    reported = sum(1 for m in msgs if m.msg_type not in (5, 24))
    assert reader.lines == reported + sum(reader.rejects.values())
    assert reader.messages == len(msgs)
    for m in msgs:
        decoded(m)
