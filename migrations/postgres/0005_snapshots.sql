-- Library snapshots: a library's tracks under a name, in order, with the
-- library's modification time captured before they were read and the ids
-- the last delta processed. Times in ms since the Unix epoch.
CREATE TABLE snapshots (
    name TEXT PRIMARY KEY,
    -- The tracks of this generation are the snapshot's; a write in progress
    -- stages its tracks under a generation of its own.
    generation BIGINT NOT NULL,
    library_mtime BIGINT NOT NULL,
    -- JSON array of the track ids the last delta processed.
    processed_ids TEXT NOT NULL,
    tracks BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    -- Position the next appended track takes.
    next_position BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    revision BIGINT NOT NULL
);

CREATE TABLE snapshot_tracks (
    name TEXT NOT NULL,
    generation BIGINT NOT NULL,
    position BIGINT NOT NULL,
    track_id TEXT NOT NULL,
    -- The track: a JSON object, as the client sent it.
    data BYTEA NOT NULL,
    PRIMARY KEY (name, generation, position)
);
CREATE UNIQUE INDEX snapshot_tracks_id ON snapshot_tracks (name, generation, track_id);
