-- Postgres only: wakes servers waiting on this job, delivered at commit.
SELECT pg_notify('roadie_jobs', CAST($1 AS TEXT))
