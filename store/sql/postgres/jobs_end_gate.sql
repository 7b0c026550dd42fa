-- The head of `entries_write.sql` when a worker's finished jobs and their
-- entries go in one statement (its marker after WITH;
-- `Store::job_finish_many_if_leased`).
-- $5: the ended attempts as JSON (id, state, error: NULL when completed),
-- $6 the worker, $7 the clock, $8 how many. The job rows are locked first,
-- then the revision counter, the order every finish takes. All or nothing:
-- only when the worker still holds every lease (`gate`) does the statement
-- end the jobs, take the counter (whose row every other sub-statement
-- waits for) and write; otherwise it changes nothing and returns no row,
-- and the caller ends them one by one in a transaction.
held AS (
    -- Each id looked up in the primary key on its own (a nested loop over
    -- the JSON rows): as one array (`id = ANY (...)`, which the planner
    -- takes for 10 ids) a jobs table of a few dozen pages was scanned whole,
    -- the finish's longest step (0.36 ms of a 1.1 ms one-job finish in a
    -- waited Fetch, its table bloated by claims and finishes since the
    -- last vacuum). Locked in id order. Whether the worker still holds
    -- each job is read from the row it locked. With `state = 'running'` in the scan, the planner
    -- read every entry of the index of running jobs, those of jobs
    -- finished since the last vacuum too.
    SELECT j.id, j.lease_holder = $6 AND j.state = 'running' AS leased
    FROM (SELECT id FROM json_to_recordset($5::json) AS r(id bigint) ORDER BY id) e,
         LATERAL (SELECT jobs.id, jobs.lease_holder, jobs.state FROM jobs
                  WHERE jobs.id = e.id FOR UPDATE) j
), gate AS (
    SELECT count(*) FILTER (WHERE leased) = $8 AS open FROM held
), ended AS (
    UPDATE jobs
    SET state = e.state, last_error = e.error, finished_at = $7, updated_at = $7,
        lease_holder = NULL, lease_expires_at = NULL
    FROM json_to_recordset($5::json) AS e(id bigint, state text, error text)
    -- The held jobs, found in the primary key between their least and
    -- greatest id: a range the planner takes for a sliver of the table
    -- whatever its size. Joined to the JSON rows alone (the planner takes
    -- 100) or to the ids as one array (10), the update scanned every job
    -- of a small table.
    WHERE jobs.id = e.id
      AND jobs.id BETWEEN (SELECT min(id) FROM held) AND (SELECT max(id) FROM held)
      AND (SELECT open FROM gate)
    RETURNING jobs.id
), announced AS (
{announce}
), 
