-- Due work by provider and priority, most urgent first (oldest first within
-- a priority): claims go down this list, so the lowest priority number is
-- claimed first across every provider.
--
-- A skip scan of jobs_due: each step of `pairs` jumps to the next distinct
-- (provider, priority) of the available jobs, and `first` is the oldest due
-- job of a pair, the head of its index range. The cost grows with the pairs
-- (a few per provider), not with the jobs waiting.
WITH RECURSIVE pairs (provider, priority) AS (
    SELECT provider, priority FROM (
        SELECT provider, priority FROM jobs
        WHERE state = 'available'
        ORDER BY provider, priority
        LIMIT 1
    ) head
    UNION ALL
    SELECT j.provider, j.priority
    FROM pairs p
    -- The next priority of the same provider, else the next provider: two
    -- seeks that both engines run on the index (a row-value comparison is
    -- not one seek on SQLite).
    JOIN jobs j ON j.id = COALESCE(
        (SELECT n.id FROM jobs n
         WHERE n.state = 'available' AND n.provider = p.provider AND n.priority > p.priority
         ORDER BY n.provider, n.priority, n.id
         LIMIT 1),
        (SELECT n.id FROM jobs n
         WHERE n.state = 'available' AND n.provider > p.provider
         ORDER BY n.provider, n.priority, n.id
         LIMIT 1)
    )
)
SELECT provider, priority FROM (
    SELECT p.provider, p.priority,
           (SELECT d.id FROM jobs d
            WHERE d.state = 'available' AND d.provider = p.provider AND d.priority = p.priority
              AND d.run_after <= $1
            ORDER BY d.provider, d.priority, d.id
            LIMIT 1) AS first
    FROM pairs p
) due
WHERE first IS NOT NULL
ORDER BY priority, first
