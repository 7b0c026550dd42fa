-- No query needs changes_at, and SQLite's planner chose it for the age
-- horizon (`change_age_horizon`): it read every change younger than the
-- horizon and sorted them by revision to find the first (17 ms on a log of
-- 200 000 changes, growing with the log), where a walk of the log in
-- revision order from its oldest row reads little more than what
-- compaction then removes (0.15 ms). Every change row also paid an insert
-- into it.
DROP INDEX changes_at;
