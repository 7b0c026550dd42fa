DELETE FROM snapshot_tracks WHERE name = $1 AND generation = $2 AND track_id = $3
