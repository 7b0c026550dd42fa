-- A waited Fetch's first look on Postgres, in one round trip: the entry
-- of $2 as `entry_get` reads it (its text, with its key as $2, is the
-- first CTE), or, when there is none and no unfinished job holds the key,
-- a new job for it as `job_insert` makes one, announced to idle workers as
-- `job_insert` announces a job a caller waits for (`enqueue::announce`).
-- One row: the entry's columns (NULL when there is none) and `job_id`
-- (NULL when nothing was enqueued: an entry was there, or an unfinished
-- job holds the key, whose caller then shares it through `job_insert` and
-- `job_unfinished_by_key`). $1 provider, $2 url, $3 policy, $4 tags
-- (JSON), $5 priority, $6 max_attempts, $7 the clock, $8 traceparent.
--
-- A new job commits without waiting for the disk (the unflushed marker):
-- its worker hears of it one flush sooner. Its caller is told of it only
-- when it ends, whose commit waits for the disk and so flushes the enqueue
-- before it; anyone told of it sooner (the caller whose wait ran out, a
-- caller sharing it) is told after `job_flush` (`Store::job_durable`).
WITH found AS (
{found}
), enqueued AS (
    INSERT INTO jobs (provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
                      created_at, updated_at, traceparent, dedupe_key)
    SELECT $1, $2, $3, $4, $5, 'available', 0, $6, $7, $7, $7, $8, $2
    -- A scalar subquery for the unfinished job, as in `job_insert`.
    WHERE NOT EXISTS (SELECT 1 FROM found)
      AND {unflushed}
      AND (SELECT j.id FROM jobs j WHERE j.dedupe_key = $2 AND j.state IN ('available', 'running')) IS NULL
    ON CONFLICT (dedupe_key) WHERE state IN ('available', 'running') DO NOTHING
    RETURNING id AS job_id{announce}
)
SELECT found.*, enqueued.*
FROM (SELECT 1) AS one
LEFT JOIN found ON true
LEFT JOIN enqueued ON true
