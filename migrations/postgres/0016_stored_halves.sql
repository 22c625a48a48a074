-- The messages of both halves of a window's (or a reference's)
-- request/response pairs, and of halves scored alone, per stream, as runs
-- of offsets ("12-40,42"). A pair is stored under its later half's
-- position. A restart can read one half again without the other, which
-- was committed with the window: when the halves came from two partitions
-- or topics, or the response was logged first. This tells that half from
-- one whose other half never came. A row per window and stream, written in
-- the window's transaction.
CREATE TABLE stored_halves (
    model        TEXT NOT NULL,
    scope        TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    stream       TEXT NOT NULL,
    first_offset BIGINT NOT NULL,
    last_offset  BIGINT NOT NULL,
    offsets      TEXT NOT NULL,
    PRIMARY KEY (model, scope, seq, stream)
);
CREATE INDEX stored_halves_by_stream ON stored_halves (stream, last_offset);
