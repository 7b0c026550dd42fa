-- First statement of a gated claim on SQLite (on Postgres it only creates
-- the row): creates the provider's row if needed and locks it (the write
-- lock), serialising claims for one provider across every worker, and
-- says how many of $3 jobs its budget allows at $2 (`rate::budget_sql`).
INSERT INTO provider_state (provider) VALUES ($1)
ON CONFLICT (provider) DO UPDATE SET provider = excluded.provider
RETURNING paused_until, tat, {allowance} AS allowed
