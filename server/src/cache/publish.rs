//! PublishEvent: a library event becomes invalidations through the rules
//! of `events`.

use roadie_proto::v1 as pb;
use roadie_store::Selector;
use tonic::{Request, Response, Status};

use super::CacheService;
use crate::{
    config::EventKind,
    convert,
    error::ApiError,
    events::{self, Event},
    validate::{self, FieldError},
};

fn event_from_proto(req: pb::PublishEventRequest) -> Result<Event, ApiError> {
    let kind = pb::LibraryEventKind::try_from(req.kind)
        .ok()
        .and_then(convert::event_kind_from_proto)
        .ok_or_else(|| {
            FieldError::new(
                "kind",
                format!("must be a known LibraryEventKind, got {}", req.kind),
            )
        })?;
    let needs_track = matches!(
        kind,
        EventKind::TrackAdded
            | EventKind::TrackRemoved
            | EventKind::TrackModified
            | EventKind::FingerprintChanged
    );
    if needs_track && req.track_id.is_empty() {
        return Err(FieldError::new("track_id", format!("is required for {kind:?}")).into());
    }
    if kind == EventKind::FingerprintChanged && req.fingerprint.is_empty() {
        return Err(FieldError::new("fingerprint", "is required for FingerprintChanged").into());
    }
    if kind == EventKind::ManualInvalidation && !req.album.is_empty() && req.artist.is_empty() {
        return Err(FieldError::new(
            "artist",
            "is required to scope a manual invalidation by album",
        )
        .into());
    }
    for (field, value) in [
        ("track_id", &req.track_id),
        ("artist", &req.artist),
        ("album", &req.album),
        ("old_artist", &req.old_artist),
        ("old_album", &req.old_album),
    ] {
        validate::optional_text(field, value, validate::MAX_TAG_BYTES)?;
    }
    validate::optional_text(
        "fingerprint",
        &req.fingerprint,
        validate::MAX_FINGERPRINT_BYTES,
    )?;
    Ok(Event {
        kind: Some(kind),
        track: req.track_id,
        artist: req.artist,
        album: req.album,
        old_artist: req.old_artist,
        old_album: req.old_album,
    })
}

pub(super) async fn publish_event(
    service: &CacheService,
    request: Request<pb::PublishEventRequest>,
) -> Result<Response<pb::PublishEventResponse>, Status> {
    let event = event_from_proto(request.into_inner())?;
    let settings = &service.state.settings;
    let targets = events::targets(&settings.events.rules, &settings.policies, &event);
    let selectors: Vec<Selector> = targets
        .iter()
        .map(|target| match &target.tag {
            Some(tag) => Selector::PolicyTag {
                policy: target.policy.clone(),
                tag: tag.clone(),
            },
            None => Selector::Policy(target.policy.clone()),
        })
        .collect();
    // Every rule of the event lands in one commit, or none does.
    let (counts, revision) = service.invalidate_each(&selectors).await?;
    let response = pb::PublishEventResponse {
        count: counts.iter().sum(),
        revision,
        applied: targets
            .into_iter()
            .zip(counts)
            .map(|(target, count)| pb::AppliedRule {
                policy: target.policy,
                tag: target.tag.unwrap_or_default(),
                count,
            })
            .collect(),
    };
    tracing::info!(kind = ?event.kind, count = response.count, "library event applied");
    Ok(Response::new(response))
}
