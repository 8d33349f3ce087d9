-- The W3C trace context (traceparent) of whoever started the run, for tracing.
ALTER TABLE runs ADD COLUMN trace TEXT;
