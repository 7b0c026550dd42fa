//! The claim loop: claims jobs for free slots (woken by the servers'
//! NOTIFY on Postgres, polling as a fallback and on SQLite), holds each under a lease
//! renewed by heartbeat, fetches, and finishes the job only while it still
//! holds the lease. A soft stop claims nothing new and lets in-flight jobs
//! finish within a grace period; then a hard stop cancels them and hands
//! their leases back so another worker takes over at once.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rand::Rng;
use roadie_store::{
    ChangeKind, Entry, EntryPut, Job, JobFinish, JobOutcome, Provenance, Rates, Store, StoreError,
    WORK_CHANNEL, now_ms,
};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use roadie_config::expires_at;
use roadie_providers::{Provider, Refusal};

use crate::fetcher::{Fetcher, Outcome, Validators};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// This worker's name in leases; unique per process.
    pub id: String,
    /// Jobs in flight at once.
    pub concurrency: u32,
    /// How long a claim holds without a heartbeat.
    pub lease: Duration,
    /// How often held leases are renewed (well under `lease`).
    pub heartbeat: Duration,
    /// How often to look for work when idle.
    pub poll_interval: Duration,
    /// SQLite: how often an idle worker reads `PRAGMA data_version` to learn
    /// that another process committed (an enqueued job, most often).
    pub commit_poll: Duration,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Lifetime of the NEGATIVE `failed_lookup` entry written after the last attempt.
    pub failed_lookup_ttl: Duration,
    /// How long in-flight jobs may run after a soft stop.
    pub shutdown_grace: Duration,
}

impl WorkerOptions {
    /// Defaults for a worker named `id`.
    pub fn new(id: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            id: id.into(),
            concurrency: 8,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            commit_poll: Duration::from_millis(5),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            failed_lookup_ttl: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Jobs claimed.
    pub claimed: u64,
    /// Leases handed back at a hard stop.
    pub released: u64,
}

/// One worker: a store, a fetcher and the providers it may call.
#[derive(Debug, Clone)]
pub struct Worker {
    store: Store,
    fetcher: Fetcher,
    providers: Arc<HashMap<String, Provider>>,
    rates: Arc<Rates>,
    options: Arc<WorkerOptions>,
}

impl Worker {
    /// A worker over `store`.
    pub fn new(
        store: Store,
        fetcher: Fetcher,
        providers: HashMap<String, Provider>,
        options: WorkerOptions,
    ) -> Worker {
        let rates: Rates = providers
            .iter()
            .filter_map(|(name, p)| p.rate.map(|rate| (name.clone(), rate)))
            .collect();
        Worker {
            store,
            fetcher,
            providers: Arc::new(providers),
            rates: Arc::new(rates),
            options: Arc::new(options),
        }
    }

