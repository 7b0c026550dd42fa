//! Fetch: the plan (provider, URL, mode, priority), the cache answer,
//! the enqueue and the wait within the caller's deadline.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use roadie_proto::v1 as pb;
use roadie_providers::resolve_url;
use roadie_store::{FirstLook, Job, JobNew, WAIT_PRIORITY, now_ms};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::{CacheService, ReadOptions, lookup};
use roadie_config::Role;

use crate::{
    auth::Access,
    convert::job_to_proto,
    error::ApiError,
    stats::Answer,
    validate::{self, FieldError},
    waiter::Waited,
};

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

/// Where [`CacheService::settle`] leaves a Fetch. One lives for a moment
/// per call, so both variants stay unboxed.
#[allow(clippy::large_enum_variant)]
enum Settled {
    /// Answered: from the cache, or with the job queued in the background.
    Answered(pb::FetchResponse),
    /// WAIT mode: the job to wait for, and what will tell when it ends.
    Waiting {
        job: Job,
        shared: bool,
        heard: crate::waiter::Heard,
    },
}

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
/// Reads of the entry a Fetch makes before it enqueues whatever the entry.
const ENQUEUE_ROUNDS: u32 = 3;

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

pub(super) async fn fetch(
    service: &CacheService,
    request: Request<pb::FetchRequest>,
) -> Result<Response<pb::FetchResponse>, Status> {
    let started = Instant::now();
    let deadline = grpc_timeout(request.metadata());
    // The job continues this call's trace (the worker's span is its child).
    let traceparent = roadie_telemetry::propagation::traceparent(&tracing::Span::current());
    // A read token gets what is cached; fetching more takes write.
    let access = Access::of(&request);
    let req = request.into_inner();
    let plan = service.fetch_plan(req).await?;
    crate::rpc::record_key(&plan.url);
    let (job, shared, heard) = match service.settle(&plan, &access, traceparent).await? {
        Settled::Answered(answer) => return Ok(Response::new(answer)),
        Settled::Waiting { job, shared, heard } => (job, shared, heard),
    };
    // Answer before the caller's deadline runs out, never after it.
    let budget = match deadline {
        Some(deadline) => deadline.saturating_sub(deadline.div_f64(5.0).min(MAX_DEADLINE_MARGIN)),
        None => FETCH_WAIT_LIMIT,
    }
    .min(FETCH_WAIT_LIMIT);
    let waited = tokio::select! {
        waited = service.state.waiter.wait(
            &service.state.store,
            job.clone(),
            &plan.url,
            heard,
            started + budget,
        ) => waited.map_err(ApiError::from)?,
        // The job goes on without this server: say so, and how to pick it
        // up (once it is on disk: see `Store::job_durable`).
        () = service.state.stopping.cancelled() => {
            service.state.store.job_durable(job.id).await.map_err(ApiError::from)?;
            return Err(ApiError::ShuttingDown(format!(
                "the server is shutting down; job {id} goes on: call Fetch again \
                 (on any server it shares job {id}) or GetJob {id}",
                id = job.id
            ))
            .into());
        }
    };
    let (job, entry) = match waited {
        Some(Waited { job, entry }) => (job, entry),
        None => (job, None),
    };
    // The wait ran out: the caller is told of a job that goes on, which its
    // enqueue may not have put on disk yet (`Store::job_durable`).
    if !job.state.is_finished() {
        service
            .state
            .store
            .job_durable(job.id)
            .await
            .map_err(ApiError::from)?;
    }
    let now = now_ms();
    let fresh = ReadOptions {
        max_stale_ms: 0,
        ..plan.read
    };
    let status = lookup(entry.as_ref(), &fresh, now);
    let answer = service.respond(status, entry, &fresh.miss_policy, now);
    Ok(Response::new(pb::FetchResponse {
        status: answer.status,
        entry: answer.entry,
        job: Some(job_to_proto(job)),
        job_shared: shared,
    }))
}

/// Items of one BatchFetch settled at a time: enough to overlap the store's
/// round trips (and address checks) without one call taking every pooled
/// connection.
const BATCH_FETCH_CONCURRENCY: usize = 8;

