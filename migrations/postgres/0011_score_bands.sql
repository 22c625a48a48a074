-- Scores judged against a band (expected accuracy, regression error, PCA
-- reconstruction) store the band's lines at the window's p-value
-- threshold, so a dashboard draws them beside the value: below band_lower
-- (expected accuracy) or above band_upper (the error scores) the score
-- crosses. NULL for every other score.
ALTER TABLE scores ADD COLUMN band_lower DOUBLE PRECISION;
ALTER TABLE scores ADD COLUMN band_upper DOUBLE PRECISION;
