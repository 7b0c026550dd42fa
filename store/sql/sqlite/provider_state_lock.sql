-- The transaction already holds SQLite's write lock (provider_state_ensure).
SELECT paused_until, tat FROM provider_state WHERE provider = $1
