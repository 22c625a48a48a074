-- PostgreSQL's read-only dashboard role has no SQLite counterpart: the file
-- is the access control. Kept so that both dialects share one numbering.
SELECT 1;
