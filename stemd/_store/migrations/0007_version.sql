-- The version of the workflow's code a run started with: as declared, text or integer
-- (BLOB affinity: kept as given); NULL when the workflow declares none.
ALTER TABLE runs ADD COLUMN version BLOB;
