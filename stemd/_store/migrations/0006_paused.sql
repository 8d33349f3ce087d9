-- Operating groups of runs (docs/howto/operating-many-runs.md): a paused run keeps its
-- status and its wait, is not claimed, and its timers are held (timer_at is NULL) until
-- it is resumed; 1 while paused.
ALTER TABLE runs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
