-- {rows}: one group of a placeholder per key.
DELETE FROM entry_tags WHERE key IN {rows}
