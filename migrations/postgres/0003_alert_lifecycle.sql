-- Alerts become incidents with a lifecycle: one row per incident of a dedup
-- key (model/detector/feature), pending -> firing -> resolved. The full state
-- (counters, evidence) is kept as JSON; the columns are for queries and
-- dashboards. Per-window crossings remain visible in `scores`.
DROP TABLE alerts;
CREATE TABLE alerts (
    id               BIGSERIAL PRIMARY KEY,
    dedup_key        TEXT NOT NULL,
    incident         BIGINT NOT NULL,
    model            TEXT NOT NULL,
    model_version    TEXT NOT NULL,
    detector         TEXT NOT NULL,
    feature          TEXT NOT NULL,
    severity         TEXT NOT NULL,
    status           TEXT NOT NULL,
    acknowledged     BOOLEAN NOT NULL,
    silenced         BOOLEAN NOT NULL,
    score            DOUBLE PRECISION NOT NULL,
    p_value          DOUBLE PRECISION NOT NULL,
    threshold        DOUBLE PRECISION NOT NULL,
    first_window_seq BIGINT NOT NULL,
    last_window_seq  BIGINT NOT NULL,
    window_start     TIMESTAMPTZ NOT NULL,
    window_end       TIMESTAMPTZ NOT NULL,
    first_seen_at    TIMESTAMPTZ NOT NULL,
    fired_at         TIMESTAMPTZ,
    last_seen_at     TIMESTAMPTZ NOT NULL,
    resolved_at      TIMESTAMPTZ,
    trace_id         TEXT,
    evidence         JSONB NOT NULL,
    state            JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (dedup_key, incident)
);
CREATE INDEX alerts_open ON alerts (dedup_key) WHERE status <> 'resolved';

-- Silences: matching alerts fire without paging until they expire.
-- NULL detector or feature matches any.
CREATE TABLE silences (
    id          BIGSERIAL PRIMARY KEY,
    model       TEXT NOT NULL,
    detector    TEXT,
    feature     TEXT,
    comment     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

-- Transactional outbox: written with the alert change, delivered in id order
-- per receiver, marked sent only once the receiver accepted it.
CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    receiver         TEXT NOT NULL,
    alert_id         BIGINT NOT NULL,
    transition       TEXT NOT NULL,
    alert            JSONB NOT NULL,
    attempts         BIGINT NOT NULL,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    sent_at          TIMESTAMPTZ
);
CREATE INDEX outbox_pending ON outbox (receiver, id) WHERE sent_at IS NULL;
