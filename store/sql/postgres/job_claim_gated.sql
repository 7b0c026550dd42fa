-- A rate-limited provider's claim in one statement: its row locked (every
-- worker's claims for the provider take turns here), as many of its due
-- jobs of one priority claimed as its budget allows at $7 (the allowance,
-- none while it is paused), the budget spent (the spend) and the jobs' wait
-- added, all before the next claimer gets the row. A row per claimed job,
-- or one row without a job (id NULL) when none was claimed; `allowed` 0
-- means the budget or a pause held them back. No row at all: the provider
-- has no row yet (and nothing is claimed: the limit is 0, not the NULL
-- that would lift it). The claim marker is `job_claim`, taking at most
-- `allowed` jobs; the allowance and spend markers are `rate::budget_sql`;
-- the unflushed marker commits the claim without waiting for the disk.
WITH gate AS (
    SELECT tat, paused_until FROM provider_state WHERE provider = $5 AND {unflushed} FOR UPDATE
), budget AS (
    SELECT tat, paused_until, {allowance} AS allowed FROM gate
), claimed AS (
{claim}
), spent AS (
    UPDATE provider_state
    SET tat = (SELECT {spend} FROM budget),
        waited_ms = waited_ms + (SELECT COALESCE(sum(waited), 0) FROM claimed)
    WHERE provider = $5 AND EXISTS (SELECT 1 FROM claimed)
)
SELECT budget.tat, budget.paused_until, budget.allowed, claimed.*
FROM budget LEFT JOIN claimed ON true
