-- {rows}: groups of (tag, key); an existing pair is kept. {after} is `true`,
-- or on Postgres's one statement of a batch the condition that makes the
-- insert wait for the revision counter's row (`entries_write.sql`).
INSERT INTO entry_tags (tag, key)
SELECT column1, column2 FROM (VALUES {rows}) AS pairs WHERE {after}
ON CONFLICT DO NOTHING
