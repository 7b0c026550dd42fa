SELECT provider, state, COUNT(*) AS jobs, MIN(created_at) AS oldest_created_at FROM jobs WHERE state IN ('available', 'running') GROUP BY provider, state
