-- In place: the track keeps its position.
UPDATE snapshot_tracks SET data = $4 WHERE name = $1 AND generation = $2 AND track_id = $3
