-- Schedules (stemd.Schedule): one row per name, the record as JSON (definition and
-- state: last tick, last run, paused), written by compare-and-set on revision.
CREATE TABLE schedules (
    name     TEXT    PRIMARY KEY,
    doc      BLOB    NOT NULL,
    revision INTEGER NOT NULL
);
