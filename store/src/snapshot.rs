//! Library snapshots: a library's tracks under a name, in order, written
//! whole (streamed: staged in chunks, then swapped in by one commit) or
//! changed by a delta merged in one transaction. Either way one revision
//! and one change on the log.

use sqlx::{Any, Row, Transaction, any::AnyRow};

use crate::{
    Backend, Store, StoreError,
    change::{ChangeKind, change_insert, from_i64, revision_lock, revision_set, to_i64},
    sql::sql,
};

/// Tracks inserted per statement while staging (5 parameters each, well
/// inside both backends' limits).
const STAGE_ROWS: usize = 500;

/// The policy name snapshot changes carry on the change log.
pub const SNAPSHOT_POLICY: &str = "snapshot";

/// One track: its id and the JSON object the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// The track's id, unique within a snapshot.
    pub id: String,
    /// The track as a JSON object.
    pub data: Vec<u8>,
}

/// What a snapshot holds, without its tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The snapshot's name.
    pub name: String,
    /// The generation whose tracks are the snapshot's.
    pub generation: i64,
    /// The library's modification time the tracks reflect, ms since the epoch.
    pub library_mtime: i64,
    /// The track ids the last delta processed.
    pub processed_ids: Vec<String>,
    /// How many tracks.
    pub tracks: u64,
    /// Bytes of track data.
    pub bytes: u64,
    /// When it was last written whole.
    pub created_at: i64,
    /// When it was last written or merged.
    pub updated_at: i64,
    /// The revision of that write or merge.
    pub revision: u64,
}

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// Merged and committed.
    Done(SnapshotMeta),
    /// No snapshot of that name.
    Missing,
    /// Not merged: the snapshot would hold this many tracks, past the limit.
    TooLarge {
        /// Tracks after the merge.
        tracks: u64,
    },
}

/// A delta: tracks to replace in place or append, ids to drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotDelta {
    /// Updated tracks (replaced where they stand) and new ones (appended).
    pub updates: Vec<Track>,
    /// Ids of removed tracks.
    pub removed: Vec<String>,
    /// The library's modification time captured before the delta was read.
    pub library_mtime: i64,
    /// The ids this delta processed.
    pub processed_ids: Vec<String>,
}

impl Store {
    /// A fresh generation for a whole write.
    pub fn snapshot_generation() -> i64 {
        rand::random::<i64>().checked_abs().unwrap_or(1)
    }

