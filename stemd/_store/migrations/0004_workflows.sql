-- The workflows daemons serve (`stemd workflow types`), one row per name: the last
-- registration wins. steps: a flow's declared step names in order, as a JSON list (NULL
-- for a script). version: as declared, text or integer (BLOB affinity: kept as given);
-- NULL when none. registered_at: INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE workflows (
    name          TEXT    PRIMARY KEY,
    kind          TEXT    NOT NULL,
    steps         TEXT,
    version       BLOB,
    registered_at INTEGER NOT NULL
);
