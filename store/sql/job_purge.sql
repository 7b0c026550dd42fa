-- Retention: completed jobs before $1, failed and cancelled ones before $2.
DELETE FROM jobs
WHERE (state = 'completed' AND finished_at < $1)
   OR (state IN ('failed', 'cancelled') AND finished_at < $2)
