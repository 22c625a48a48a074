-- What was calibrated on a reference (expected-accuracy band, out-of-
-- distribution thresholds, MMD bandwidth), written each time the reference
-- is fitted so that the thresholds behind a score can be read back.
ALTER TABLE model_references ADD COLUMN calibration TEXT;
ALTER TABLE model_references ADD COLUMN calibrated_at TEXT;
-- Whether a score's effect size had to pass its threshold for it to alert
-- (false: recorded beside the test only).
ALTER TABLE scores ADD COLUMN effect_gating INTEGER;
