-- Least valuable first: least recently used, then least often used.
SELECT key, size_bytes, tags, provider
FROM entries
WHERE policy = $1
ORDER BY accessed_at, access_count, key
