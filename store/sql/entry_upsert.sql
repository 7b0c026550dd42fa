-- Writes entries, each row the last write of its key in the batch; an
-- existing row keeps its created_at and access_count. {source}: the rows in
-- the column order below (`VALUES` and groups of 22 placeholders, or on
-- Postgres the SELECT of `postgres/entries_write.sql`).
INSERT INTO entries (
    key, value, media_type, policy, tags, confidence, fingerprint, metadata,
    negative, created_at, updated_at, expires_at, revision,
    provider, upstream_status, etag, last_modified,
    size_bytes, encoding, raw_bytes, accessed_at, access_count
) {source}
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
