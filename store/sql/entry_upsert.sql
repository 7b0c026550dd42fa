INSERT INTO entries (
    key, value, media_type, policy, tags, confidence, fingerprint, metadata,
    negative, created_at, updated_at, expires_at, revision,
    provider, upstream_status, etag, last_modified,
    size_bytes, accessed_at, access_count, encoding, raw_bytes
) VALUES (
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14, $15, $16, $17, $10, 0, $18, $19
)
ON CONFLICT (key) DO UPDATE SET
    value = excluded.value,
    media_type = excluded.media_type,
    policy = excluded.policy,
    tags = excluded.tags,
    confidence = excluded.confidence,
    fingerprint = excluded.fingerprint,
    metadata = excluded.metadata,
    negative = excluded.negative,
    updated_at = excluded.updated_at,
    expires_at = excluded.expires_at,
    revision = excluded.revision,
    provider = excluded.provider,
    upstream_status = excluded.upstream_status,
    etag = excluded.etag,
    last_modified = excluded.last_modified,
    size_bytes = excluded.size_bytes,
    encoding = excluded.encoding,
    raw_bytes = excluded.raw_bytes,
    accessed_at = excluded.accessed_at
