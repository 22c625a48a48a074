-- The heaviest clients of every window (at most 20, requests each), so
-- that a later window can tell a client sending far more than it used to:
-- a model being copied through its API, or flooded. Bounded per window
-- however many clients send; rows go with their window (same
-- transaction).
CREATE TABLE window_clients (
    model         TEXT NOT NULL,
    model_version TEXT NOT NULL,
    window_seq    BIGINT NOT NULL,
    client        TEXT NOT NULL,
    requests      BIGINT NOT NULL,
    PRIMARY KEY (model, model_version, window_seq, client)
);
