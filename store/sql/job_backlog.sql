SELECT provider, COUNT(*) AS backlog FROM jobs WHERE state = 'available' GROUP BY provider
