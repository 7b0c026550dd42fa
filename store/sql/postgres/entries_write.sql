-- A batch's rows in one statement on Postgres, one round trip instead of
-- four: the upsert (`entry_upsert`), the old tags of the keys written that
-- their new tags no longer name, the new tags (`entry_tag_insert`; an
-- existing pair is kept) and the change rows (`change_insert`), each text
-- set in at its marker below. The sub-statements see one snapshot,
-- taken under the revision lock, and touch disjoint rows: the tags that go
-- are never the ones that come. SQLite runs the same steps one by one.
WITH upserted AS (
{upsert}
RETURNING key, tags
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
SELECT count(*) AS written FROM upserted
