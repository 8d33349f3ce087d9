-- When each checkpoint was written: the `now` of the write that stored it (last write
-- for a replaced one), INTEGER microseconds since the Unix epoch like every other time.
-- NULL for checkpoints written before this migration.
ALTER TABLE checkpoints ADD COLUMN written_at INTEGER;
