-- The sessions of the processes executing runs (stemd._store.sessions): one row each,
-- renewed by its process every lease/4 seconds; a run's lease_owner names one. record:
-- the SessionRecord as JSON (host, pid, lock file, beat, times).
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    record     BLOB NOT NULL
);
