-- Every track of the name but the committed generation's: the replaced
-- snapshot, and writes that never committed.
DELETE FROM snapshot_tracks WHERE name = $1 AND generation <> $2
