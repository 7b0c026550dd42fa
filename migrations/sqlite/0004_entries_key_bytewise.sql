-- ListEntries pages through entries in bytewise key order: SQLite's primary
-- key (BINARY collation) orders so already, so nothing is added here; the
-- migration keeps the backends' numbering in step.
SELECT 1;
