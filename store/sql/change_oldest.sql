-- The oldest revision still in the log; with an empty log, the next revision.
-- One statement, so a write between two reads cannot skew it.
SELECT COALESCE(
    (SELECT MIN(revision) FROM changes),
    (SELECT value FROM roadie_revision WHERE id = 1) + 1
)
