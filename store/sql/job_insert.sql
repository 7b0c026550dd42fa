-- Enqueues jobs, each unless an unfinished job for the same key exists
-- (then nothing is returned for it and its caller shares that job, as does
-- a second request for one key in the same statement), and, when its `seen`
-- is set, only while the key's entry is still at revision `seen` (0:
-- absent): a caller that read a miss does not fetch again what a job
-- finished since has written. {rows} is replaced by groups of 9
-- placeholders in the column order of `requests`.
WITH requests (provider, url, policy, tags, priority, max_attempts, now, traceparent, seen) AS (
    VALUES {rows}
)
INSERT INTO jobs (provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
                  created_at, updated_at, traceparent, dedupe_key)
SELECT r.provider, r.url, r.policy, r.tags, r.priority, 'available', 0, r.max_attempts,
       r.now, r.now, r.now, r.traceparent, r.url
FROM requests r
WHERE r.seen IS NULL
   OR COALESCE((SELECT revision FROM entries WHERE key = r.url), 0) = r.seen
ON CONFLICT (dedupe_key) WHERE state IN ('available', 'running') DO NOTHING
RETURNING id, provider, url, policy, tags, priority, state, attempt, max_attempts, run_after,
       lease_expires_at, lease_holder, last_error, created_at, updated_at, finished_at, traceparent
