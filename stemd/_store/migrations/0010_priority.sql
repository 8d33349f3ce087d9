-- Priorities among the runs waiting for a slot of a concurrency limit (stemd.Limits): the
-- priority a run was started with (higher first; 0 by default).
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
