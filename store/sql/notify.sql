-- Postgres only; delivered when the surrounding transaction commits.
SELECT pg_notify($1, $2)
