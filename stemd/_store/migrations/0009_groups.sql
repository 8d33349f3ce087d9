-- Operating groups of runs and flow control (docs/howto/operating-many-runs.md): a paused run keeps its
-- status and its wait, is not claimed, and its timers are held (timer_at is NULL) until
-- it is resumed; 1 while paused.
ALTER TABLE runs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;

-- Workflows whose new runs are created paused (App.pause_runs(workflow=..., new_runs=True)).
CREATE TABLE paused_workflows (name TEXT PRIMARY KEY) WITHOUT ROWID;

-- The paused runs (few, usually none), by workflow: counted for stemd_runs_paused.
CREATE INDEX runs_paused ON runs (workflow) WHERE paused = 1;

-- Flow control (stemd.Limits): the slots of each scope (a workflow's concurrency, one
-- key's), each held by one execution until expires_at (INTEGER microseconds since the
-- epoch); an expired hold frees its slot (its daemon died).
CREATE TABLE slots (
    scope      TEXT    NOT NULL,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (scope, holder)
) WITHOUT ROWID;
