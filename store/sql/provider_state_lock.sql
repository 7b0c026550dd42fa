-- First statement of a gated claim: creates the provider's row if needed and
-- locks it (Postgres: the row lock of ON CONFLICT DO UPDATE; SQLite: the
-- write lock), serialising claims for one provider across every worker.
INSERT INTO provider_state (provider) VALUES ($1)
ON CONFLICT (provider) DO UPDATE SET provider = excluded.provider
RETURNING paused_until, tat
