-- A message can carry many events, and a window or reference can end in
-- the middle of one: progress records the event's index inside the message
-- at the high-water offset as well. Rows written before this column existed
-- covered their whole message, which the largest index says.
ALTER TABLE progress ADD COLUMN high_water_index BIGINT NOT NULL DEFAULT 9223372036854775807;
