-- The first revision committed at or after $1 (ms): the age horizon. Scans
-- from the oldest, so it reads little more than what compaction removes.
SELECT revision FROM changes WHERE at >= $1 ORDER BY revision LIMIT 1