    /// Claims and runs jobs until `stop` fires, then drains (see the module docs).
    pub async fn run(self, stop: CancellationToken) -> Report {
        let options = self.options.clone();
        let hard = CancellationToken::new();
        let mut inflight = JoinSet::new();
        let mut report = Report::default();
        // While other jobs still run, freed slots are refilled a quarter of
        // the slots at a time: one claim transaction per batch, not per job.
        let refill_batch = (options.concurrency / 4).max(1);
        let mut only_freed = false;
        let (finished, to_finish) = mpsc::channel(options.concurrency.max(1) as usize);
        let completer = tokio::spawn(self.clone().complete(to_finish));
        // Postgres: servers NOTIFY (debounced) when they enqueue; the poll stays as a fallback.
        let wake = Arc::new(Notify::new());
        let listening = CancellationToken::new();
        {
            let (store, wake, listening) = (self.store.clone(), wake.clone(), listening.clone());
            tokio::spawn(async move {
                store
                    .listen(WORK_CHANNEL, listening, |_| wake.notify_one())
                    .await
            });
        }
        // SQLite has no notifications, but any commit by another process
        // moves `data_version`, which costs no I/O to read: a worker that
        // checks it often claims a new job within `commit_poll` of its
        // enqueueing instead of at the next poll.
        tokio::spawn(wake_on_commits(
            self.store.clone(),
            options.commit_poll,
            wake.clone(),
            listening.clone(),
        ));
        tokio::spawn(rescue(
            self.store.clone(),
            options.lease / 2,
            wake.clone(),
            listening.clone(),
        ));
        while !stop.is_cancelled() {
            let free = options
                .concurrency
                .saturating_sub(u32::try_from(inflight.len()).unwrap_or(u32::MAX));
            let mut next_due = None;
            if free > 0 && (!only_freed || free >= refill_batch) {
                let now = now_ms();
                let lease_until = now + millis(options.lease);
                match self
                    .store
                    .job_claim_within(&options.id, free, lease_until, now, &self.rates)
                    .await
                {
                    Ok(claim) => {
                        report.claimed += claim.jobs.len() as u64;
                        next_due = claim.next_due;
                        for job in claim.jobs {
                            let span = tracing::info_span!("worker.job", job = job.id, provider = %job.provider, attempt = job.attempt);
                            inflight.spawn(
                                self.clone()
                                    .process(job, hard.clone(), finished.clone())
                                    .instrument(span),
                            );
                        }
                    }
                    Err(error) => tracing::warn!(%error, "claim failed"),
                }
            }
            // A throttled provider's budget returns at a known moment: look
            // again then rather than at the next poll.
            let budget_back = next_due.map(|at| {
                tokio::time::Instant::now()
                    + Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0))
            });
            // Freed slots claim again (in batches while others run); an idle worker polls.
            only_freed = tokio::select! {
                () = stop.cancelled() => break,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => true,
                () = tokio::time::sleep(options.poll_interval) => false,
                () = wake.notified() => false,
                () = sleep_until_some(budget_back) => false,
            };
        }
        listening.cancel();
        tracing::info!(in_flight = inflight.len(), grace = ?options.shutdown_grace, "stopping: no new claims");
        let drained = tokio::time::timeout(options.shutdown_grace, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = inflight.len(),
                "grace period over: cancelling jobs and releasing their leases"
            );
            hard.cancel();
            while inflight.join_next().await.is_some() {}
        }
        // Every attempt has handed its result over; the last batch commits.
        drop(finished);
        if let Err(error) = completer.await {
            tracing::warn!(%error, "the completer ended abnormally");
        }
        match self.store.job_release(&options.id, now_ms()).await {
            Ok(released) => report.released = released,
            Err(error) => {
                tracing::warn!(%error, "could not release leases; they expire within one lease period")
            }
        }
        report
    }

    async fn process(self, job: Job, hard: CancellationToken, finished: mpsc::Sender<Done>) {
        let lease_lost = CancellationToken::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat(job.id, lease_lost.clone()));
        let outcome = tokio::select! {
            outcome = self.attempt(&job) => Some(outcome),
            () = lease_lost.cancelled() => None,
            () = hard.cancelled() => None,
        };
        heartbeat.abort();
        let Some(result) = outcome else {
            tracing::warn!(job = job.id, "attempt abandoned: lease lost or hard stop");
            return;
        };
        let (outcome, entry) = match result {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(job = job.id, %error, "store error during the attempt; the lease will expire");
                return;
            }
        };
        let (reply, recorded) = oneshot::channel();
        let done = Done {
            id: job.id,
            decision: outcome,
            entry,
            reply,
        };
        if finished.send(done).await.is_err() {
            tracing::warn!(job = job.id, "the completer is gone; the lease will expire");
            return;
        }
        match recorded.await {
            Ok(Ok(roadie_store::Finish::LeaseLost)) => {
                tracing::warn!(job = job.id, "lease lost before finishing: result dropped")
            }
            Ok(Ok(roadie_store::Finish::Recorded { .. })) => {
                tracing::debug!(job = job.id, "job finished")
            }
            Ok(Err(error)) => {
                tracing::warn!(job = job.id, %error, "could not finish the job; the lease will expire")
            }
            Err(_) => tracing::warn!(
                job = job.id,
                "the completer dropped the job; the lease will expire"
            ),
        }
    }

    /// Writes finished attempts, as many at a time as have arrived (up to
    /// [`FINISH_BATCH`]) in one transaction, until every sender is gone.
    async fn complete(self, mut to_finish: mpsc::Receiver<Done>) {
        let mut batch = Vec::with_capacity(FINISH_BATCH);
        while to_finish.recv_many(&mut batch, FINISH_BATCH).await > 0 {
            let finishes: Vec<JobFinish<'_>> = batch.iter().map(Done::finish).collect();
            let result = self
                .store
                .job_finish_many_if_leased(&self.options.id, &finishes, now_ms())
                .await;
            drop(finishes);
            match result {
                Ok(results) => {
                    for (done, result) in batch.drain(..).zip(results) {
                        let _ = done.reply.send(Ok(result));
                    }
                }
                Err(error) => {
                    let error = error.to_string();
                    for done in batch.drain(..) {
                        let _ = done.reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    async fn heartbeat(self, id: u64, lease_lost: CancellationToken) {
        let mut tick = tokio::time::interval(self.options.heartbeat);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = now_ms();
            match self
                .store
                .job_heartbeat(id, &self.options.id, now + millis(self.options.lease), now)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    lease_lost.cancel();
                    return;
                }
                Err(error) => tracing::warn!(job = id, %error, "heartbeat failed"),
            }
        }
    }

    /// One attempt: fetch, then decide what the job and the cache become.
    async fn attempt(&self, job: &Job) -> Result<(Decision, Option<EntryPut>), StoreError> {
        let Some(provider) = self.providers.get(&job.provider) else {
            return Ok((
                Decision::Fail {
                    error: format!("unknown provider {:?}", job.provider),
                },
                None,
            ));
        };
        let url = match Url::parse(&job.url) {
            Ok(url) => url,
            Err(error) => {
                return Ok((
                    Decision::Fail {
                        error: format!("bad url: {error}"),
                    },
                    None,
                ));
            }
        };
        // The validators came with the claim: nothing stands between the
        // claim and the request, which keeps requests on the rate's schedule.
        let validators = Validators {
            etag: job.stored_etag.clone(),
            last_modified: job.stored_last_modified.clone(),
        };
        let fetched = self
            .fetcher
            .fetch(&provider.policy, &url, &validators)
            .await;
        // The entry's age and lifetime start when its answer arrived, not
        // when the request went out: a slow upstream must not write an entry
        // that is already expired.
        let now = now_ms();
        let stored = self
            .store
            .entry_get(&job.url)
            .await?
            .filter(|e| !e.negative);
        let backoff = self.backoff(job.attempt);
        let (decision, entry) = decide(
            job,
            fetched,
            stored.as_ref(),
            provider,
            self.options.failed_lookup_ttl,
            backoff,
            now,
        );
        if let Decision::PushedBack {
            pause: true, at, ..
        } = &decision
        {
            self.store.provider_pause(&job.provider, *at).await?;
            tracing::warn!(provider = %job.provider, until = at, "upstream pushback: provider paused for every worker");
        }
        Ok((decision, entry))
    }

    /// Exponential backoff for `attempt` (1-based), with jitter in [½, 1].
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .options
            .backoff_base
            .saturating_mul(1 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.options.backoff_max);
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// What one attempt makes of the job and the cache: a pure function of the
/// job, what upstream did (or why the fetch was refused), the good entry
/// stored now, the provider, the failed-lookup lifetime, this attempt's
/// backoff and the clock. Every rule of the README's account of fetching is
/// here and tested without IO; the caller does the IO (the provider's pause,
/// the write).
pub(crate) fn decide(
    job: &Job,
    fetched: Result<Outcome, Refusal>,
    stored: Option<&Entry>,
    provider: &Provider,
    failed_lookup_ttl: Duration,
    backoff: Duration,
    now: i64,
) -> (Decision, Option<EntryPut>) {
    let retry_or_fail = |error: String, at: Option<i64>| -> (Decision, Option<EntryPut>) {
        if job.attempt < job.max_attempts {
            let at = at.unwrap_or_else(|| now + millis(backoff));
            (Decision::Retry { error, at }, None)
        } else {
            give_up(job, stored, error, failed_lookup_ttl, now)
        }
    };
    match fetched {
        Ok(Outcome::Success {
            status,
            body,
            media_type,
            etag,
            last_modified,
        }) => {
            let provenance = Provenance {
                provider: job.provider.clone(),
                upstream_status: status,
                etag,
                last_modified,
            };
            let entry = result_entry(
                job,
                body.to_vec(),
                media_type,
                provenance,
                expires_at(now, provider.success_ttl),
                now,
            );
            (Decision::Complete, Some(entry))
        }
        Ok(Outcome::NotModified {
            etag,
            last_modified,
        }) => match stored {
            Some(entry) => {
                let provenance = Provenance {
                    provider: job.provider.clone(),
                    upstream_status: 304,
                    etag,
                    last_modified,
                };
                let mut put = result_entry(
                    job,
                    entry.value.to_vec(),
                    entry.media_type.clone(),
                    provenance,
                    expires_at(now, provider.success_ttl),
                    now,
                );
                if put.tags.is_empty() {
                    put.tags = entry.tags.clone();
                }
                (Decision::Complete, Some(put))
            }
            // The entry went while we revalidated: fetch it whole next time.
            None => (
                Decision::Retry {
                    error: "304 but the entry is gone".to_owned(),
                    at: now,
                },
                None,
            ),
        },
        Ok(Outcome::NotFound { status }) => {
            let provenance = Provenance {
                provider: job.provider.clone(),
                upstream_status: status,
                ..Provenance::default()
            };
            let mut entry = result_entry(
                job,
                Vec::new(),
                String::new(),
                provenance,
                expires_at(now, provider.negative_ttl),
                now,
            );
            entry.negative = true;
            entry.kind = ChangeKind::Negative;
            (Decision::Complete, Some(entry))
        }
        Ok(Outcome::Throttled { status, retry_at }) => {
            let until =
                retry_at.map(|t| t.duration_since(std::time::UNIX_EPOCH).map_or(now, millis));
            // The provider's state, not the job's failure: retried when
            // the pause ends (or after a backoff), whatever its attempts.
            (
                Decision::PushedBack {
                    error: format!("upstream answered {status}"),
                    at: until.unwrap_or_else(|| now + millis(backoff)),
                    pause: until.is_some(),
                },
                None,
            )
        }
        Ok(Outcome::Transient { reason }) => retry_or_fail(reason, None),
        Ok(Outcome::Final { status, reason }) => {
            let error = match status {
                Some(status) => format!("upstream answered {status}: {reason}"),
                None => reason,
            };
            give_up(job, stored, error, failed_lookup_ttl, now)
        }
        Err(refusal) => (
            Decision::Fail {
                error: refusal.to_string(),
            },
            None,
        ),
    }
}

/// The last word on a job that will not succeed: a NEGATIVE
/// `failed_lookup` entry, unless a good entry is stored (stale-if-error).
fn give_up(
    job: &Job,
    stored: Option<&Entry>,
    error: String,
    failed_lookup_ttl: Duration,
    now: i64,
) -> (Decision, Option<EntryPut>) {
    if stored.is_some() {
        return (Decision::Fail { error }, None);
    }
    let provenance = Provenance {
        provider: job.provider.clone(),
        ..Provenance::default()
    };
    let mut entry = result_entry(
        job,
        error.clone().into_bytes(),
        "text/plain".to_owned(),
        provenance,
        expires_at(now, failed_lookup_ttl),
        now,
    );
    entry.policy = roadie_config::FAILED_LOOKUP_POLICY.to_owned();
    entry.negative = true;
    entry.kind = ChangeKind::Negative;
    (Decision::Fail { error }, Some(entry))
}

/// How one attempt ended, for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Complete,
    Retry {
        error: String,
        at: i64,
    },
    /// Upstream pushed back (429/503): try again at `at`; the attempt does
    /// not count against `max_attempts`. With `pause`, `at` came from
    /// upstream's Retry-After and pauses the provider for every worker.
    PushedBack {
        error: String,
        at: i64,
        pause: bool,
    },
    Fail {
        error: String,
    },
}

/// Most attempts written in one finishing transaction.
const FINISH_BATCH: usize = 64;

/// An attempt handed to the completer, with where to say how it went.
struct Done {
    id: u64,
    decision: Decision,
    entry: Option<EntryPut>,
    reply: oneshot::Sender<Result<roadie_store::Finish, String>>,
}

impl Done {
    fn finish(&self) -> JobFinish<'_> {
        let outcome = match &self.decision {
            Decision::Complete => JobOutcome::Complete {
                entry: self.entry.as_ref(),
            },
            Decision::Retry { error, at } => JobOutcome::RetryLater {
                error: error.clone(),
                run_after: *at,
                counts: true,
            },
            Decision::PushedBack { error, at, .. } => JobOutcome::RetryLater {
                error: error.clone(),
                run_after: *at,
                counts: false,
            },
            Decision::Fail { error } => JobOutcome::Fail {
                error: error.clone(),
                entry: self.entry.as_ref(),
            },
        };
        JobFinish {
            id: self.id,
            outcome,
        }
    }
}

