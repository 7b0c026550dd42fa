-- A caller who waits joins a background job: it moves up, never down.
UPDATE jobs SET priority = $2, updated_at = $3
WHERE id = $1 AND state = 'available' AND priority > $2
