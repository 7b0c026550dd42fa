-- Entries bench:scale:$1 .. bench:scale:($2 - 1), values of $4 random bytes, at time $3.
INSERT INTO entries (
    key, value, media_type, policy, tags, confidence, fingerprint, metadata, negative,
    created_at, updated_at, expires_at, revision, provider, upstream_status, etag,
    last_modified, size_bytes, accessed_at, access_count
)
WITH RECURSIVE n(i) AS (
    SELECT $1 WHERE $1 < $2
    UNION ALL
    SELECT i + 1 FROM n WHERE i + 1 < $2
)
SELECT 'bench:scale:' || i, randomblob($4), 'application/json', 'generic', '[]', 0, NULL, '{}', 0,
    $3, $3, NULL, 0, NULL, NULL, NULL, NULL, $4, $3, 0
FROM n
