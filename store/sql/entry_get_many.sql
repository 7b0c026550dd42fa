-- KEYS is replaced by one numbered parameter per key ($1, $2, …).
SELECT key, value, media_type, policy, tags, confidence, fingerprint, metadata,
       CASE WHEN negative THEN 1 ELSE 0 END AS negative, created_at, updated_at, expires_at, revision,
       provider, upstream_status, etag, last_modified, encoding, raw_bytes
FROM entries
WHERE key IN (KEYS)