fn result_entry(
    job: &Job,
    value: Vec<u8>,
    media_type: String,
    provenance: Provenance,
    expires_at: Option<i64>,
    now: i64,
) -> EntryPut {
    EntryPut {
        key: job.url.clone(),
        value,
        media_type,
        policy: job.policy.clone(),
        tags: job.tags.clone(),
        confidence: 0,
        fingerprint: None,
        metadata: Default::default(),
        negative: false,
        expires_at,
        provenance: Some(provenance),
        keep_higher_confidence: false,
        if_revision: None,
        kind: ChangeKind::Fetch,
        now,
    }
}

/// The rescuer, on a timer of its own: wakes when the earliest lease of a
/// running job runs out (at the latest every `at_most`), makes the jobs of
/// workers that stopped renewing claimable again, and wakes the claim loop.
/// So a dead worker's jobs are claimable one lease after its last
/// heartbeat, not a rescue interval and a poll later.
async fn rescue(store: Store, at_most: Duration, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let rescued = store.job_rescue(now_ms()).await;
        match &rescued {
            Ok((0, 0)) => {}
            Ok((retried, failed)) => {
                tracing::info!(retried, failed, "rescued jobs of lost workers");
                wake.notify_one();
            }
            Err(error) => tracing::warn!(%error, "rescue failed; trying again later"),
        }
        let next = match rescued {
            Ok(_) => store.job_next_lease_expiry().await,
            // Not at an expiry already past: that would spin.
            Err(_) => Ok(None),
        };
        let pause = match next {
            Ok(Some(at)) => {
                // Just past the expiry: the rescue compares strictly.
                let until = u64::try_from(at + 1 - now_ms()).unwrap_or(0);
                Duration::from_millis(until).min(at_most)
            }
            Ok(None) => at_most,
            Err(error) => {
                tracing::warn!(%error, "cannot read the next lease expiry");
                at_most
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn wake_on_commits(
    store: Store,
    every: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut version = match store.data_version().await {
        Ok(Some(version)) => version,
        // Postgres: the LISTEN above.
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, "cannot watch for commits; idle workers poll");
            return;
        }
    };
    let mut last = None;
    loop {
        match version.read().await {
            Ok(now) if last != Some(now) => {
                if last.is_some() {
                    wake.notify_one();
                }
                last = Some(now);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read data_version; idle workers poll"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    //! The decision of one attempt, outcome by outcome, with no IO: the
    //! README's account of fetching, rule by rule.
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use roadie_providers::{Provider, ProviderPolicy, Refusal};
    use roadie_store::{ChangeKind, Entry, Job, JobState};

    use super::{Decision, decide};
    use crate::fetcher::Outcome;

    const NOW: i64 = 1_800_000_000_000;
    const BACKOFF: Duration = Duration::from_secs(4);
    const FAILED_LOOKUP: Duration = Duration::from_secs(3600);

    fn job(attempt: u32, max_attempts: u32) -> Job {
        Job {
            id: 7,
            provider: "mb".to_owned(),
            url: "https://musicbrainz.org/ws/2/artist/x".to_owned(),
            policy: "api_metadata".to_owned(),
            tags: vec!["artist:x".to_owned()],
            priority: 1,
            state: JobState::Running,
            attempt,
            max_attempts,
            run_after: NOW,
            lease_expires_at: Some(NOW + 30_000),
            lease_holder: Some("w".to_owned()),
            last_error: None,
            created_at: NOW,
            updated_at: NOW,
            finished_at: None,
            traceparent: None,
            stored_etag: None,
            stored_last_modified: None,
        }
    }

    fn provider() -> Provider {
        Provider {
            policy: ProviderPolicy::new(
                "mb",
                url::Url::parse("https://musicbrainz.org/ws/2/").unwrap(),
            ),
            success_ttl: Duration::from_secs(86_400),
            negative_ttl: Duration::from_secs(300),
            rate: None,
        }
    }

    fn stored() -> Entry {
        Entry {
            key: job(1, 5).url,
            value: Bytes::from_static(b"old"),
            media_type: "application/json".to_owned(),
            policy: "api_metadata".to_owned(),
            tags: vec!["artist:x".to_owned()],
            confidence: 0,
            fingerprint: None,
            metadata: Default::default(),
            negative: false,
            created_at: NOW - 10_000,
            updated_at: NOW - 10_000,
            expires_at: Some(NOW - 1),
            revision: 3,
            provenance: None,
        }
    }

    fn run(
        job: &Job,
        fetched: Result<Outcome, Refusal>,
        stored: Option<&Entry>,
    ) -> (Decision, Option<roadie_store::EntryPut>) {
        decide(
            job,
            fetched,
            stored,
            &provider(),
            FAILED_LOOKUP,
            BACKOFF,
            NOW,
        )
    }

    fn transient() -> Result<Outcome, Refusal> {
        Ok(Outcome::Transient {
            reason: "connection reset".to_owned(),
        })
    }

    #[test]
    fn a_2xx_is_stored_under_the_success_ttl_with_its_validators() {
        let fetched = Ok(Outcome::Success {
            status: 200,
            body: Bytes::from_static(b"{}"),
            media_type: "application/json".to_owned(),
            etag: Some("\"v1\"".to_owned()),
            last_modified: None,
        });
        let (decision, entry) = run(&job(1, 5), fetched, None);
        assert_eq!(decision, Decision::Complete);
        let entry = entry.unwrap();
        assert_eq!(entry.value, b"{}");
        assert_eq!(entry.expires_at, Some(NOW + 86_400_000));
        assert_eq!(entry.kind, ChangeKind::Fetch);
        assert_eq!(entry.tags, ["artist:x"]);
        let provenance = entry.provenance.unwrap();
        assert_eq!(
            (provenance.upstream_status, provenance.etag.as_deref()),
            (200, Some("\"v1\""))
        );
        assert!(!entry.negative);
    }

    #[test]
    fn a_304_extends_the_stored_entry_and_without_one_retries_at_once() {
        let fetched = || {
            Ok(Outcome::NotModified {
                etag: Some("\"v2\"".to_owned()),
                last_modified: None,
            })
        };
        let stored = stored();
        let (decision, entry) = run(&job(1, 5), fetched(), Some(&stored));
        assert_eq!(decision, Decision::Complete);
        let entry = entry.unwrap();
        assert_eq!(entry.value, b"old");
        assert_eq!(entry.expires_at, Some(NOW + 86_400_000));
        assert_eq!(entry.provenance.unwrap().upstream_status, 304);

        let (decision, entry) = run(&job(1, 5), fetched(), None);
        assert!(
            matches!(decision, Decision::Retry { at: NOW, .. }),
            "{decision:?}"
        );
        assert!(entry.is_none());
    }

    #[test]
    fn a_404_is_a_negative_entry_for_the_negative_ttl() {
        let (decision, entry) = run(&job(1, 5), Ok(Outcome::NotFound { status: 404 }), None);
        assert_eq!(decision, Decision::Complete);
        let entry = entry.unwrap();
        assert!(entry.negative);
        assert_eq!(entry.kind, ChangeKind::Negative);
        assert_eq!(entry.expires_at, Some(NOW + 300_000));
    }

    #[test]
    fn a_pushback_pauses_the_provider_until_retry_after_and_costs_no_attempt() {
        let retry_at = UNIX_EPOCH + Duration::from_millis(u64::try_from(NOW).unwrap() + 30_000);
        let throttled = Ok(Outcome::Throttled {
            status: 429,
            retry_at: Some(retry_at),
        });
        // Even on the last attempt: the provider's state, not the job's failure.
        let (decision, entry) = run(&job(5, 5), throttled, None);
        assert_eq!(
            decision,
            Decision::PushedBack {
                error: "upstream answered 429".to_owned(),
                at: NOW + 30_000,
                pause: true
            }
        );
        assert!(entry.is_none());
        // Without a usable Retry-After: the job's backoff, no pause.
        let throttled = Ok(Outcome::Throttled {
            status: 503,
            retry_at: None,
        });
        let (decision, _) = run(&job(1, 5), throttled, None);
        assert!(
            matches!(decision, Decision::PushedBack { at, pause: false, .. } if at == NOW + 4_000),
            "{decision:?}"
        );
    }

    #[test]
    fn transient_failures_retry_with_backoff_then_leave_a_failed_lookup() {
        let (decision, entry) = run(&job(1, 5), transient(), None);
        assert_eq!(
            decision,
            Decision::Retry {
                error: "connection reset".to_owned(),
                at: NOW + 4_000
            }
        );
        assert!(entry.is_none());
        let (decision, entry) = run(&job(5, 5), transient(), None);
        assert!(matches!(decision, Decision::Fail { .. }), "{decision:?}");
        let entry = entry.unwrap();
        assert_eq!(entry.policy, "failed_lookup");
        assert!(entry.negative);
        assert_eq!(entry.expires_at, Some(NOW + 3_600_000));
    }

    #[test]
    fn a_good_stored_entry_is_kept_when_the_lookup_fails_for_good() {
        let stored = stored();
        let (decision, entry) = run(&job(5, 5), transient(), Some(&stored));
        assert!(matches!(decision, Decision::Fail { .. }), "{decision:?}");
        assert!(entry.is_none(), "stale-if-error keeps the stored entry");
        let final_4xx = Ok(Outcome::Final {
            status: Some(400),
            reason: "bad request".to_owned(),
        });
        let (decision, entry) = run(&job(1, 5), final_4xx, Some(&stored));
        assert!(matches!(decision, Decision::Fail { .. }), "{decision:?}");
        assert!(entry.is_none());
    }

    #[test]
    fn other_4xx_fail_at_once_and_refusals_store_nothing() {
        let final_4xx = Ok(Outcome::Final {
            status: Some(400),
            reason: "bad request".to_owned(),
        });
        let (decision, entry) = run(&job(1, 5), final_4xx, None);
        assert_eq!(
            decision,
            Decision::Fail {
                error: "upstream answered 400: bad request".to_owned()
            }
        );
        assert_eq!(entry.unwrap().policy, "failed_lookup");
        let refused = Err(Refusal::BadUrl("nope".to_owned()));
        let (decision, entry) = run(&job(1, 5), refused, None);
        assert!(matches!(decision, Decision::Fail { .. }));
        assert!(entry.is_none());
    }

    #[test]
    fn a_zero_failed_lookup_ttl_never_expires() {
        let (_, entry) = decide(
            &job(5, 5),
            transient(),
            None,
            &provider(),
            Duration::ZERO,
            BACKOFF,
            NOW,
        );
        assert_eq!(entry.unwrap().expires_at, None);
    }
}
