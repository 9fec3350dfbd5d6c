-- positions becomes partitioned by time (RANGE on ts): one partition per day by default, created
-- ahead of time and on demand by the service (storage/partitions.py), so retention is a DROP of
-- whole partitions. The (mmsi, ts) primary key stays, now per partition: it keeps inserts
-- idempotent and is the index of "the track of one vessel between two times" (the partitions
-- outside the times are pruned). A BRIN index on ts serves time-window scans of all vessels
-- at almost no cost, rows arriving roughly in time order.
-- The rows of 0001's table move into partitions of one UTC day each.
ALTER TABLE positions RENAME TO positions_unpartitioned;
ALTER TABLE positions_unpartitioned RENAME CONSTRAINT positions_pkey TO positions_unpartitioned_pkey;

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
) PARTITION BY RANGE (ts);

CREATE INDEX positions_ts_brin ON positions USING brin (ts);

DO $$
DECLARE
    day date;
BEGIN
    FOR day IN SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM positions_unpartitioned LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF positions FOR VALUES FROM (%L) TO (%L)',
            'positions_' || to_char(day, 'YYYYMMDD'),
            to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00'
        );
    END LOOP;
END
$$;

INSERT INTO positions SELECT * FROM positions_unpartitioned;
DROP TABLE positions_unpartitioned;

-- The vessels that count: soft-deleted ones (deleted_at set) are left out. For analysts' SQL;
-- the service's own queries say what they want.
CREATE VIEW active_vessels AS SELECT * FROM vessels WHERE deleted_at IS NULL;
