-- The stored revision and confidence of every key a batch of writes names,
-- read under the revision lock. {rows}: one group of a placeholder per key.
SELECT key, revision, confidence FROM entries WHERE key IN {rows}
