-- Every window steps the open incidents of its model version that it did
-- not score (they resolve after enough windows without the condition) and
-- recounts the firing findings of its open episodes: one indexed lookup
-- of the unresolved rows of a model version per window.
CREATE INDEX alerts_open_by_model ON alerts (model, model_version) WHERE status <> 'resolved';
