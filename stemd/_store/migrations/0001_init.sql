-- stemd SQLite schema, version 1.
--
-- Times are INTEGER microseconds since the Unix epoch (UTC), so that indexes order and
-- compare them exactly. Values (params, result, checkpoint values) are the codec's bytes.
-- error and policy are msgspec JSON.

CREATE TABLE runs (
    -- Creation order: listings are newest first, and every index ends with it.
    seq              INTEGER PRIMARY KEY,
    run_id           TEXT    NOT NULL UNIQUE,
    workflow         TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    params           BLOB    NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    queue            TEXT    NOT NULL,
    result           BLOB,
    error            TEXT,
    parent_run_id    TEXT,
    policy           TEXT,
    ttl              REAL,
    wait_topic       TEXT,
    wait_key         TEXT,
    wait_child       TEXT,
    resume_at        INTEGER,
    suspended_at     INTEGER,
    resume_key       TEXT,
    timer_at         INTEGER,
    finished_at      INTEGER,
    cancel_reason    TEXT,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    token            INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    attempt_step     TEXT,
    step_failures    INTEGER NOT NULL DEFAULT 0
);

-- Listings, newest first (the implicit trailing seq orders each index).
CREATE INDEX runs_by_status ON runs (status);
CREATE INDEX runs_by_workflow ON runs (workflow);
CREATE INDEX runs_by_workflow_status ON runs (workflow, status);
CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
-- Due timers, earliest first.
CREATE INDEX runs_by_timer ON runs (timer_at, run_id) WHERE timer_at IS NOT NULL;
-- Watchers: runs suspended on an event topic or on a child.
CREATE INDEX runs_by_topic ON runs (wait_topic)
    WHERE wait_topic IS NOT NULL AND status = 'suspended';
CREATE INDEX runs_by_child ON runs (wait_child)
    WHERE wait_child IS NOT NULL AND status = 'suspended';
-- The sweeper's query: only live runs are in it, however many have finished, and it
-- covers the query (no table lookups).
CREATE INDEX runs_runnable ON runs (lease_expires_at, resume_at, run_id, queue, status)
    WHERE status IN ('pending', 'running');

CREATE TABLE checkpoints (
    -- Write order: a replaced checkpoint keeps its place.
    seq    INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  BLOB NOT NULL,
    UNIQUE (run_id, name)
);
