-- Taken first by every write transaction: serialises writers so revisions
-- follow commit order (and on SQLite takes the write lock up front, so the
-- busy timeout applies instead of a deadlock on lock upgrade).
UPDATE roadie_revision SET value = value WHERE id = 1 RETURNING value
