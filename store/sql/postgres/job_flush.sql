-- Makes a job's row durable before anyone is told of it. A waited Fetch's
-- first look (`postgres/entry_get_or_enqueue.sql`) commits its job without
-- waiting for the disk; this write of the row (it changes nothing) commits
-- waiting for it, which flushes the log up to and past the enqueue. A row
-- that is gone has ended, and its end was flushed.
UPDATE jobs SET updated_at = updated_at WHERE id = $1
