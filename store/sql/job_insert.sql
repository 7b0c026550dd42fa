-- Enqueues unless an unfinished job for the same key exists (then nothing
-- is returned and the caller shares that job), and, when $9 is set, only
-- while the key's entry is still at revision $9 (0: absent): a caller that
-- read a miss does not fetch again what a job finished since has written.
INSERT INTO jobs (provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
                  created_at, updated_at, traceparent, dedupe_key)
SELECT $1, $2, $3, $4, $5, 'available', 0, $6, $7, $7, $7, $8, $2
WHERE CAST($9 AS BIGINT) IS NULL
   OR COALESCE((SELECT revision FROM entries WHERE key = $2), 0) = CAST($9 AS BIGINT)
ON CONFLICT (dedupe_key) WHERE state IN ('available', 'running') DO NOTHING
RETURNING id, provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
       lease_expires_at, lease_holder, last_error, created_at, updated_at, finished_at, traceparent
