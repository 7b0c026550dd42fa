UPDATE jobs
SET state = 'cancelled', finished_at = $2, updated_at = $2, lease_holder = NULL, lease_expires_at = NULL
WHERE id = $1 AND state IN ('available', 'running')
RETURNING id
