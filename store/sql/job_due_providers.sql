-- Due work by provider and priority, most urgent first (oldest first within
-- a priority): claims go down this list, so the lowest priority number is
-- claimed first across every provider.
SELECT provider, priority
FROM jobs
WHERE state = 'available' AND run_after <= $1
GROUP BY provider, priority
ORDER BY priority, MIN(id)
