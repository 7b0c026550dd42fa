-- Enqueues unless an unfinished job for the same key exists (then nothing
-- is returned and the caller shares that job).
INSERT INTO jobs (provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
                  created_at, updated_at, traceparent, dedupe_key)
VALUES ($1, $2, $3, $4, $5, 'available', 0, $6, $7, $7, $7, $8, $2)
ON CONFLICT (dedupe_key) WHERE state IN ('available', 'running') DO NOTHING
RETURNING id, provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
       lease_expires_at, lease_holder, last_error, created_at, updated_at, finished_at, traceparent
