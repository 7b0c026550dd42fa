-- A worker stopping hard hands its jobs back; the interrupted attempt does not count.
UPDATE jobs
SET state = 'available', attempt = attempt - 1, lease_holder = NULL, lease_expires_at = NULL, updated_at = $2
WHERE lease_holder = $1 AND state = 'running'
