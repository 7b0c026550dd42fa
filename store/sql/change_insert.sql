-- {rows}: groups of 7 placeholders in the column order below.
INSERT INTO changes (revision, kind, key, policy, tags, provider, at)
VALUES {rows}
