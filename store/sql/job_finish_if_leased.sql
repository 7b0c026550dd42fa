-- Completion counts only while the worker still holds the lease.
UPDATE jobs
SET state = $3, last_error = $4, finished_at = $5, updated_at = $5, lease_holder = NULL, lease_expires_at = NULL
WHERE id = $1 AND lease_holder = $2 AND state = 'running'
