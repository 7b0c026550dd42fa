//! Put, Delete and Invalidate: every write, its conditions and its change.

use roadie_proto::v1 as pb;
use roadie_store::{ChangeKind, DeleteResult, EntryPut, PutResult, Selector, now_ms};
use tonic::{Request, Response, Status};

use super::CacheService;
use crate::{
    error::ApiError,
    validate::{self, FieldError},
};

/// Media type of a Put that names none.
const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";

pub(super) async fn put(
    service: &CacheService,
    request: Request<pb::PutRequest>,
) -> Result<Response<pb::PutResponse>, Status> {
    let req = request.into_inner();
    let put = service.entry_put(req)?;
    crate::rpc::record_key(&put.key);
    let result = service
        .state
        .store
        .entry_put(&put)
        .await
        .map_err(ApiError::from)?;
    let response = match result {
        PutResult::Written {
            revision,
            created_at,
        } => {
            service.state.budgets.wrote(&put.policy, put.value.len());
            if let Some(hot) = service.state.feed.hot_tier() {
                hot.written(put.landed(revision, created_at));
            }
            pb::PutResponse {
                outcome: pb::PutOutcome::Written.into(),
                revision,
                stored_confidence: 0,
            }
        }
        PutResult::KeptHigherConfidence {
            revision,
            confidence,
        } => pb::PutResponse {
            outcome: pb::PutOutcome::KeptHigherConfidence.into(),
            revision,
            stored_confidence: u32::from(confidence),
        },
        PutResult::RevisionMismatch { revision } => pb::PutResponse {
            outcome: pb::PutOutcome::RevisionMismatch.into(),
            revision,
            stored_confidence: 0,
        },
    };
    Ok(Response::new(response))
}

pub(super) async fn delete(
    service: &CacheService,
    request: Request<pb::DeleteRequest>,
) -> Result<Response<pb::DeleteResponse>, Status> {
    let req = request.into_inner();
    validate::key("key", &req.key).map_err(ApiError::from)?;
    crate::rpc::record_key(&req.key);
    let result = service
        .state
        .store
        .entry_delete(&req.key, req.if_revision, now_ms())
        .await
        .map_err(ApiError::from)?;
    let response = match result {
        DeleteResult::Deleted { revision } => {
            service.forget(&req.key, revision);
            pb::DeleteResponse {
                deleted: true,
                revision,
            }
        }
        DeleteResult::Absent => pb::DeleteResponse {
            deleted: false,
            revision: 0,
        },
        DeleteResult::RevisionMismatch { revision } => pb::DeleteResponse {
            deleted: false,
            revision,
        },
    };
    Ok(Response::new(response))
}

pub(super) async fn invalidate(
    service: &CacheService,
    request: Request<pb::InvalidateRequest>,
) -> Result<Response<pb::InvalidateResponse>, Status> {
    use pb::invalidate_request::Selector as S;
    let req = request.into_inner();
    let selector = match req.selector {
        None => {
            return Err(ApiError::from(FieldError::new(
                "selector",
                "set one of key, key_prefix, tag, policy or all",
            ))
            .into());
        }
        Some(S::Key(key)) => validate::key("key", &key).map(|()| Selector::Key(key)),
        Some(S::KeyPrefix(prefix)) => {
            validate::key("key_prefix", &prefix).map(|()| Selector::KeyPrefix(prefix))
        }
        Some(S::Tag(tag)) => {
            validate::text("tag", &tag, validate::MAX_TAG_BYTES).map(|()| Selector::Tag(tag))
        }
        Some(S::Policy(policy)) => {
            if validate::is_policy_name(&policy) {
                Ok(Selector::Policy(policy))
            } else {
                Err(FieldError::new(
                    "policy",
                    "must be 1 to 64 of a-z, 0-9 and _",
                ))
            }
        }
        Some(S::All(true)) => Ok(Selector::All),
        Some(S::All(false)) => Err(FieldError::new(
            "all",
            "must be true to invalidate everything",
        )),
    }
    .map_err(ApiError::from)?;
    let (count, revision) = service.invalidate(&selector).await?;
    Ok(Response::new(pb::InvalidateResponse { count, revision }))
}

impl CacheService {
    fn entry_put(&self, req: pb::PutRequest) -> Result<EntryPut, ApiError> {
        validate::key("key", &req.key)?;
        let max = self.state.settings.limits.max_value_bytes;
        if req.value.len() > max {
            return Err(FieldError::new(
                "value",
                format!("is {} bytes, the limit is {max}", req.value.len()),
            )
            .into());
        }
        validate::optional_text(
            "media_type",
            &req.media_type,
            validate::MAX_MEDIA_TYPE_BYTES,
        )?;
        let policy_name = if req.policy.is_empty() {
            roadie_config::GENERIC_POLICY.to_owned()
        } else {
            self.configured_policy("policy", req.policy)?
        };
        validate::tags("tags", &req.tags)?;
        let confidence = validate::confidence("confidence", req.confidence)?;
        validate::optional_text(
            "fingerprint",
            &req.fingerprint,
            validate::MAX_FINGERPRINT_BYTES,
        )?;
        validate::metadata("metadata", &req.metadata)?;
        let now = now_ms();
        let expires_at = if req.no_expiry {
            None
        } else if let Some(ttl) = &req.ttl {
            let ttl = validate::duration_ms("ttl", ttl)?;
            if ttl == 0 {
                return Err(FieldError::new(
                    "ttl",
                    "must be longer than 0s; set no_expiry for entries that never expire",
                )
                .into());
            }
            Some(now.saturating_add(ttl))
        } else {
            let ttl = self
                .state
                .settings
                .policies
                .get(&policy_name)
                .map_or(std::time::Duration::ZERO, |p| p.ttl);
            roadie_config::expires_at(now, ttl)
        };
        let mut tags = req.tags;
        tags.dedup();
        Ok(EntryPut {
            key: req.key,
            value: req.value.to_vec(),
            media_type: if req.media_type.is_empty() {
                DEFAULT_MEDIA_TYPE.to_owned()
            } else {
                req.media_type
            },
            policy: policy_name,
            tags,
            confidence,
            fingerprint: (!req.fingerprint.is_empty()).then_some(req.fingerprint),
            metadata: req.metadata.into_iter().collect(),
            negative: req.negative,
            expires_at,
            provenance: None,
            keep_higher_confidence: req.keep_higher_confidence,
            if_revision: req.if_revision,
            kind: ChangeKind::Put,
            now,
        })
    }
}
