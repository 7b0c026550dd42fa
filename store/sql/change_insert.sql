INSERT INTO changes (revision, kind, key, policy, tags, provider, at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
