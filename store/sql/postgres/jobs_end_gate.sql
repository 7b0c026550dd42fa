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
    -- The ids as one array, looked up in the primary key alone (see
    -- `ended`); whether the worker still holds each is read from the row
    -- it locked. With `state = 'running'` in the scan, the planner read
    -- every entry of the index of running jobs, those of jobs finished
    -- since the last vacuum too.
    SELECT jobs.id, jobs.lease_holder = $6 AND jobs.state = 'running' AS leased FROM jobs
    WHERE jobs.id = ANY (ARRAY(SELECT e.id FROM json_to_recordset($5::json) AS e(id bigint)))
    FOR UPDATE
), gate AS (
    SELECT count(*) FILTER (WHERE leased) = $8 AS open FROM held
), ended AS (
    UPDATE jobs
    SET state = e.state, last_error = e.error, finished_at = $7, updated_at = $7,
        lease_holder = NULL, lease_expires_at = NULL
    FROM json_to_recordset($5::json) AS e(id bigint, state text, error text)
    -- The held ids as one array, looked up in the primary key: joined to
    -- the JSON rows alone, whose count the planner cannot know (it takes
    -- 100), the update scanned every job in the table on each finish.
    WHERE jobs.id = ANY (ARRAY(SELECT id FROM held)) AND jobs.id = e.id
      AND (SELECT open FROM gate)
    RETURNING jobs.id
), announced AS (
{announce}
), 
