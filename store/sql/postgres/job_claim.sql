-- One provider's jobs of one priority, oldest first, as many as the limit
-- marker says (`$4`, or the budget of a gated claim). SKIP LOCKED lets
-- concurrent workers claim disjoint batches without waiting.
UPDATE jobs
SET state = 'running', attempt = attempt + 1, lease_holder = $1, lease_expires_at = $2, updated_at = $3
WHERE id IN (
    SELECT id FROM jobs
    WHERE state = 'available' AND run_after <= $3 AND provider = $5 AND priority = $6
      -- Not for a provider that pushed back: no worker calls it until the pause ends.
      AND provider NOT IN (SELECT provider FROM provider_state WHERE paused_until > $3)
      -- Committed without waiting for the disk: the unflushed marker.
      AND {unflushed}
    ORDER BY priority, id
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
)
RETURNING id, provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
       lease_expires_at, lease_holder, last_error, created_at, updated_at, finished_at, traceparent,
       -- The cached entry's validators, so the worker can revalidate without a query.
       (SELECT e.etag FROM entries e WHERE e.key = jobs.url AND NOT e.negative) AS stored_etag,
       (SELECT e.last_modified FROM entries e WHERE e.key = jobs.url AND NOT e.negative) AS stored_last_modified,
       -- How long the job waited between becoming due and this claim.
       CASE WHEN run_after > created_at
            THEN (CASE WHEN $3 > run_after THEN $3 - run_after ELSE 0 END)
            ELSE (CASE WHEN $3 > created_at THEN $3 - created_at ELSE 0 END) END AS waited
