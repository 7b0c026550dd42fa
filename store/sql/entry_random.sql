-- A random live entry carrying a tag; empty $3/$4 mean "any policy/provider".
SELECT e.key, e.value, e.media_type, e.policy, e.tags, e.confidence, e.fingerprint, e.metadata,
       CASE WHEN e.negative THEN 1 ELSE 0 END AS negative, e.created_at, e.updated_at, e.expires_at, e.revision,
       e.provider, e.upstream_status, e.etag, e.last_modified, e.encoding, e.raw_bytes
FROM entry_tags t
JOIN entries e ON e.key = t.key
WHERE t.tag = $1
  AND NOT e.negative
  AND (e.expires_at IS NULL OR e.expires_at > $2)
  AND ($3 = '' OR e.policy = $3)
  AND ($4 = '' OR e.provider = $4)
ORDER BY RANDOM()
LIMIT 1
