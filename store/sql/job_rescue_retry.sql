-- Jobs whose worker stopped renewing its lease: claimable again at once.
UPDATE jobs
SET state = 'available', lease_holder = NULL, lease_expires_at = NULL,
    last_error = 'lease expired: the worker holding it stopped renewing', run_after = $1, updated_at = $1
WHERE state = 'running' AND lease_expires_at < $1 AND attempt < max_attempts
