-- ROWS is replaced by one ($n, ...) group of five parameters per track:
-- name, generation, position, track id, data.
INSERT INTO snapshot_tracks (name, generation, position, track_id, data) VALUES ROWS
