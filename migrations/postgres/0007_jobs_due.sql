-- Available jobs by provider, then priority, then age: what a claim reads.
-- The list of due work skips along it one (provider, priority) pair at a
-- time, and a claim takes the head of one pair, so neither reads every
-- waiting job. It replaces jobs_claim, which no query used alone.
CREATE INDEX jobs_due ON jobs (provider, priority, id) WHERE state = 'available';
DROP INDEX jobs_claim;
