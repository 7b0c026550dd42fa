SELECT revision, kind, key, policy, tags, provider, at
FROM changes
WHERE revision > $1
ORDER BY revision
LIMIT $2
