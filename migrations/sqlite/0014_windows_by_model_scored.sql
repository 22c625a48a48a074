-- A young model version's class mix is judged against the windows of the
-- version scored last before it: one indexed lookup per window of a young
-- version, instead of a scan of the model's windows.
CREATE INDEX windows_by_model_scored ON windows (model, scored_at);
