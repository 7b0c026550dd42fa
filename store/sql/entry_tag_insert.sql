-- {rows}: groups of (tag, key).
INSERT INTO entry_tags (tag, key) VALUES {rows} ON CONFLICT DO NOTHING
