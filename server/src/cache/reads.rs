//! Get, BatchGet and GetRandom: reads through the hot tier to the store.

use roadie_proto::v1 as pb;
use roadie_store::now_ms;
use tonic::{Request, Response, Status};

use super::CacheService;
use crate::{
    convert::entry_to_proto,
    error::ApiError,
    validate::{self, FieldError},
};

pub(super) async fn get(
    service: &CacheService,
    request: Request<pb::GetRequest>,
) -> Result<Response<pb::GetResponse>, Status> {
    let req = request.into_inner();
    validate::key("key", &req.key).map_err(ApiError::from)?;
    crate::rpc::record_key(&req.key);
    let read = service.read_options(
        req.max_stale.as_ref(),
        req.min_confidence,
        req.fingerprint,
        req.policy,
    )?;
    let entry = service.read_through(&req.key).await?;
    Ok(Response::new(service.answer(entry, &read, now_ms())))
}

pub(super) async fn batch_get(
    service: &CacheService,
    request: Request<pb::BatchGetRequest>,
) -> Result<Response<pb::BatchGetResponse>, Status> {
    let req = request.into_inner();
    let max = service.state.settings.limits.max_batch_keys;
    if req.keys.is_empty() || req.keys.len() > max {
        return Err(ApiError::from(FieldError::new(
            "keys",
            format!("has {} keys, allowed 1 to {max}", req.keys.len()),
        ))
        .into());
    }
    for (i, key) in req.keys.iter().enumerate() {
        validate::key(&format!("keys[{i}]"), key).map_err(ApiError::from)?;
    }
    let read = service.read_options(
        req.max_stale.as_ref(),
        req.min_confidence,
        String::new(),
        req.policy,
    )?;
    let mut by_key = service.read_many_through(&req.keys).await?;
    let now = now_ms();
    let mut results = Vec::with_capacity(req.keys.len());
    for (i, key) in req.keys.iter().enumerate() {
        // A key asked for twice is answered twice; only its last mention may move the entry.
        let repeated = req.keys[i + 1..].contains(key);
        let entry = if repeated {
            by_key.get(key).cloned()
        } else {
            by_key.remove(key)
        };
        results.push(service.answer(entry, &read, now));
    }
    Ok(Response::new(pb::BatchGetResponse { results }))
}

pub(super) async fn get_random(
    service: &CacheService,
    request: Request<pb::GetRandomRequest>,
) -> Result<Response<pb::GetRandomResponse>, Status> {
    let req = request.into_inner();
    validate::text("tag", &req.tag, validate::MAX_TAG_BYTES).map_err(ApiError::from)?;
    if !req.policy.is_empty() {
        service.configured_policy("policy", req.policy.clone())?;
    }
    service.known_provider("provider", &req.provider)?;
    let now = now_ms();
    let entry = service
        .state
        .store
        .entry_random(&req.tag, &req.policy, &req.provider, now)
        .await
        .map_err(ApiError::from)?;
    let entry = entry.map(|e| {
        service.state.access.record(&e.key, now);
        entry_to_proto(e, now)
    });
    Ok(Response::new(pb::GetRandomResponse { entry }))
}
