SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM entries WHERE policy = $1
