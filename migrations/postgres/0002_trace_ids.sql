-- The trace of the window that produced an alert: the serving system's
-- trace when the closing message carried a traceparent header.
ALTER TABLE windows ADD COLUMN trace_id TEXT;
ALTER TABLE alerts ADD COLUMN trace_id TEXT;
