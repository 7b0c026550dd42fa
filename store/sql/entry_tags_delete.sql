DELETE FROM entry_tags WHERE key = $1
