-- Values may be stored compressed: how (identity or zstd), and the length
-- of the value as written (NULL: size_bytes, which is what is stored).
ALTER TABLE entries ADD COLUMN encoding TEXT NOT NULL DEFAULT 'identity';
ALTER TABLE entries ADD COLUMN raw_bytes BIGINT;
