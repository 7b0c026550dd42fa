-- The fetch-job queue. Times are milliseconds since the Unix epoch.
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    provider TEXT NOT NULL,
    -- The full URL fetched; also the cache key of the result.
    url TEXT NOT NULL,
    -- Where the result goes.
    policy TEXT NOT NULL,
    tags TEXT NOT NULL,
    -- 1 = a caller is waiting; 2 = background; larger = later.
    priority BIGINT NOT NULL,
    -- available, running, completed, failed, cancelled.
    state TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    lease_expires_at BIGINT,
    lease_holder TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    -- W3C traceparent of the request that enqueued the job.
    traceparent TEXT,
    -- One unfinished job per key: concurrent callers share it.
    dedupe_key TEXT NOT NULL
);
CREATE UNIQUE INDEX jobs_dedupe_unfinished ON jobs (dedupe_key) WHERE state IN ('available', 'running');
CREATE INDEX jobs_claim ON jobs (priority, id) WHERE state = 'available';
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_provider ON jobs (provider, id);
