-- Compaction removes a prefix of the log, one slice at a time.
DELETE FROM changes WHERE revision <= $1
