UPDATE jobs SET lease_expires_at = $3, updated_at = $4
WHERE id = $1 AND lease_holder = $2 AND state = 'running'
