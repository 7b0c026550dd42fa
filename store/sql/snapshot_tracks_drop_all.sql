DELETE FROM snapshot_tracks WHERE name = $1
