-- bytes: as stored (compressed or not); raw_bytes: as written.
SELECT policy, COUNT(*) AS entries, CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) AS bytes,
       CAST(COALESCE(SUM(COALESCE(raw_bytes, size_bytes)), 0) AS BIGINT) AS raw_bytes
FROM entries
GROUP BY policy
ORDER BY policy
