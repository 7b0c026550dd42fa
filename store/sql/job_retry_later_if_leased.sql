-- $6 is 1 when the attempt does not count (upstream pushed back: that is the
-- provider's state, not the job's failure), else 0.
UPDATE jobs
SET state = 'available', last_error = $3, run_after = $4, updated_at = $5, lease_holder = NULL, lease_expires_at = NULL,
    attempt = attempt - $6
WHERE id = $1 AND lease_holder = $2 AND state = 'running'
