//! `roadie.v1.Snapshots`: library snapshots. A whole write streams in and
//! is staged in chunks, then swapped in by one commit; a delta is merged by
//! the store in one transaction; a read streams the tracks back, ending
//! ABORTED if the snapshot changes under it. Validity (the library tool's
//! rule) is judged here, once.

use std::{collections::HashSet, sync::Arc};

use futures::Stream;
use roadie_proto::v1::{self as pb, snapshots_server::Snapshots};
use roadie_store::{Merged, SnapshotDelta, SnapshotMeta, Store, Track, now_ms};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    convert::timestamp,
    error::ApiError,
    state::AppState,
    validate::{self, FieldError},
};

/// Longest snapshot name.
const MAX_NAME_BYTES: usize = 256;
/// Longest track id.
const MAX_TRACK_ID_BYTES: usize = 256;
/// Largest track.
const MAX_TRACK_BYTES: usize = 64 * 1024;
/// Most processed ids a header may carry.
const MAX_PROCESSED_IDS: usize = 1_000_000;
/// Tracks per message of a read, by default and at most.
const DEFAULT_CHUNK_TRACKS: u32 = 1000;
const MAX_CHUNK_TRACKS: u32 = 10_000;
/// Tracks staged per store transaction while a whole write streams in.
const STAGE_TRACKS: usize = 5000;

/// The Snapshots service.
#[derive(Debug, Clone)]
pub struct SnapshotsService {
    state: Arc<AppState>,
}

impl SnapshotsService {
    /// The service over `state`.
    pub fn new(state: Arc<AppState>) -> SnapshotsService {
        SnapshotsService { state }
    }

