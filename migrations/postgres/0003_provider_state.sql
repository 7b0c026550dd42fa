-- Per-provider state shared by every worker, in ms since the Unix epoch.
CREATE TABLE provider_state (
    provider TEXT PRIMARY KEY,
    -- Upstream pushback (429/503 with Retry-After): no worker calls the
    -- provider before this.
    paused_until BIGINT NOT NULL DEFAULT 0,
    -- GCRA theoretical arrival time: the rate limit for the whole deployment.
    tat BIGINT NOT NULL DEFAULT 0,
    -- Total time claimed jobs waited between becoming due and being claimed.
    waited_ms BIGINT NOT NULL DEFAULT 0
);
