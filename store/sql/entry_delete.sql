DELETE FROM entries WHERE key = $1 RETURNING policy, tags, provider
