-- Lost on its last attempt: failed.
UPDATE jobs
SET state = 'failed', lease_holder = NULL, lease_expires_at = NULL,
    last_error = 'lease expired on the last attempt', finished_at = $1, updated_at = $1
WHERE state = 'running' AND lease_expires_at < $1 AND attempt >= max_attempts
