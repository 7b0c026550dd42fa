SELECT COUNT(*) AS tracks, COALESCE(SUM(LENGTH(data)), 0) AS bytes
FROM snapshot_tracks
WHERE name = $1 AND generation = $2
