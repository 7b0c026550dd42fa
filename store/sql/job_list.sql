-- Newest first; $3 is the id to page below; empty $1/$2 mean any state/provider.
SELECT id, provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
       lease_expires_at, lease_holder, last_error, created_at, updated_at, finished_at, traceparent
FROM jobs
WHERE ($1 = '' OR state = $1) AND ($2 = '' OR provider = $2) AND id < $3
ORDER BY id DESC
LIMIT $4
