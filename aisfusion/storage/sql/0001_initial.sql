-- Positions history: one row per accepted position, keyed by vessel and time so a retried
-- batch can never duplicate a row (inserts use ON CONFLICT DO NOTHING).
CREATE TABLE positions (
    mmsi        integer          NOT NULL,
    ts          timestamptz      NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    sog         real,
    cog         real,
    heading     smallint,
    nav_status  smallint,
    msg_type    smallint         NOT NULL,
    source      text             NOT NULL,
    station     text,
    PRIMARY KEY (mmsi, ts)
);

-- One row per vessel: static and voyage data, first/last seen; deleted_at is the soft delete
-- of vessels inactive for long (cleared when they report again).
CREATE TABLE vessels (
    mmsi          integer PRIMARY KEY,
    name          text,
    callsign      text,
    imo           integer,
    ship_type     smallint,
    destination   text,
    to_bow        smallint,
    to_stern      smallint,
    to_port       smallint,
    to_starboard  smallint,
    first_seen    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    deleted_at    timestamptz
);
CREATE INDEX vessels_last_seen ON vessels (last_seen);
