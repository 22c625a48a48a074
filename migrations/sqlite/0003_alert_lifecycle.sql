-- Alerts become incidents with a lifecycle: one row per incident of a dedup
-- key (model/detector/feature), pending -> firing -> resolved. The full state
-- (counters, evidence) is kept as JSON; the columns are for queries and
-- dashboards. Per-window crossings remain visible in `scores`.
DROP TABLE alerts;
CREATE TABLE alerts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key        TEXT NOT NULL,
    incident         INTEGER NOT NULL,
    model            TEXT NOT NULL,
    model_version    TEXT NOT NULL,
    detector         TEXT NOT NULL,
    feature          TEXT NOT NULL,
    severity         TEXT NOT NULL,
    status           TEXT NOT NULL,
    acknowledged     INTEGER NOT NULL,
    silenced         INTEGER NOT NULL,
    score            REAL NOT NULL,
    p_value          REAL NOT NULL,
    threshold        REAL NOT NULL,
    first_window_seq INTEGER NOT NULL,
    last_window_seq  INTEGER NOT NULL,
    window_start     TEXT NOT NULL,
    window_end       TEXT NOT NULL,
    first_seen_at    TEXT NOT NULL,
    fired_at         TEXT,
    last_seen_at     TEXT NOT NULL,
    resolved_at      TEXT,
    trace_id         TEXT,
    evidence         TEXT NOT NULL,
    state            TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    UNIQUE (dedup_key, incident)
);
CREATE INDEX alerts_open ON alerts (dedup_key) WHERE status <> 'resolved';

-- Silences: matching alerts fire without paging until they expire.
-- NULL detector or feature matches any.
CREATE TABLE silences (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    model       TEXT NOT NULL,
    detector    TEXT,
    feature     TEXT,
    comment     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);

-- Transactional outbox: written with the alert change, delivered in id order
-- per receiver, marked sent only once the receiver accepted it.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver         TEXT NOT NULL,
    alert_id         INTEGER NOT NULL,
    transition       TEXT NOT NULL,
    alert            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_at  TEXT NOT NULL,
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    sent_at          TEXT
);
CREATE INDEX outbox_pending ON outbox (receiver, id) WHERE sent_at IS NULL;
