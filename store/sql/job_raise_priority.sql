-- A caller who waits joins a background job: it moves up, never down.
-- {announce} is replaced by the notification of a job a caller waits for
-- (`enqueue::announce`).
UPDATE jobs SET priority = $2, updated_at = $3
WHERE id = $1 AND state = 'available' AND priority > $2
RETURNING id{announce}
