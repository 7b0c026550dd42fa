-- Notes reads of many entries: each row's latest read time and how many
-- reads, one statement for the whole batch. {rows} is replaced by groups of
-- 3 placeholders: key, read at, reads.
--
-- Rows a write holds at this moment are skipped, never waited for: reads
-- are only an eviction hint, and a join takes its row locks in no useful
-- order, so waiting could close a circle with a batch of writes (which
-- Postgres breaks only after deadlock_timeout, failing one side).
WITH reads (key, at, count) AS (VALUES {rows}),
free AS (
    SELECT e.key FROM entries e JOIN reads r ON e.key = r.key
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE entries
SET accessed_at = CAST(reads.at AS BIGINT),
    access_count = access_count + CAST(reads.count AS BIGINT)
FROM reads JOIN free ON free.key = reads.key
WHERE entries.key = reads.key
