-- One change row per entry the selector matches, numbered after the locked
-- revision ($1) in key order. SELECTOR is replaced by the selector's condition.
INSERT INTO changes (revision, kind, key, policy, tags, provider, at)
SELECT $1 + ROW_NUMBER() OVER (ORDER BY key), $2, key, policy, tags, provider, $3
FROM entries
WHERE SELECTOR
