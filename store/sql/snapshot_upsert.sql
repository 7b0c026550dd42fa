INSERT INTO snapshots (name, generation, library_mtime, processed_ids, tracks, bytes,
                       next_position, created_at, updated_at, revision)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (name) DO UPDATE SET
    generation = excluded.generation,
    library_mtime = excluded.library_mtime,
    processed_ids = excluded.processed_ids,
    tracks = excluded.tracks,
    bytes = excluded.bytes,
    next_position = excluded.next_position,
    created_at = excluded.created_at,
    updated_at = excluded.updated_at,
    revision = excluded.revision
