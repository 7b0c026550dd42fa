//! `roadie.v1.Cache`: every RPC validates its request, talks to the store,
//! and maps failures through [`ApiError`].

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use futures::Stream;
use roadie_proto::v1::{self as pb, cache_server::Cache};
use roadie_providers::{Refusal, check_address, resolve_url};
use roadie_store::{
    ChangeKind, DeleteResult, Entry, EntryPut, Job, JobNew, PutResult, Selector, now_ms,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::{
    config::EventKind,
    convert::{entry_to_proto, job_to_proto, timestamp},
    error::ApiError,
    events::{self, Event},
    state::AppState,
    stats::Answer,
    validate::{self, FieldError},
    watch,
};

/// The Cache service.
#[derive(Debug, Clone)]
pub struct CacheService {
    state: Arc<AppState>,
}

/// What a reader accepts.
struct ReadOptions {
    max_stale_ms: i64,
    min_confidence: u8,
    fingerprint: String,
    miss_policy: String,
}

const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";

impl CacheService {
    /// The service over `state`.
    pub fn new(state: Arc<AppState>) -> CacheService {
        CacheService { state }
    }

    fn read_options(
        &self,
        max_stale: Option<&prost_types::Duration>,
        min_confidence: u32,
        fingerprint: String,
        policy: String,
    ) -> Result<ReadOptions, ApiError> {
        let max_stale_ms = max_stale
            .map(|d| validate::duration_ms("max_stale", d))
            .transpose()?
            .unwrap_or(0);
        let min_confidence = validate::confidence("min_confidence", min_confidence)?;
        validate::optional_text("fingerprint", &fingerprint, validate::MAX_FINGERPRINT_BYTES)?;
        let miss_policy = if policy.is_empty() {
            roadie_config::GENERIC_POLICY.to_owned()
        } else {
            self.configured_policy("policy", policy)?
        };
        Ok(ReadOptions {
            max_stale_ms,
            min_confidence,
            fingerprint,
            miss_policy,
        })
    }

    fn configured_policy(&self, field: &str, policy: String) -> Result<String, ApiError> {
        if self.state.settings.policies.contains_key(&policy) {
            return Ok(policy);
        }
        let known: Vec<&str> = self
            .state
            .settings
            .policies
            .keys()
            .map(String::as_str)
            .collect();
        Err(FieldError::new(
            field,
            format!(
                "unknown policy {}; configured: {}",
                validate::quoted(&policy),
                known.join(", ")
            ),
        )
        .into())
    }

    /// One entry, from the hot tier when it may answer, else from the store
    /// (keeping the answer in the hot tier).
    async fn read_through(&self, key: &str) -> Result<Option<Entry>, ApiError> {
        let Some(hot) = self.state.feed.hot() else {
            return Ok(self.state.store.entry_get(key).await?);
        };
        if let Some(slot) = hot.get(key) {
            return Ok(slot.as_ref().clone());
        }
        let ticket = hot.ticket(key);
        let entry = self.state.store.entry_get(key).await?;
        hot.fill(key, ticket, entry.clone());
        Ok(entry)
    }

    /// The entries of `keys` that exist, by key, as [`Self::read_through`].
    async fn read_many_through(&self, keys: &[String]) -> Result<HashMap<String, Entry>, ApiError> {
        let Some(hot) = self.state.feed.hot() else {
            let found = self.state.store.entry_get_many(keys).await?;
            return Ok(found.into_iter().map(|e| (e.key.clone(), e)).collect());
        };
        let mut by_key = HashMap::new();
        let mut missing = Vec::new();
        for key in keys {
            match hot.get(key) {
                Some(slot) => {
                    if let Some(entry) = slot.as_ref() {
                        by_key.insert(key.clone(), entry.clone());
                    }
                }
                None => missing.push((key.clone(), hot.ticket(key))),
            }
        }
        if missing.is_empty() {
            return Ok(by_key);
        }
        let wanted: Vec<String> = missing.iter().map(|(key, _)| key.clone()).collect();
        let found = self.state.store.entry_get_many(&wanted).await?;
        let mut found: HashMap<String, Entry> =
            found.into_iter().map(|e| (e.key.clone(), e)).collect();
        for (key, ticket) in missing {
            let entry = found.remove(&key);
            hot.fill(&key, ticket, entry.clone());
            if let Some(entry) = entry {
                by_key.insert(key, entry);
            }
        }
        Ok(by_key)
    }

    /// After this server's own write of `key`: its next read sees it.
    fn forget(&self, key: &str) {
        if let Some(hot) = self.state.feed.hot_tier() {
            hot.remove(key);
        }
    }

    /// After this server's own invalidation of many keys.
    fn forget_selected(&self, selector: &Selector) {
        if let Some(hot) = self.state.feed.hot_tier() {
            match selector {
                Selector::Key(key) => hot.remove(key),
                _ => hot.clear(),
            }
        }
    }

    /// Classifies what a read found, counts it, and builds the answer.
    fn answer(&self, entry: Option<Entry>, read: &ReadOptions, now: i64) -> pb::GetResponse {
        let status = lookup(entry.as_ref(), read, now);
        self.respond(status, entry, &read.miss_policy, now)
    }

    /// Counts an answer and builds it (no entry for a miss).
    fn respond(
        &self,
        status: pb::LookupStatus,
        entry: Option<Entry>,
        miss_policy: &str,
        now: i64,
    ) -> pb::GetResponse {
        let policy = entry.as_ref().map_or(miss_policy, |e| e.policy.as_str());
        let answer = match status {
            pb::LookupStatus::Hit => Answer::Hit,
            pb::LookupStatus::Stale => Answer::Stale,
            pb::LookupStatus::Negative => Answer::Negative,
            _ => Answer::Miss,
        };
        self.state.stats.record(policy, answer);
        if answer == Answer::Miss {
            return pb::GetResponse {
                status: status.into(),
                entry: None,
            };
        }
        let entry = entry.map(|e| {
            self.state.access.record(&e.key, now);
            entry_to_proto(e, now)
        });
        pb::GetResponse {
            status: status.into(),
            entry,
        }
    }
}

/// What a read finds in `entry` for a reader asking `read`.
fn lookup(entry: Option<&Entry>, read: &ReadOptions, now: i64) -> pb::LookupStatus {
    match entry {
        None => pb::LookupStatus::Miss,
        Some(e)
            if !read.fingerprint.is_empty()
                && e.fingerprint.as_deref() != Some(read.fingerprint.as_str()) =>
        {
            pb::LookupStatus::Miss
        }
        Some(e) if e.confidence < read.min_confidence => pb::LookupStatus::Miss,
        Some(e) if e.negative => {
            if e.is_expired(now) {
                pb::LookupStatus::Miss
            } else {
                pb::LookupStatus::Negative
            }
        }
        Some(e) => match e.expires_at {
            Some(at) if at <= now => {
                if now - at <= read.max_stale_ms && read.max_stale_ms > 0 {
                    pb::LookupStatus::Stale
                } else {
                    pb::LookupStatus::Miss
                }
            }
            _ => pb::LookupStatus::Hit,
        },
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Cache for CacheService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        validate::key("key", &req.key).map_err(ApiError::from)?;
        let read = self.read_options(
            req.max_stale.as_ref(),
            req.min_confidence,
            req.fingerprint,
            req.policy,
        )?;
        let entry = self.read_through(&req.key).await?;
        Ok(Response::new(self.answer(entry, &read, now_ms())))
    }

    async fn batch_get(
        &self,
        request: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let req = request.into_inner();
        let max = self.state.settings.limits.max_batch_keys;
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
        let read = self.read_options(
            req.max_stale.as_ref(),
            req.min_confidence,
            String::new(),
            req.policy,
        )?;
        let mut by_key = self.read_many_through(&req.keys).await?;
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
            results.push(self.answer(entry, &read, now));
        }
        Ok(Response::new(pb::BatchGetResponse { results }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let req = request.into_inner();
        let put = self.entry_put(req)?;
        let result = self
            .state
            .store
            .entry_put(&put)
            .await
            .map_err(ApiError::from)?;
        let response = match result {
            PutResult::Written { revision } => {
                self.forget(&put.key);
                self.state.nudge.notify_one();
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

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = request.into_inner();
        validate::key("key", &req.key).map_err(ApiError::from)?;
        let result = self
            .state
            .store
            .entry_delete(&req.key, req.if_revision, now_ms())
            .await
            .map_err(ApiError::from)?;
        let response = match result {
            DeleteResult::Deleted { revision } => {
                self.forget(&req.key);
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

    async fn invalidate(
        &self,
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
        let (count, revision) = self
            .state
            .store
            .entry_invalidate(&selector, ChangeKind::Invalidate, now_ms())
            .await
            .map_err(ApiError::from)?;
        if count > 0 {
            self.forget_selected(&selector);
        }
        Ok(Response::new(pb::InvalidateResponse { count, revision }))
    }

    async fn get_random(
        &self,
        request: Request<pb::GetRandomRequest>,
    ) -> Result<Response<pb::GetRandomResponse>, Status> {
        let req = request.into_inner();
        validate::text("tag", &req.tag, validate::MAX_TAG_BYTES).map_err(ApiError::from)?;
        if !req.policy.is_empty() {
            self.configured_policy("policy", req.policy.clone())?;
        }
        if !req.provider.is_empty() && !self.state.settings.providers.contains_key(&req.provider) {
            return Err(ApiError::from(FieldError::new(
                "provider",
                format!("unknown provider {}", validate::quoted(&req.provider)),
            ))
            .into());
        }
        let now = now_ms();
        let entry = self
            .state
            .store
            .entry_random(&req.tag, &req.policy, &req.provider, now)
            .await
            .map_err(ApiError::from)?;
        let entry = entry.map(|e| {
            self.state.access.record(&e.key, now);
            entry_to_proto(e, now)
        });
        Ok(Response::new(pb::GetRandomResponse { entry }))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let started = Instant::now();
        let deadline = grpc_timeout(request.metadata());
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let req = request.into_inner();
        let plan = self.fetch_plan(req).await?;
        let now = now_ms();
        let stored = self
            .state
            .store
            .entry_get(&plan.url)
            .await
            .map_err(ApiError::from)?;
        let status = lookup(stored.as_ref(), &plan.read, now);
        match status {
            pb::LookupStatus::Hit | pb::LookupStatus::Negative => {
                let answer = self.respond(status, stored, &plan.read.miss_policy, now);
                return Ok(Response::new(pb::FetchResponse {
                    status: answer.status,
                    entry: answer.entry,
                    job: None,
                    job_shared: false,
                }));
            }
            pb::LookupStatus::Stale => {
                // Stale-while-revalidate: answer now, refresh in the background.
                let (job, shared) = self
                    .enqueue(&plan, BACKGROUND_PRIORITY, traceparent, now)
                    .await?;
                let answer = self.respond(status, stored, &plan.read.miss_policy, now);
                return Ok(Response::new(pb::FetchResponse {
                    status: answer.status,
                    entry: answer.entry,
                    job: Some(job_to_proto(job)),
                    job_shared: shared,
                }));
            }
            _ => {}
        }
        if plan.mode == pb::FetchMode::Background {
            let (job, shared) = self.enqueue(&plan, plan.priority, traceparent, now).await?;
            self.state
                .stats
                .record(&plan.read.miss_policy, Answer::Miss);
            return Ok(Response::new(pb::FetchResponse {
                status: pb::LookupStatus::Miss.into(),
                entry: None,
                job: Some(job_to_proto(job)),
                job_shared: shared,
            }));
        }
        // Subscribed first, so the worker's result cannot slip by unseen.
        let (_, changes) = self.state.feed.subscribe();
        let (job, shared) = self.enqueue(&plan, WAIT_PRIORITY, traceparent, now).await?;
        // Answer before the caller's deadline runs out, never after it.
        let budget = match deadline {
            Some(deadline) => {
                deadline.saturating_sub(deadline.div_f64(5.0).min(MAX_DEADLINE_MARGIN))
            }
            None => FETCH_WAIT_LIMIT,
        }
        .min(FETCH_WAIT_LIMIT);
        let waited = tokio::select! {
            waited = self.state.waiter.wait(
                &self.state.store,
                job.id,
                &plan.url,
                changes,
                started + budget,
            ) => waited.map_err(ApiError::from)?,
            // The job goes on without this server: say so, and how to pick it up.
            () = self.state.stopping.cancelled() => {
                return Err(ApiError::ShuttingDown(format!(
                    "the server is shutting down; job {id} goes on: call Fetch again \
                     (on any server it shares job {id}) or GetJob {id}",
                    id = job.id
                ))
                .into());
            }
        };
        let job = waited.unwrap_or(job);
        let now = now_ms();
        let entry = if job.state.is_finished() {
            self.state
                .store
                .entry_get(&plan.url)
                .await
                .map_err(ApiError::from)?
        } else {
            None
        };
        let fresh = ReadOptions {
            max_stale_ms: 0,
            ..plan.read
        };
        let status = lookup(entry.as_ref(), &fresh, now);
        let answer = self.respond(status, entry, &fresh.miss_policy, now);
        Ok(Response::new(pb::FetchResponse {
            status: answer.status,
            entry: answer.entry,
            job: Some(job_to_proto(job)),
            job_shared: shared,
        }))
    }

    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventResponse>, Status> {
        let event = event_from_proto(request.into_inner())?;
        let settings = &self.state.settings;
        let mut response = pb::PublishEventResponse::default();
        for target in events::targets(&settings.events.rules, &settings.policies, &event) {
            let selector = match &target.tag {
                Some(tag) => Selector::PolicyTag {
                    policy: target.policy.clone(),
                    tag: tag.clone(),
                },
                None => Selector::Policy(target.policy.clone()),
            };
            let (count, revision) = self
                .state
                .store
                .entry_invalidate(&selector, ChangeKind::Invalidate, now_ms())
                .await
                .map_err(ApiError::from)?;
            if count > 0 {
                self.forget_selected(&selector);
            }
            response.count += count;
            response.revision = response.revision.max(revision);
            response.applied.push(pb::AppliedRule {
                policy: target.policy,
                tag: target.tag.unwrap_or_default(),
                count,
            });
        }
        tracing::info!(kind = ?event.kind, count = response.count, "library event applied");
        Ok(Response::new(response))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let client = request.remote_addr().map(|addr| addr.ip());
        let plan = watch::plan(&self.state, request.into_inner())?;
        let messages = watch::start(self.state.clone(), plan, client).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(messages),
        )))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let usage = self
            .state
            .store
            .entry_usage()
            .await
            .map_err(ApiError::from)?;
        let revision = self
            .state
            .store
            .revision_current()
            .await
            .map_err(ApiError::from)?;
        let mut counters = self.state.stats.snapshot();
        let mut rows: Vec<pb::PolicyStats> = Vec::new();
        let mut names: Vec<String> = self.state.settings.policies.keys().cloned().collect();
        names.extend(usage.iter().map(|u| u.policy.clone()));
        names.extend(counters.keys().cloned());
        names.sort();
        names.dedup();
        for name in names {
            let used = usage.iter().find(|u| u.policy == name);
            let c = counters.remove(&name).unwrap_or_default();
            rows.push(pb::PolicyStats {
                budget_bytes: self
                    .state
                    .settings
                    .policies
                    .get(&name)
                    .map_or(0, |p| p.max_bytes),
                entries: used.map_or(0, |u| u.entries),
                bytes: used.map_or(0, |u| u.bytes),
                hits: c.hits,
                misses: c.misses,
                stale: c.stale,
                negative: c.negative,
                evicted: c.evicted,
                policy: name,
            });
        }
        let started_ms = self
            .state
            .started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(Response::new(pb::StatsResponse {
            policies: rows,
            providers: self.provider_stats().await?,
            revision,
            started_at: Some(timestamp(started_ms)),
            backend: self.state.store.backend().name().to_owned(),
            hot_tier: self.state.feed.hot_stats(),
            tail_revision: self.state.feed.last(),
            watchers: self.state.feed.watchers(),
            wal: self.state.store.wal_bytes().map(|bytes| pb::WalStats {
                bytes,
                limit_bytes: self.state.settings.store.wal_size_limit,
            }),
        }))
    }
}

/// What a Fetch asks for, validated.
struct FetchPlan {
    provider: String,
    url: String,
    /// `url`, parsed, for the address check before enqueueing.
    target: url::Url,
    mode: pb::FetchMode,
    priority: u32,
    tags: Vec<String>,
    read: ReadOptions,
}

/// Jobs a caller waits for.
const WAIT_PRIORITY: u32 = 1;
/// Background jobs by default.
const BACKGROUND_PRIORITY: u32 = 2;
/// The largest background priority a request may name.
const MAX_PRIORITY: u32 = 1000;
/// How long a waiting Fetch with no deadline waits before answering with the job.
const FETCH_WAIT_LIMIT: Duration = Duration::from_secs(60);
/// How much of the caller's deadline is kept for the answer to travel back.
const MAX_DEADLINE_MARGIN: Duration = Duration::from_millis(250);
/// Longest path or URL a Fetch may name.
const MAX_PATH_BYTES: usize = 2048;

impl CacheService {
    async fn fetch_plan(&self, req: pb::FetchRequest) -> Result<FetchPlan, ApiError> {
        let mode = match pb::FetchMode::try_from(req.mode) {
            Ok(pb::FetchMode::Unspecified | pb::FetchMode::Wait) => pb::FetchMode::Wait,
            Ok(pb::FetchMode::Background) => pb::FetchMode::Background,
            Err(_) => {
                return Err(
                    FieldError::new("mode", format!("unknown FetchMode {}", req.mode)).into(),
                );
            }
        };
        let priority = match (mode, req.priority) {
            (pb::FetchMode::Wait, _) => WAIT_PRIORITY,
            (_, 0) => BACKGROUND_PRIORITY,
            (_, p) if (BACKGROUND_PRIORITY..=MAX_PRIORITY).contains(&p) => p,
            (_, p) => {
                return Err(FieldError::new(
                    "priority",
                    format!("is {p}; background jobs take 2 to {MAX_PRIORITY} (1 is for callers who wait)"),
                )
                .into());
            }
        };
        validate::text("provider", &req.provider, validate::MAX_NAME_BYTES)?;
        let Some(provider) = self.state.providers.get(&req.provider) else {
            let message = roadie_providers::unavailable(
                &self.state.settings,
                &req.provider,
                &validate::quoted(&req.provider),
            );
            return Err(FieldError::new("provider", message).into());
        };
        validate::text("path", &req.path, MAX_PATH_BYTES)?;
        let url = resolve_url(&provider.policy, &req.path).map_err(|refusal| match refusal {
            Refusal::PrivateAddress { .. } | Refusal::Redirect { .. } => {
                ApiError::PermissionDenied(refusal.to_string())
            }
            Refusal::BadUrl(_) | Refusal::OutsideProvider { .. } => {
                FieldError::new("path", refusal.to_string()).into()
            }
        })?;
        let target = url;
        let url = target.to_string();
        validate::key("path", &url)?;
        let policy = if req.policy.is_empty() {
            roadie_config::API_METADATA_POLICY.to_owned()
        } else {
            self.configured_policy("policy", req.policy)?
        };
        validate::tags("tags", &req.tags)?;
        let max_stale_ms = req
            .max_stale
            .as_ref()
            .map(|d| validate::duration_ms("max_stale", d))
            .transpose()?
            .unwrap_or(0);
        Ok(FetchPlan {
            provider: req.provider,
            url,
            target,
            mode,
            priority,
            tags: req.tags,
            read: ReadOptions {
                max_stale_ms,
                min_confidence: 0,
                fingerprint: String::new(),
                miss_policy: policy,
            },
        })
    }

    /// Each configured provider's limit, backlog, next allowed request and
    /// the total time its jobs waited, from the state all workers share.
    async fn provider_stats(&self) -> Result<Vec<pb::ProviderStats>, ApiError> {
        let states = self.state.store.provider_stats().await?;
        let now = now_ms();
        Ok(self
            .state
            .settings
            .providers
            .iter()
            .map(|(name, provider)| {
                let state = states.iter().find(|s| &s.provider == name);
                // The rate as the workers spend it (none for a provider that is off).
                let rate = self.state.providers.get(name).and_then(|p| p.rate);
                let next = state
                    .map_or(now, |s| {
                        let allowed = rate.map_or(s.tat, |r| r.next_at(s.tat));
                        allowed.max(s.paused_until)
                    })
                    .max(now);
                pb::ProviderStats {
                    provider: name.clone(),
                    rate_per_second: provider.rate_per_second,
                    backlog: state.map_or(0, |s| s.backlog),
                    next_request_at: Some(timestamp(next)),
                    total_wait: Some(prost_types::Duration {
                        seconds: state.map_or(0, |s| s.waited_ms / 1000),
                        nanos: state.map_or(0, |s| (s.waited_ms % 1000) as i32 * 1_000_000),
                    }),
                }
            })
            .collect())
    }

    async fn enqueue(
        &self,
        plan: &FetchPlan,
        priority: u32,
        traceparent: Option<String>,
        now: i64,
    ) -> Result<(Job, bool), ApiError> {
        // Checked only when a fetch is due: a cache hit costs no DNS lookup.
        if let Some(provider) = self.state.providers.get(&plan.provider) {
            check_address(&provider.policy, &plan.target)
                .await
                .map_err(|refusal| ApiError::PermissionDenied(refusal.to_string()))?;
        }
        let job = JobNew {
            provider: plan.provider.clone(),
            url: plan.url.clone(),
            policy: plan.read.miss_policy.clone(),
            tags: plan.tags.clone(),
            priority,
            max_attempts: self.state.settings.jobs.max_attempts,
            traceparent,
            now,
        };
        let (job, shared) = self.state.store.job_enqueue(&job).await?;
        if !shared || job.priority == priority {
            self.state.work.nudge();
        }
        Ok((job, shared))
    }

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

fn event_from_proto(req: pb::PublishEventRequest) -> Result<Event, ApiError> {
    use pb::LibraryEventKind as K;
    let kind = match K::try_from(req.kind) {
        Ok(K::TrackAdded) => EventKind::TrackAdded,
        Ok(K::TrackRemoved) => EventKind::TrackRemoved,
        Ok(K::TrackModified) => EventKind::TrackModified,
        Ok(K::FingerprintChanged) => EventKind::FingerprintChanged,
        Ok(K::LibrarySync) => EventKind::LibrarySync,
        Ok(K::ManualInvalidation) => EventKind::ManualInvalidation,
        Ok(K::Unspecified) | Err(_) => {
            return Err(FieldError::new(
                "kind",
                format!("must be a known LibraryEventKind, got {}", req.kind),
            )
            .into());
        }
    };
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

/// The caller's deadline from the `grpc-timeout` header, if it sent one.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}
