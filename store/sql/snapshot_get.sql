SELECT name, generation, library_mtime, processed_ids, tracks, bytes, next_position,
       created_at, updated_at, revision
FROM snapshots
WHERE name = $1
