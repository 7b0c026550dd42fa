-- A page of entries in bytewise key order (COLLATE "C", index entries_key_bytewise),
-- for ListEntries. $1: the last key of the previous page ('' for the
-- first); $2, $3: a prefix's key range [$2, $3) ($3 '' for no upper bound);
-- $4 tag, $5 policy, $6 provider ('' for any); $7 status (0 any, 1 fresh,
-- 2 stale, 3 negative) at the clock $8; $9 1 with values, 0 without; $10
-- the page size.
SELECT e.key, CASE WHEN $9 = 1 THEN e.value ELSE substr(e.value, 1, 0) END AS value,
       e.media_type, e.policy, e.tags, e.confidence, e.fingerprint, e.metadata,
       CASE WHEN e.negative THEN 1 ELSE 0 END AS negative, e.created_at, e.updated_at, e.expires_at, e.revision,
       e.provider, e.upstream_status, e.etag, e.last_modified, e.encoding, e.raw_bytes
FROM entries e
WHERE e.key COLLATE "C" > $1
  AND e.key COLLATE "C" >= $2
  AND ($3 = '' OR e.key COLLATE "C" < $3)
  AND ($4 = '' OR EXISTS (SELECT 1 FROM entry_tags t WHERE t.tag = $4 AND t.key = e.key))
  AND ($5 = '' OR e.policy = $5)
  AND ($6 = '' OR e.provider = $6)
  AND ($7 = 0
       OR ($7 = 3 AND e.negative)
       OR ($7 = 1 AND NOT e.negative AND (e.expires_at IS NULL OR e.expires_at > $8))
       OR ($7 = 2 AND NOT e.negative AND e.expires_at <= $8))
ORDER BY e.key COLLATE "C"
LIMIT $10
