UPDATE jobs
SET state = 'available', last_error = $3, run_after = $4, updated_at = $5, lease_holder = NULL, lease_expires_at = NULL
WHERE id = $1 AND lease_holder = $2 AND state = 'running'
