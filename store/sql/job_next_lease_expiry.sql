-- When the earliest lease of a running job runs out (NULL when none runs):
-- the rescuer sleeps until then.
SELECT MIN(lease_expires_at) FROM jobs WHERE state = 'running'
