-- A gating effect size's threshold is the upper prediction bound of its
-- band on reference windows of the live size; the band is kept beside it
-- so that a reader can see why the threshold is where it is. NULL where
-- the effect had no band (and its threshold is the configured one).
ALTER TABLE scores ADD COLUMN effect_band_mean REAL;
ALTER TABLE scores ADD COLUMN effect_band_sd REAL;
ALTER TABLE scores ADD COLUMN effect_band_windows INTEGER;
