-- A batch's rows in one statement on Postgres: the revision counter
-- ({counter}), the upsert (`entry_upsert`), the old tags of the keys written
-- that their new tags no longer name, the new tags (`entry_tag_insert`) and
-- the change rows (`change_insert`), each text set in at its marker below.
-- The sub-statements see one snapshot and touch disjoint rows: the tags
-- that go are never the ones that come. SQLite runs the same steps one by
-- one.
--
-- `counter` yields the base the rows' revisions are added to. Under the
-- revision lock (taken by an earlier statement) it sets the counter to the
-- batch's last revision and yields 0: the rows carry their revisions. A
-- batch of unconditional writes takes the lock here instead, one round
-- trip less: the counter moves by the batch's count, and the rows carry
-- 1, 2, ... Every other sub-statement reads `counter` before it writes a
-- row, so the lock is always the statement's first, as in every other
-- writer (no two writers wait on each other in a circle).
WITH counter AS (
{counter}
), upserted AS (
{upsert}
RETURNING key, tags, created_at
), tags_gone AS (
    DELETE FROM entry_tags t
    USING upserted u
    WHERE t.key = u.key
      AND t.tag NOT IN (SELECT jsonb_array_elements_text(u.tags::jsonb))
), tags_added AS (
{tags}
), logged AS (
{changes}
)
-- One row per entry written: the base and the row's created_at.
SELECT counter.base, upserted.key, upserted.created_at FROM counter, upserted
