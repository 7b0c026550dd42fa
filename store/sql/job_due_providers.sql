-- Providers with claimable work, the one holding the most urgent job first.
SELECT provider, MIN(priority) AS priority, MIN(id) AS first_id
FROM jobs
WHERE state = 'available' AND run_after <= $1
GROUP BY provider
ORDER BY MIN(priority), MIN(id)
