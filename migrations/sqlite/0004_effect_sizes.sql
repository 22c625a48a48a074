-- Drift scores on large references carry an effect size that must pass its
-- threshold as well as the p-value; NULL where none applies.
ALTER TABLE scores ADD COLUMN effect_name TEXT;
ALTER TABLE scores ADD COLUMN effect_value REAL;
ALTER TABLE scores ADD COLUMN effect_threshold REAL;
