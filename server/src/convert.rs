//! Every conversion between the API's messages (`roadie_proto::v1`) and the
//! domain's types, in one place: timestamps, entries, jobs, change kinds,
//! library event kinds.

use roadie_config::EventKind;
use roadie_proto::v1 as pb;
use roadie_store::{ChangeKind, Entry, Job, JobState};

/// A protobuf timestamp from milliseconds since the epoch.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The API's view of a stored entry, with its freshness at `now`.
pub fn entry_to_proto(entry: Entry, now: i64) -> pb::Entry {
    let status = if entry.negative {
        pb::EntryStatus::Negative
    } else if entry.is_expired(now) {
        pb::EntryStatus::Stale
    } else {
        pb::EntryStatus::Fresh
    };
    pb::Entry {
        status: status.into(),
        created_at: Some(timestamp(entry.created_at)),
        updated_at: Some(timestamp(entry.updated_at)),
        expires_at: entry.expires_at.map(timestamp),
        revision: entry.revision,
        provenance: entry.provenance.map(|p| pb::Provenance {
            provider: p.provider,
            upstream_status: u32::from(p.upstream_status),
            etag: p.etag.unwrap_or_default(),
            last_modified: p.last_modified.unwrap_or_default(),
        }),
        key: entry.key,
        value: entry.value,
        media_type: entry.media_type,
        policy: entry.policy,
        tags: entry.tags,
        confidence: u32::from(entry.confidence),
        fingerprint: entry.fingerprint.unwrap_or_default(),
        metadata: entry.metadata.into_iter().collect(),
    }
}

/// The API's view of a job.
pub fn job_to_proto(job: Job) -> pb::Job {
    let state = match job.state {
        JobState::Available => pb::JobState::Available,
        JobState::Running => pb::JobState::Running,
        JobState::Completed => pb::JobState::Completed,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    };
    pb::Job {
        id: job.id,
        provider: job.provider,
        url: job.url,
        priority: job.priority,
        state: state.into(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        run_after: Some(timestamp(job.run_after)),
        lease_expires_at: job.lease_expires_at.map(timestamp),
        lease_holder: job.lease_holder.unwrap_or_default(),
        last_error: job.last_error.unwrap_or_default(),
        created_at: Some(timestamp(job.created_at)),
        updated_at: Some(timestamp(job.updated_at)),
        finished_at: job.finished_at.map(timestamp),
        traceparent: job.traceparent.unwrap_or_default(),
        policy: job.policy,
    }
}

/// The API's name for a change kind.
pub fn change_kind_to_proto(kind: ChangeKind) -> pb::ChangeKind {
    match kind {
        ChangeKind::Put => pb::ChangeKind::Put,
        ChangeKind::Delete => pb::ChangeKind::Delete,
        ChangeKind::Invalidate => pb::ChangeKind::Invalidate,
        ChangeKind::Expire => pb::ChangeKind::Expire,
        ChangeKind::Evict => pb::ChangeKind::Evict,
        ChangeKind::Fetch => pb::ChangeKind::Fetch,
        ChangeKind::Negative => pb::ChangeKind::Negative,
        ChangeKind::Snapshot => pb::ChangeKind::Snapshot,
    }
}

/// A change kind the API names; `None` for UNSPECIFIED.
pub fn change_kind_from_proto(kind: pb::ChangeKind) -> Option<ChangeKind> {
    Some(match kind {
        pb::ChangeKind::Unspecified => return None,
        pb::ChangeKind::Put => ChangeKind::Put,
        pb::ChangeKind::Delete => ChangeKind::Delete,
        pb::ChangeKind::Invalidate => ChangeKind::Invalidate,
        pb::ChangeKind::Expire => ChangeKind::Expire,
        pb::ChangeKind::Evict => ChangeKind::Evict,
        pb::ChangeKind::Fetch => ChangeKind::Fetch,
        pb::ChangeKind::Negative => ChangeKind::Negative,
        pb::ChangeKind::Snapshot => ChangeKind::Snapshot,
    })
}

/// A library event kind the API names; `None` for UNSPECIFIED.
pub fn event_kind_from_proto(kind: pb::LibraryEventKind) -> Option<EventKind> {
    Some(match kind {
        pb::LibraryEventKind::Unspecified => return None,
        pb::LibraryEventKind::TrackAdded => EventKind::TrackAdded,
        pb::LibraryEventKind::TrackRemoved => EventKind::TrackRemoved,
        pb::LibraryEventKind::TrackModified => EventKind::TrackModified,
        pb::LibraryEventKind::FingerprintChanged => EventKind::FingerprintChanged,
        pb::LibraryEventKind::LibrarySync => EventKind::LibrarySync,
        pb::LibraryEventKind::ManualInvalidation => EventKind::ManualInvalidation,
    })
}