    /// Stages `tracks` of a whole write of `name` under `generation`, the
    /// first at `position`. Staged tracks are nobody's until
    /// [`Store::snapshot_commit`].
    pub async fn snapshot_stage(
        &self,
        name: &str,
        generation: i64,
        position: u64,
        tracks: &[Track],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut position = to_i64(position);
        for chunk in tracks.chunks(STAGE_ROWS) {
            let rows = (0..chunk.len())
                .map(|i| {
                    let p = i * 5;
                    format!(
                        "(${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let text = sql!("snapshot_track_insert").replace("ROWS", &rows);
            let mut query = sqlx::query(&text);
            for track in chunk {
                query = query
                    .bind(name)
                    .bind(generation)
                    .bind(position)
                    .bind(track.id.as_str())
                    .bind(track.data.as_slice());
                position += 1;
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes the staged `generation` the snapshot `name` (replacing what it
    /// held) in one transaction: one revision, one change. A conflict when
    /// fewer than `staged` tracks are found (another whole write of the same
    /// name committed meanwhile and dropped them).
    pub async fn snapshot_commit(
        &self,
        name: &str,
        generation: i64,
        staged: u64,
        library_mtime: i64,
        processed_ids: &[String],
        now: i64,
    ) -> Result<SnapshotMeta, StoreError> {
        let mut tx = self.pool.begin().await?;
        let base = revision_lock(&mut tx).await?;
        let (tracks, bytes) = generation_size(&mut tx, name, generation).await?;
        if tracks != staged {
            return Err(StoreError::Conflict(format!(
                "snapshot {name:?}: {staged} tracks staged, {tracks} found"
            )));
        }
        let revision = base + 1;
        let meta = SnapshotMeta {
            name: name.to_owned(),
            generation,
            library_mtime,
            processed_ids: processed_ids.to_vec(),
            tracks,
            bytes,
            created_at: now,
            updated_at: now,
            revision,
        };
        save_meta(&mut tx, &meta, to_i64(tracks)).await?;
        sqlx::query(sql!("snapshot_tracks_drop_others"))
            .bind(name)
            .bind(generation)
            .execute(&mut *tx)
            .await?;
        record(&mut tx, self.backend, name, revision, now).await?;
        tx.commit().await?;
        self.announce(revision);
        Ok(meta)
    }

    /// Drops the staged tracks of a whole write that will not commit.
    pub async fn snapshot_discard(&self, name: &str, generation: i64) -> Result<(), StoreError> {
        sqlx::query(sql!("snapshot_tracks_drop"))
            .bind(name)
            .bind(generation)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The snapshot `name` without its tracks.
    pub async fn snapshot_meta(&self, name: &str) -> Result<Option<SnapshotMeta>, StoreError> {
        let row = sqlx::query(sql!("snapshot_get"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(meta_from_row).transpose()
    }

    /// Up to `limit` tracks of `generation` after `after` (a position; -1
    /// for the first), in order, with their positions.
    pub async fn snapshot_tracks(
        &self,
        name: &str,
        generation: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Track)>, StoreError> {
        let rows = sqlx::query(sql!("snapshot_tracks_page"))
            .bind(name)
            .bind(generation)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("position")?,
                    Track {
                        id: row.try_get("track_id")?,
                        data: row.try_get("data")?,
                    },
                ))
            })
            .collect()
    }

    /// Merges `delta` into the snapshot `name` in one transaction: removed
    /// tracks dropped, updated ones replaced where they stand, new ones
    /// appended in the delta's order; rolled back when the snapshot would
    /// then hold more than `max_tracks`.
    pub async fn snapshot_merge(
        &self,
        name: &str,
        delta: &SnapshotDelta,
        max_tracks: u64,
        now: i64,
    ) -> Result<Merged, StoreError> {
        let mut tx = self.pool.begin().await?;
        let base = revision_lock(&mut tx).await?;
        let Some(row) = sqlx::query(sql!("snapshot_get"))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Merged::Missing);
        };
        let mut meta = meta_from_row(&row)?;
        let mut next_position: i64 = row.try_get("next_position")?;
        for id in &delta.removed {
            sqlx::query(sql!("snapshot_track_remove"))
                .bind(name)
                .bind(meta.generation)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for track in &delta.updates {
            let replaced = sqlx::query(sql!("snapshot_track_replace"))
                .bind(name)
                .bind(meta.generation)
                .bind(track.id.as_str())
                .bind(track.data.as_slice())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if replaced == 0 {
                sqlx::query(&sql!("snapshot_track_insert").replace("ROWS", "($1, $2, $3, $4, $5)"))
                    .bind(name)
                    .bind(meta.generation)
                    .bind(next_position)
                    .bind(track.id.as_str())
                    .bind(track.data.as_slice())
                    .execute(&mut *tx)
                    .await?;
                next_position += 1;
            }
        }
        let (tracks, bytes) = generation_size(&mut tx, name, meta.generation).await?;
        if tracks > max_tracks {
            // Dropped unfinished: the transaction rolls back.
            return Ok(Merged::TooLarge { tracks });
        }
        let revision = base + 1;
        meta.library_mtime = delta.library_mtime;
        meta.processed_ids = delta.processed_ids.clone();
        meta.tracks = tracks;
        meta.bytes = bytes;
        meta.updated_at = now;
        meta.revision = revision;
        save_meta(&mut tx, &meta, next_position).await?;
        record(&mut tx, self.backend, name, revision, now).await?;
        tx.commit().await?;
        self.announce(revision);
        Ok(Merged::Done(meta))
    }

    /// Deletes the snapshot `name` and its tracks; its revision, or `None`
    /// when there was none.
    pub async fn snapshot_delete(&self, name: &str, now: i64) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let base = revision_lock(&mut tx).await?;
        let deleted = sqlx::query(sql!("snapshot_delete"))
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(None);
        }
        sqlx::query(sql!("snapshot_tracks_drop_all"))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let revision = base + 1;
        record(&mut tx, self.backend, name, revision, now).await?;
        tx.commit().await?;
        self.announce(revision);
        Ok(Some(revision))
    }
}

/// Tracks and bytes of one generation.
async fn generation_size(
    tx: &mut Transaction<'_, Any>,
    name: &str,
    generation: i64,
) -> Result<(u64, u64), StoreError> {
    let row = sqlx::query(sql!("snapshot_size"))
        .bind(name)
        .bind(generation)
        .fetch_one(&mut **tx)
        .await?;
    Ok((
        from_i64(row.try_get("tracks")?),
        from_i64(row.try_get("bytes")?),
    ))
}

async fn save_meta(
    tx: &mut Transaction<'_, Any>,
    meta: &SnapshotMeta,
    next_position: i64,
) -> Result<(), StoreError> {
    let processed = serde_json::to_string(&meta.processed_ids)
        .map_err(|e| StoreError::Corrupt(format!("processed ids: {e}")))?;
    sqlx::query(sql!("snapshot_upsert"))
        .bind(meta.name.as_str())
        .bind(meta.generation)
        .bind(meta.library_mtime)
        .bind(processed)
        .bind(to_i64(meta.tracks))
        .bind(to_i64(meta.bytes))
        .bind(next_position)
        .bind(meta.created_at)
        .bind(meta.updated_at)
        .bind(to_i64(meta.revision))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The change a snapshot's write, merge or deletion leaves on the log.
async fn record(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    name: &str,
    revision: u64,
    now: i64,
) -> Result<(), StoreError> {
    change_insert(
        tx,
        backend,
        revision,
        ChangeKind::Snapshot,
        name,
        SNAPSHOT_POLICY,
        "[]",
        None,
        now,
    )
    .await?;
    revision_set(tx, revision).await
}

fn meta_from_row(row: &AnyRow) -> Result<SnapshotMeta, StoreError> {
    let processed: String = row.try_get("processed_ids")?;
    Ok(SnapshotMeta {
        name: row.try_get("name")?,
        generation: row.try_get("generation")?,
        library_mtime: row.try_get("library_mtime")?,
        processed_ids: serde_json::from_str(&processed)
            .map_err(|e| StoreError::Corrupt(format!("processed ids: {e}")))?,
        tracks: from_i64(row.try_get("tracks")?),
        bytes: from_i64(row.try_get("bytes")?),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revision: from_i64(row.try_get("revision")?),
    })
}
