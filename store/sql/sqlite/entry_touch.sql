-- Notes reads of many entries: each row's latest read time and how many
-- reads, one statement for the whole batch. {rows} is replaced by groups of
-- 3 placeholders: key, read at, reads.
WITH reads (key, at, count) AS (VALUES {rows})
UPDATE entries
SET accessed_at = reads.at,
    access_count = access_count + reads.count
FROM reads
WHERE entries.key = reads.key
