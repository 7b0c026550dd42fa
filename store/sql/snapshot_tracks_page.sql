SELECT position, track_id, data
FROM snapshot_tracks
WHERE name = $1 AND generation = $2 AND position > $3
ORDER BY position
LIMIT $4
