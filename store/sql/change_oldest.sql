SELECT MIN(revision) FROM changes
