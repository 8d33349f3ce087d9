-- Events that are never lost or doubled, and addressed messages
-- (docs/explanation/guarantees.md, "Events and messages").
--
-- runs: a wait on several topics (wait_for_any) lists them all in wait_topics (a JSON
-- list; NULL for a wait on one, which is wait_topic alone); wait_data is what the waiting
-- code said about its wait (codec bytes); event_floor is the position in the event order
-- when the run was created (it takes the topic events after it); cursors maps each topic
-- the run has taken an event of to that event's position (a JSON object; NULL: none).
ALTER TABLE runs ADD COLUMN wait_topics TEXT;
ALTER TABLE runs ADD COLUMN wait_data BLOB;
ALTER TABLE runs ADD COLUMN event_floor INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cursors TEXT;

-- The topics of the waits on several topics, one row each, in creation order of the
-- runs (seq is runs.seq); a wait on one topic is found by runs_by_topic.
CREATE TABLE run_waits (
    topic  TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    run_id TEXT    NOT NULL,
    PRIMARY KEY (topic, seq)
) WITHOUT ROWID;
CREATE INDEX run_waits_by_run ON run_waits (run_id);

-- Topic events, kept until expires_at (INTEGER microseconds since the epoch). seq is the
-- event order: AUTOINCREMENT, so that a position is never reused once its event is pruned.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    at         INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX events_by_topic ON events (topic, seq);
CREATE INDEX events_by_expiry ON events (expires_at);

-- Mailboxes: messages sent to one run. value is NULL once taken (the row stays while it
-- has a key, so that a second send with that key stays a no-op).
CREATE TABLE messages (
    seq     INTEGER PRIMARY KEY,
    run_id  TEXT    NOT NULL,
    topic   TEXT    NOT NULL,
    value   BLOB,
    key     TEXT,
    sent_at INTEGER NOT NULL
);
CREATE INDEX messages_pending ON messages (run_id, topic, seq) WHERE value IS NOT NULL;
CREATE UNIQUE INDEX messages_by_key ON messages (run_id, key) WHERE key IS NOT NULL;
