SELECT id, provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
       lease_expires_at, lease_holder, last_error, created_at, updated_at, finished_at, traceparent
FROM jobs
WHERE dedupe_key = $1 AND state IN ('available', 'running')