    async fn existing(&self, name: &str) -> Result<SnapshotMeta, ApiError> {
        self.state
            .store
            .snapshot_meta(name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no snapshot {}", validate::quoted(name))))
    }

    /// The info of a snapshot just written or merged, judged for the
    /// library time it was written with.
    fn written(&self, meta: SnapshotMeta) -> Result<pb::SnapshotInfo, ApiError> {
        let validity = pb::Validity {
            library_mtime: Some(timestamp(meta.library_mtime)),
            max_age: None,
        };
        self.info(meta, Some(&validity))
    }

    /// The info of `meta`, judged valid or not as `validity` asks.
    fn info(
        &self,
        meta: SnapshotMeta,
        validity: Option<&pb::Validity>,
    ) -> Result<pb::SnapshotInfo, ApiError> {
        let library_mtime = validity
            .and_then(|v| v.library_mtime.as_ref())
            .map(|at| validate::timestamp_ms("validity.library_mtime", at))
            .transpose()?;
        let max_age = match validity.and_then(|v| v.max_age.as_ref()) {
            Some(age) => validate::duration_ms("validity.max_age", age)?,
            None => {
                i64::try_from(self.state.settings.snapshots.max_age.as_millis()).unwrap_or(i64::MAX)
            }
        };
        let (valid, validity) = judge(&meta, library_mtime, max_age, now_ms());
        Ok(pb::SnapshotInfo {
            library_mtime: Some(timestamp(meta.library_mtime)),
            processed_ids: meta.processed_ids,
            tracks: meta.tracks,
            bytes: meta.bytes,
            created_at: Some(timestamp(meta.created_at)),
            updated_at: Some(timestamp(meta.updated_at)),
            revision: meta.revision,
            valid,
            validity,
            name: meta.name,
        })
    }
}

/// The library tool's rule: valid at any age while the library has not
/// changed since the snapshot's library time; otherwise while younger than
/// `max_age` (ms), counted from the last write or merge.
fn judge(
    meta: &SnapshotMeta,
    library_mtime: Option<i64>,
    max_age: i64,
    now: i64,
) -> (bool, String) {
    let age = (now - meta.updated_at).max(0);
    let age_text = humantime::format_duration(std::time::Duration::from_secs(
        u64::try_from(age / 1000).unwrap_or(0),
    ));
    let max_text = humantime::format_duration(std::time::Duration::from_secs(
        u64::try_from(max_age / 1000).unwrap_or(0),
    ));
    match library_mtime {
        Some(now_mtime) if now_mtime <= meta.library_mtime => (
            true,
            "valid: the library has not changed since the snapshot".to_owned(),
        ),
        changed => {
            let why = if changed.is_some() {
                "the library changed since the snapshot"
            } else {
                "no library time given"
            };
            if age < max_age {
                (
                    true,
                    format!("valid: {why}, and it is {age_text} old, under {max_text}"),
                )
            } else {
                (
                    false,
                    format!("not valid: {why}, and it is {age_text} old, past {max_text}"),
                )
            }
        }
    }
}

/// A header's parts, checked.
struct Header {
    name: String,
    library_mtime: i64,
    processed_ids: Vec<String>,
}

fn header(header: Option<pb::SnapshotHeader>) -> Result<Header, ApiError> {
    let Some(header) = header else {
        return Err(FieldError::new("header", "the first message must carry the header").into());
    };
    validate::text("header.name", &header.name, MAX_NAME_BYTES)?;
    let library_mtime = header
        .library_mtime
        .as_ref()
        .ok_or_else(|| FieldError::new("header.library_mtime", "must be set"))?;
    let library_mtime = validate::timestamp_ms("header.library_mtime", library_mtime)?;
    if header.processed_ids.len() > MAX_PROCESSED_IDS {
        return Err(FieldError::new(
            "header.processed_ids",
            format!(
                "has {} ids, the limit is {MAX_PROCESSED_IDS}",
                header.processed_ids.len()
            ),
        )
        .into());
    }
    for (i, id) in header.processed_ids.iter().enumerate() {
        validate::text(
            &format!("header.processed_ids[{i}]"),
            id,
            MAX_TRACK_ID_BYTES,
        )?;
    }
    Ok(Header {
        name: header.name,
        library_mtime,
        processed_ids: header.processed_ids,
    })
}

/// Checks one track (`field` names it) and that its id is new in `seen`.
fn track(field: &str, track: pb::Track, seen: &mut HashSet<String>) -> Result<Track, ApiError> {
    validate::text(&format!("{field}.id"), &track.id, MAX_TRACK_ID_BYTES)?;
    if track.json.len() > MAX_TRACK_BYTES {
        return Err(FieldError::new(
            format!("{field}.json"),
            format!(
                "is {} bytes, the limit is {MAX_TRACK_BYTES}",
                track.json.len()
            ),
        )
        .into());
    }
    let object = track.json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !object || serde_json::from_slice::<serde::de::IgnoredAny>(&track.json).is_err() {
        return Err(FieldError::new(format!("{field}.json"), "is not a JSON object").into());
    }
    if !seen.insert(track.id.clone()) {
        return Err(FieldError::new(
            format!("{field}.id"),
            format!("{} is there twice", validate::quoted(&track.id)),
        )
        .into());
    }
    Ok(Track {
        id: track.id,
        data: track.json,
    })
}

/// The next message of a stream after its first, which alone has a header.
async fn next<T>(
    stream: &mut Streaming<T>,
    has_header: impl Fn(&T) -> bool,
) -> Result<Option<T>, Status> {
    let Some(message) = stream.message().await? else {
        return Ok(None);
    };
    if has_header(&message) {
        return Err(ApiError::from(FieldError::new(
            "header",
            "only the first message carries the header",
        ))
        .into());
    }
    Ok(Some(message))
}

/// Stages the tracks of a whole write as they stream in.
struct Staging<'a> {
    store: &'a Store,
    name: String,
    generation: i64,
    staged: u64,
    pending: Vec<Track>,
}

