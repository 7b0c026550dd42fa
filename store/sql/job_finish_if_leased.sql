-- Ends many of one worker's attempts in one statement, each only while the
-- worker still holds its lease; returns the ids it ended (announced on
-- Postgres: `announcing_ends`). $1 is the clock,
-- $2 the worker; {rows} is replaced by groups of 3 placeholders from $3:
-- the job's id, its new state, its error (NULL when completed).
WITH ended (id, state, error) AS (VALUES {rows})
UPDATE jobs
SET state = ended.state, last_error = ended.error, finished_at = $1, updated_at = $1,
    lease_holder = NULL, lease_expires_at = NULL
FROM ended
WHERE jobs.id = ended.id AND jobs.lease_holder = $2 AND jobs.state = 'running'
RETURNING jobs.id
