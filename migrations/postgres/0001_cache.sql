-- The cache: entries, their tags, and the change log.
-- Times are milliseconds since the Unix epoch; integers are BIGINT so both
-- backends decode them as 64-bit.

-- The change-log revision counter. Every write transaction bumps it first:
-- the row lock serialises writers, so revisions are assigned in commit order
-- and a reader of the change log can never see revision N+1 before N.
CREATE TABLE roadie_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO roadie_revision (id, value) VALUES (1, 0);

CREATE TABLE entries (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL,
    media_type TEXT NOT NULL,
    policy TEXT NOT NULL,
    -- JSON array; entry_tags holds the same tags for lookups by tag.
    tags TEXT NOT NULL,
    confidence BIGINT NOT NULL,
    fingerprint TEXT,
    -- JSON object of strings.
    metadata TEXT NOT NULL,
    negative BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- NULL: never expires.
    expires_at BIGINT,
    revision BIGINT NOT NULL,
    provider TEXT,
    upstream_status BIGINT,
    etag TEXT,
    last_modified TEXT,
    size_bytes BIGINT NOT NULL,
    -- Access statistics for eviction, flushed in batches, not per read.
    accessed_at BIGINT NOT NULL,
    access_count BIGINT NOT NULL
);
CREATE INDEX entries_expires_at ON entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX entries_policy_accessed ON entries (policy, accessed_at, access_count);

CREATE TABLE entry_tags (
    tag TEXT NOT NULL,
    key TEXT NOT NULL REFERENCES entries (key) ON DELETE CASCADE,
    PRIMARY KEY (tag, key)
);
CREATE INDEX entry_tags_key ON entry_tags (key);

-- One row per change to one entry, written in the transaction of the change.
CREATE TABLE changes (
    revision BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    policy TEXT NOT NULL,
    tags TEXT NOT NULL,
    provider TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX changes_at ON changes (at);
