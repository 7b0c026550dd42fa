-- Whether another eviction pass removed entries of the policy ($3) since
-- this pass's last chunk committed at revision $1: 1 or 0, read through the
-- log's primary key over the revisions since, up to the lock's ($2). A
-- range bounded on both sides, so even a generic plan reads it through the
-- index rather than the whole log.
SELECT CAST(COUNT(*) AS BIGINT)
FROM (
    SELECT 1 FROM changes
    WHERE revision > $1 AND revision <= $2 AND kind = 'evict' AND policy = $3
    LIMIT 1
) found
