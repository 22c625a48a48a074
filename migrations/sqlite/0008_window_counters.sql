-- Window numbers are allocated by the store, in the transaction that stores
-- the window, so that concurrent writers never take the same number and a
-- rolled-back window leaves no gap.
CREATE TABLE window_counters (
    model          TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    next_seq       INTEGER NOT NULL,
    PRIMARY KEY (model, model_version)
);
INSERT INTO window_counters (model, model_version, next_seq)
SELECT model, model_version, MAX(seq) + 1 FROM windows GROUP BY model, model_version;

-- Alerts are kept per model version: in a canary, a clean window of one
-- version must not end the other version's incident. Existing incidents
-- take the version of their last window.
UPDATE alerts SET dedup_key = CASE model_version
    WHEN '' THEN model || '/' || detector || '/' || feature
    ELSE model || '/' || model_version || '/' || detector || '/' || feature
END;
UPDATE alerts SET state = json_set(state, '$.dedup_key', dedup_key);

-- Which source records each window was made of: per stream, the first and
-- last position. NULL for windows stored before this migration.
ALTER TABLE windows ADD COLUMN positions TEXT;