impl Staging<'_> {
    /// Tracks taken so far, staged or pending.
    fn count(&self) -> u64 {
        self.staged + self.pending.len() as u64
    }

    async fn push(&mut self, track: Track) -> Result<(), ApiError> {
        self.pending.push(track);
        if self.pending.len() >= STAGE_TRACKS {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ApiError> {
        if !self.pending.is_empty() {
            self.store
                .snapshot_stage(&self.name, self.generation, self.staged, &self.pending)
                .await?;
            self.staged += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(())
    }
}

type TrackStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<pb::GetSnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn put_snapshot(
        &self,
        request: Request<Streaming<pb::PutSnapshotRequest>>,
    ) -> Result<Response<pb::PutSnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(ApiError::from(FieldError::new("header", "the stream was empty")).into());
        };
        let head = header(first.header)?;
        let store = &self.state.store;
        let mut staging = Staging {
            store,
            name: head.name.clone(),
            generation: roadie_store::Store::snapshot_generation(),
            staged: 0,
            pending: Vec::new(),
        };
        let mut seen = HashSet::new();
        let mut tracks = first.tracks;
        let max_tracks = self.state.settings.snapshots.max_tracks;
        let written: Result<(), Status> = async {
            loop {
                for t in tracks {
                    let index = staging.count();
                    if index >= max_tracks {
                        return Err(ApiError::from(FieldError::new(
                            format!("tracks[{index}]"),
                            format!(
                                "is past the limit (snapshots.max_tracks) of {max_tracks} tracks"
                            ),
                        ))
                        .into());
                    }
                    let t = track(&format!("tracks[{index}]"), t, &mut seen)?;
                    staging.push(t).await?;
                }
                match next(&mut stream, |m: &pb::PutSnapshotRequest| m.header.is_some()).await? {
                    Some(message) => tracks = message.tracks,
                    None => break,
                }
            }
            staging.flush().await?;
            Ok(())
        }
        .await;
        if let Err(status) = written {
            // Best effort: what is left is dropped by the name's next commit.
            let _ = store.snapshot_discard(&head.name, staging.generation).await;
            return Err(status);
        }
        let committed = store
            .snapshot_commit(
                &head.name,
                staging.generation,
                staging.staged,
                head.library_mtime,
                &head.processed_ids,
                now_ms(),
            )
            .await;
        let meta = match committed {
            Ok(meta) => meta,
            Err(error) => {
                let _ = store.snapshot_discard(&head.name, staging.generation).await;
                return Err(ApiError::from(error).into());
            }
        };
        let info = self.written(meta)?;
        Ok(Response::new(pb::PutSnapshotResponse { info: Some(info) }))
    }

    type GetSnapshotStream = TrackStream;

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<Self::GetSnapshotStream>, Status> {
        let req = request.into_inner();
        validate::text("name", &req.name, MAX_NAME_BYTES).map_err(ApiError::from)?;
        let chunk = match req.chunk_tracks {
            0 => DEFAULT_CHUNK_TRACKS,
            n if n > MAX_CHUNK_TRACKS => {
                return Err(ApiError::from(FieldError::new(
                    "chunk_tracks",
                    format!("is {n}, the limit is {MAX_CHUNK_TRACKS}"),
                ))
                .into());
            }
            n => n,
        };
        let meta = self.existing(&req.name).await?;
        let (name, generation, revision) = (meta.name.clone(), meta.generation, meta.revision);
        let info = self.info(meta, req.validity.as_ref())?;
        let send_tracks = info.valid || !req.only_if_valid;
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let store = self.state.store.clone();
        tokio::spawn(async move {
            let first = pb::GetSnapshotResponse {
                info: Some(info),
                tracks: Vec::new(),
            };
            if sender.send(Ok(first)).await.is_err() || !send_tracks {
                return;
            }
            let mut after = -1;
            loop {
                let page = match read_page(&store, &name, generation, revision, after, chunk).await
                {
                    Ok(page) => page,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                let Some((last, _)) = page.last() else { return };
                after = *last;
                let tracks = page
                    .into_iter()
                    .map(|(_, t)| pb::Track {
                        id: t.id,
                        json: t.data,
                    })
                    .collect();
                let message = pb::GetSnapshotResponse { info: None, tracks };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn get_snapshot_info(
        &self,
        request: Request<pb::GetSnapshotInfoRequest>,
    ) -> Result<Response<pb::GetSnapshotInfoResponse>, Status> {
        let req = request.into_inner();
        validate::text("name", &req.name, MAX_NAME_BYTES).map_err(ApiError::from)?;
        let meta = self.existing(&req.name).await?;
        let info = self.info(meta, req.validity.as_ref())?;
        Ok(Response::new(pb::GetSnapshotInfoResponse {
            info: Some(info),
        }))
    }

    async fn merge_snapshot(
        &self,
        request: Request<Streaming<pb::MergeSnapshotRequest>>,
    ) -> Result<Response<pb::MergeSnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(ApiError::from(FieldError::new("header", "the stream was empty")).into());
        };
        let head = header(first.header.clone())?;
        let mut seen = HashSet::new();
        let mut updates = Vec::new();
        let mut removed = Vec::new();
        let mut message = first;
        loop {
            for t in message.updates {
                let field = format!("updates[{}]", updates.len());
                updates.push(track(&field, t, &mut seen)?);
            }
            for id in message.removed_ids {
                let field = format!("removed_ids[{}]", removed.len());
                validate::text(&field, &id, MAX_TRACK_ID_BYTES).map_err(ApiError::from)?;
                removed.push(id);
            }
            match next(&mut stream, |m: &pb::MergeSnapshotRequest| {
                m.header.is_some()
            })
            .await?
            {
                Some(next) => message = next,
                None => break,
            }
        }
        if let Some((i, id)) = removed
            .iter()
            .enumerate()
            .find(|(_, id)| seen.contains(*id))
        {
            return Err(ApiError::from(FieldError::new(
                format!("removed_ids[{i}]"),
                format!("{} is also among the updates", validate::quoted(id)),
            ))
            .into());
        }
        let delta = SnapshotDelta {
            updates,
            removed,
            library_mtime: head.library_mtime,
            processed_ids: head.processed_ids,
        };
        let max_tracks = self.state.settings.snapshots.max_tracks;
        let merged = self
            .state
            .store
            .snapshot_merge(&head.name, &delta, max_tracks, now_ms())
            .await
            .map_err(ApiError::from)?;
        let meta = match merged {
            Merged::Done(meta) => meta,
            Merged::Missing => {
                return Err(ApiError::NotFound(format!(
                    "no snapshot {}",
                    validate::quoted(&head.name)
                ))
                .into());
            }
            Merged::TooLarge { tracks } => {
                return Err(ApiError::from(FieldError::new(
                    "updates",
                    format!(
                        "would make the snapshot {tracks} tracks, the limit \
                         (snapshots.max_tracks) is {max_tracks}"
                    ),
                ))
                .into());
            }
        };
        let info = self.written(meta)?;
        Ok(Response::new(pb::MergeSnapshotResponse {
            info: Some(info),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        validate::text("name", &req.name, MAX_NAME_BYTES).map_err(ApiError::from)?;
        let revision = self
            .state
            .store
            .snapshot_delete(&req.name, now_ms())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| {
                ApiError::NotFound(format!("no snapshot {}", validate::quoted(&req.name)))
            })?;
        Ok(Response::new(pb::DeleteSnapshotResponse { revision }))
    }
}

/// One page of a read, and proof the snapshot did not change under it: its
/// revision, read after the page, is still the one the read started at.
async fn read_page(
    store: &Store,
    name: &str,
    generation: i64,
    revision: u64,
    after: i64,
    chunk: u32,
) -> Result<Vec<(i64, Track)>, Status> {
    let page = store
        .snapshot_tracks(name, generation, after, chunk)
        .await
        .map_err(ApiError::from)?;
    let now = store.snapshot_meta(name).await.map_err(ApiError::from)?;
    if now.map(|m| m.revision) != Some(revision) {
        return Err(Status::aborted(format!(
            "snapshot {} changed while it was read; read it again",
            validate::quoted(name)
        )));
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(library_mtime: i64, updated_at: i64) -> SnapshotMeta {
        SnapshotMeta {
            name: "library".to_owned(),
            generation: 1,
            library_mtime,
            processed_ids: vec![],
            tracks: 0,
            bytes: 0,
            created_at: updated_at,
            updated_at,
            revision: 1,
        }
    }

    #[test]
    fn valid_at_any_age_while_the_library_is_unchanged_else_within_max_age() {
        const HOUR: i64 = 3_600_000;
        let now = 100 * HOUR;
        let day = 24 * HOUR;
        // A week old, library unchanged (or older): valid.
        assert!(judge(&meta(5_000, now - 7 * day), Some(5_000), day, now).0);
        assert!(judge(&meta(5_000, now - 7 * day), Some(4_000), day, now).0);
        // The library changed: valid for max_age, then not.
        assert!(judge(&meta(5_000, now - 23 * HOUR), Some(6_000), day, now).0);
        let (valid, why) = judge(&meta(5_000, now - 25 * HOUR), Some(6_000), day, now);
        assert!(!valid);
        assert!(why.contains("library changed"), "{why}");
        // No library time: by age alone.
        assert!(judge(&meta(5_000, now - HOUR), None, day, now).0);
        assert!(!judge(&meta(5_000, now - 2 * day), None, day, now).0);
    }
}
