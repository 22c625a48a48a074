-- The predicted-class mix of every window: how many of its events the model
-- put in each class (`output.label`, else the most probable class). A
-- dashboard draws each class's share over time; a poisoned or tampered
-- model shows as one class's share jumping, with or without a new version.
-- Rows go with their window (same transaction); windows without class
-- outputs (regression models) have none.
CREATE TABLE window_classes (
    model         TEXT NOT NULL,
    model_version TEXT NOT NULL,
    window_seq    BIGINT NOT NULL,
    class         TEXT NOT NULL,
    events        BIGINT NOT NULL,
    PRIMARY KEY (model, model_version, window_seq, class)
);
