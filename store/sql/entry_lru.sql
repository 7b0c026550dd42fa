-- Least valuable first: least recently used, then least often used; a
-- chunk at a time, from the index on (policy, accessed_at, access_count).
SELECT key, size_bytes
FROM entries
WHERE policy = $1
ORDER BY accessed_at, access_count, key
LIMIT $2
