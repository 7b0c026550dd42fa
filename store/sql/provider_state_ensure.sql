-- First statement of a gated claim: creates the row if needed and, on
-- SQLite, takes the write lock for the rest of the transaction.
INSERT INTO provider_state (provider) VALUES ($1) ON CONFLICT (provider) DO NOTHING
