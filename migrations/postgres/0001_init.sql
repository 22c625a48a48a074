-- References: the events each model is compared against, shared by every
-- instance and reused across restarts.
CREATE TABLE model_references (
    model       TEXT PRIMARY KEY,
    origin      TEXT NOT NULL,          -- 'stream' (first N events) or 'import:<file>'
    n_events    BIGINT NOT NULL,
    events      JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

-- Per model and scope ('reference' or 'version:<v>') and per stream
-- (Kafka topic/partition), the highest offset whose event is already inside a
-- stored reference or window. A replay skips what this covers.
CREATE TABLE progress (
    model       TEXT NOT NULL,
    scope       TEXT NOT NULL,
    stream      TEXT NOT NULL,
    high_water  BIGINT NOT NULL,
    PRIMARY KEY (model, scope, stream)
);

CREATE TABLE windows (
    model         TEXT NOT NULL,
    model_version TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    window_start  TIMESTAMPTZ NOT NULL,
    window_end    TIMESTAMPTZ NOT NULL,
    n_events      BIGINT NOT NULL,
    close_reason  TEXT NOT NULL,
    device        TEXT NOT NULL,
    error         TEXT,
    scored_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model, model_version, seq)
);

CREATE TABLE scores (
    model         TEXT NOT NULL,
    model_version TEXT NOT NULL,
    window_seq    BIGINT NOT NULL,
    detector      TEXT NOT NULL,
    feature       TEXT NOT NULL,
    family        TEXT NOT NULL,
    test          TEXT NOT NULL,
    method        TEXT NOT NULL,
    value         DOUBLE PRECISION NOT NULL,
    p_value       DOUBLE PRECISION NOT NULL,
    threshold     DOUBLE PRECISION NOT NULL,
    n_reference   BIGINT NOT NULL,
    n_window      BIGINT NOT NULL,
    window_start  TIMESTAMPTZ NOT NULL,
    window_end    TIMESTAMPTZ NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model, model_version, window_seq, detector, feature)
);
CREATE INDEX scores_time ON scores (model, window_end);

CREATE TABLE alerts (
    id            BIGSERIAL PRIMARY KEY,
    model         TEXT NOT NULL,
    model_version TEXT NOT NULL,
    detector      TEXT NOT NULL,
    feature       TEXT NOT NULL,
    severity      TEXT NOT NULL,
    status        TEXT NOT NULL,
    score         DOUBLE PRECISION NOT NULL,
    threshold     DOUBLE PRECISION NOT NULL,
    p_value       DOUBLE PRECISION NOT NULL,
    window_seq    BIGINT NOT NULL,
    window_start  TIMESTAMPTZ NOT NULL,
    window_end    TIMESTAMPTZ NOT NULL,
    dedup_key     TEXT NOT NULL,
    evidence      JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (model, model_version, window_seq, detector, feature)
);
CREATE INDEX alerts_dedup ON alerts (dedup_key, created_at);
