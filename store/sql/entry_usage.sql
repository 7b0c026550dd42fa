SELECT policy, COUNT(*) AS entries, CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) AS bytes
FROM entries
GROUP BY policy
ORDER BY policy
