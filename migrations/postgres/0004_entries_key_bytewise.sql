-- ListEntries pages through entries in bytewise key order whatever the
-- database's collation (SQLite's primary key already orders so).
CREATE INDEX entries_key_bytewise ON entries (key COLLATE "C");
