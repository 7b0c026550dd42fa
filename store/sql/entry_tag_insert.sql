-- {rows}: groups of (tag, key); an existing pair is kept.
INSERT INTO entry_tags (tag, key) VALUES {rows} ON CONFLICT DO NOTHING