pub(super) async fn batch_fetch(
    service: &CacheService,
    request: Request<pb::BatchFetchRequest>,
) -> Result<Response<pb::BatchFetchResponse>, Status> {
    let traceparent = roadie_telemetry::propagation::traceparent(&tracing::Span::current());
    let access = Access::of(&request);
    let req = request.into_inner();
    let max = service.state.settings.limits.max_batch_keys;
    if req.items.is_empty() || req.items.len() > max {
        return Err(ApiError::from(FieldError::new(
            "items",
            format!("has {} items, allowed 1 to {max}", req.items.len()),
        ))
        .into());
    }
    let results = futures::stream::iter(req.items)
        .map(|item| {
            let request = pb::FetchRequest {
                provider: item.provider,
                path: item.path,
                mode: pb::FetchMode::Background.into(),
                priority: if item.priority == 0 {
                    req.priority
                } else {
                    item.priority
                },
                policy: item.policy,
                tags: item.tags,
                max_stale: None,
            };
            let (access, traceparent) = (&access, traceparent.clone());
            async move {
                let settled = match service.fetch_plan(request).await {
                    Ok(plan) => service.settle(&plan, access, traceparent).await,
                    Err(error) => Err(error),
                };
                match settled {
                    Ok(Settled::Answered(answer)) => Ok(pb::BatchFetchResult {
                        status: answer.status,
                        job: answer.job,
                        job_shared: answer.job_shared,
                        error: None,
                    }),
                    Ok(Settled::Waiting { .. }) => Err(ApiError::Unimplemented(
                        "a batch fetches in the background only",
                    )),
                    Err(error) => match item_error(error) {
                        Ok(error) => Ok(pb::BatchFetchResult {
                            error: Some(error),
                            ..Default::default()
                        }),
                        // The store or the server failed, not the item: the
                        // call fails (items already queued stay queued, and a
                        // retry shares their jobs).
                        Err(error) => Err(error),
                    },
                }
            }
        })
        .buffered(BATCH_FETCH_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(Response::new(pb::BatchFetchResponse { results }))
}

/// A refusal of the item itself, as its own status; `Err` for a failure
/// that is not the item's (the store, a shutdown).
fn item_error(error: ApiError) -> Result<pb::ItemError, ApiError> {
    let field = match &error {
        ApiError::Field(field) => field.field.clone(),
        ApiError::PermissionDenied(_) | ApiError::NotFound(_) | ApiError::FailedPrecondition(_) => {
            String::new()
        }
        _ => return Err(error),
    };
    let status = Status::from(error);
    Ok(pb::ItemError {
        code: status.code() as i32,
        field,
        message: status.message().to_owned(),
    })
}

impl CacheService {
    /// Answers `plan` from the cache, or enqueues its job: in BACKGROUND
    /// mode (and for a stale entry, refreshed behind the answer) the answer
    /// is the job; in WAIT mode the job to wait for, with the feed
    /// subscribed before the enqueue.
    async fn settle(
        &self,
        plan: &FetchPlan,
        access: &Access,
        traceparent: Option<String>,
    ) -> Result<Settled, ApiError> {
        let may_enqueue = access.has(Role::Write);
        // A waited Fetch that may enqueue, for a provider whose address is
        // known to be allowed without a lookup, reads its entry and enqueues
        // its job when there is none in one statement (Postgres): a miss
        // waits for its fetch one round trip sooner, a hit still costs one
        // statement. Otherwise the entry is read first, and the address
        // checked only when a fetch is due.
        let mut looked = None;
        let known_allowed = || {
            self.state
                .providers
                .get(&plan.provider)
                .is_some_and(|p| self.state.checked_hosts.passes(&p.policy, &plan.target))
        };
        if plan.mode == pb::FetchMode::Wait && may_enqueue && known_allowed() {
            // Subscribed first, so the worker's result cannot slip by unseen.
            let (_, changes) = self.state.feed.subscribe();
            let heard = self.state.waiter.subscribe(changes);
            let job = self.job_new(plan, WAIT_PRIORITY, traceparent.clone(), now_ms());
            looked = Some(match self.state.store.entry_get_or_enqueue(&job).await? {
                FirstLook::Enqueued(job) => {
                    return Ok(Settled::Waiting {
                        job,
                        shared: false,
                        heard,
                    });
                }
                FirstLook::Entry(entry) => Some(entry),
                FirstLook::Absent => None,
            });
        }
        // A job that finishes between this call's read and its enqueue has
        // written the entry: the enqueue then refuses and the entry is read
        // again, rather than fetched again (bounded: a key written that often
        // gets an unconditional enqueue on the last round).
        let mut round = 1;
        loop {
            let now = now_ms();
            let stored = match looked.take() {
                Some(stored) => stored,
                None => self.state.store.entry_get(&plan.url).await?,
            };
            let status = lookup(stored.as_ref(), &plan.read, now);
            let seen = stored.as_ref().map_or(0, |entry| entry.revision);
            let seen = (round < ENQUEUE_ROUNDS).then_some(seen);
            round += 1;
            // A stale entry for a caller who may not refresh it is answered as is.
            let answer_as_is = matches!(status, pb::LookupStatus::Hit | pb::LookupStatus::Negative)
                || (status == pb::LookupStatus::Stale && !may_enqueue);
            match status {
                _ if answer_as_is => {
                    let answer = self.respond(status, stored, &plan.read.miss_policy, now);
                    return Ok(Settled::Answered(pb::FetchResponse {
                        status: answer.status,
                        entry: answer.entry,
                        job: None,
                        job_shared: false,
                    }));
                }
                pb::LookupStatus::Stale => {
                    // Stale-while-revalidate: answer now, refresh in the background.
                    let Some((job, shared)) = self
                        .enqueue(plan, BACKGROUND_PRIORITY, traceparent.clone(), seen, now)
                        .await?
                    else {
                        continue;
                    };
                    let answer = self.respond(status, stored, &plan.read.miss_policy, now);
                    return Ok(Settled::Answered(pb::FetchResponse {
                        status: answer.status,
                        entry: answer.entry,
                        job: Some(job_to_proto(job)),
                        job_shared: shared,
                    }));
                }
                _ => {}
            }
            access.require(
                Role::Write,
                "a Fetch of an entry that is not cached (it enqueues a job)",
            )?;
            if plan.mode == pb::FetchMode::Background {
                let Some((job, shared)) = self
                    .enqueue(plan, plan.priority, traceparent.clone(), seen, now)
                    .await?
                else {
                    continue;
                };
                self.state
                    .stats
                    .record(&plan.read.miss_policy, Answer::Miss);
                return Ok(Settled::Answered(pb::FetchResponse {
                    status: pb::LookupStatus::Miss.into(),
                    entry: None,
                    job: Some(job_to_proto(job)),
                    job_shared: shared,
                }));
            }
            // Subscribed first, so the worker's result cannot slip by unseen.
            let (_, changes) = self.state.feed.subscribe();
            let heard = self.state.waiter.subscribe(changes);
            if let Some((job, shared)) = self
                .enqueue(plan, WAIT_PRIORITY, traceparent.clone(), seen, now)
                .await?
            {
                return Ok(Settled::Waiting { job, shared, heard });
            }
        }
    }

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
        let url = resolve_url(&provider.policy, &req.path).map_err(ApiError::from)?;
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

    /// The job that fetches `plan`'s URL.
    fn job_new(
        &self,
        plan: &FetchPlan,
        priority: u32,
        traceparent: Option<String>,
        now: i64,
    ) -> JobNew {
        JobNew {
            provider: plan.provider.clone(),
            url: plan.url.clone(),
            policy: plan.read.miss_policy.clone(),
            tags: plan.tags.clone(),
            priority,
            max_attempts: self.state.settings.jobs.max_attempts,
            traceparent,
            now,
        }
    }

    /// Enqueues the plan's job, or shares the unfinished one; `None` when
    /// the entry is no longer at revision `seen` (see
    /// [`roadie_store::Store::job_enqueue_unless_written`]).
    async fn enqueue(
        &self,
        plan: &FetchPlan,
        priority: u32,
        traceparent: Option<String>,
        seen: Option<u64>,
        now: i64,
    ) -> Result<Option<(Job, bool)>, ApiError> {
        // Checked only when a fetch is due: a cache hit costs no DNS lookup.
        if let Some(provider) = self.state.providers.get(&plan.provider) {
            self.state
                .checked_hosts
                .check(&provider.policy, &plan.target)
                .await
                .map_err(ApiError::from)?;
        }
        let job = self.job_new(plan, priority, traceparent, now);
        let Some((job, shared)) = self
            .state
            .store
            .job_enqueue_unless_written(&job, seen)
            .await?
        else {
            return Ok(None);
        };
        // A job a caller waits for was announced by the statement that
        // enqueued it (or raised it to that priority).
        if !shared && priority > WAIT_PRIORITY {
            self.state.work.nudge();
        }
        Ok(Some((job, shared)))
    }
}
