UPDATE jobs
SET state = 'available', attempt = 0, run_after = $2, updated_at = $2, finished_at = NULL, last_error = NULL
WHERE id = $1 AND state IN ('failed', 'cancelled')
