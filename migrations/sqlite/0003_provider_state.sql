-- Per-provider state shared by every worker. paused_until: upstream pushback
-- (429/503 with Retry-After) stops every worker calling the provider until
-- then, in ms since the Unix epoch.
CREATE TABLE provider_state (
    provider TEXT PRIMARY KEY,
    paused_until BIGINT NOT NULL
);
