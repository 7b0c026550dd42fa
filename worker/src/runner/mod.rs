//! The worker, built like River's: this file is the producer, the claim
//! loop (claims jobs for free slots, woken by the servers' NOTIFY on
//! Postgres, whose waited jobs' providers it claims first, by
//! `data_version` on SQLite, polling as a fallback) and one
//! attempt per job, held under a lease renewed by heartbeat; `decide`
//! turns what upstream did into what the job and the cache become (a pure
//! function); `completer` writes finished attempts in batches, only while
//! their leases are held (a slot is free again once its attempt's result
//! is handed over, as a River worker is); `rescuer` makes the jobs of dead
//! workers claimable again on a timer of its own. A soft stop claims nothing new and
//! lets in-flight jobs finish within a grace period; then a hard stop
//! cancels them and hands their leases back so another worker takes over at
//! once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::{KeyValue, metrics::Histogram};
use rand::Rng;
use roadie_providers::Provider;
use roadie_store::{
    Claim, Job, JobFinish, JobOutcome, PollPace, Rates, Store, StoreError, WORK_CHANNEL, now_ms,
};
use roadie_telemetry::admin::Readiness;
use tokio::{
    sync::{Notify, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use crate::fetcher::{Fetcher, Validators};

mod completer;
mod decide;
mod rescuer;

use decide::{decide, needs_stored};
use rescuer::rescue;

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
    /// How often to look for work when idle; and the longest a busy worker
    /// goes without reading the list of due work (a round that starts
    /// waited jobs leaves it to a later one).
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
    /// Claim rounds finished so far, for tests that wait on the loop (a
    /// signal, not a sleep).
    rounds: Arc<tokio::sync::watch::Sender<u64>>,
    /// Attempts whose end the completer has committed, for tests that wait
    /// on a job's result.
    finishes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Whether this worker can claim now: `/readyz` on the admin port.
    ready: Readiness,
    /// `roadie.job.duration` by provider and outcome.
    job_duration: Histogram<f64>,
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
            rounds: Arc::new(tokio::sync::watch::channel(0).0),
            finishes: Arc::new(tokio::sync::watch::channel(0).0),
            ready: Readiness::default(),
            job_duration: crate::metrics::job_duration(),
        }
    }

    /// The number of claim rounds finished, as it changes: a test waits for
    /// the worker to have looked for work (and gone idle) on this.
    pub fn claim_rounds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rounds.subscribe()
    }

    /// Reports readiness through `ready` (the admin port's `/readyz`).
    pub fn with_readiness(mut self, ready: Readiness) -> Worker {
        self.ready = ready;
        self
    }

    /// The number of attempts whose end has been committed, as it changes:
    /// a test waits for a job's result on this.
    pub fn finishes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.finishes.subscribe()
    }

    /// Claims and runs jobs until `stop` fires, then drains (see the module docs).
    pub async fn run(self, stop: CancellationToken) -> Report {
        let options = self.options.clone();
        let hard = CancellationToken::new();
        let mut inflight = JoinSet::new();
        let mut report = Report::default();
        // While other jobs still run, freed slots are refilled half of the
        // slots at a time: one round of claims per batch, not per job. A
        // round costs about the same however many jobs it claims; a quarter
        // at a time gave quick jobs 0.86 of the throughput and slow ones
        // (slot-bound, 30 ms each) 1.04 (BENCHMARKS.md).
        let refill_batch = (options.concurrency / 2).max(1);
        let mut only_freed = false;
        // When this worker last read the list of due work, and whether the
        // list may hold jobs it has not claimed: its last read filled every
        // slot it asked for (or failed), or something woke the loop that
        // may have added some (`Wake::listed`, the poll, a throttled
        // provider's budget). Only then does a round read it, and at least
        // once a poll interval. Read at every freed slot, it ran beside each
        // waited fetch's finish on the way to its caller.
        let mut due_read: Option<tokio::time::Instant> = None;
        let mut due_maybe = true;
        // When the earliest throttled provider's budget is back (store
        // time): kept until it passes or a read of the list learns it anew.
        let mut next_due = None;
        let (finished, to_finish) = mpsc::channel(options.concurrency.max(1) as usize);
        let completer = tokio::spawn(self.clone().complete(to_finish));
        // Postgres: servers NOTIFY (debounced) when they enqueue; the poll
        // stays as a fallback. A job a caller waits for is announced at
        // once, naming its provider: claimed before anything else.
        let wake = Arc::new(Wake::default());
        let waited = Arc::new(Mutex::new(Vec::<String>::new()));
        let listening = CancellationToken::new();
        {
            let (store, wake, waited, listening) = (
                self.store.clone(),
                wake.clone(),
                waited.clone(),
                listening.clone(),
            );
            tokio::spawn(async move {
                store
                    .listen(&[WORK_CHANNEL], listening, |_, provider| {
                        if !provider.is_empty() {
                            let mut waited = waited.lock().unwrap_or_else(PoisonError::into_inner);
                            if !waited.iter().any(|p| p == provider) {
                                waited.push(provider.to_owned());
                            }
                            wake.named();
                        } else {
                            // Background work, or a reconnect (which may
                            // have missed some).
                            wake.listed();
                        }
                    })
                    .await
            });
        }
        // SQLite has no notifications, but any commit by another process
        // moves `data_version`, which costs no I/O to read: a worker that
        // checks it often claims a new job within `commit_poll` of its
        // enqueueing (a fifth of that while commits keep coming: PollPace)
        // instead of at the next poll.
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
            if free > 0 && (!only_freed || free >= refill_batch) {
                // Each claim takes the time it starts at: a budget is
                // measured from it.
                let lease = |now| now + millis(options.lease);
                // Waited jobs named by a notification start first, and a
                // round that started some leaves the list of due work to a
                // later round: read now, it would run beside the waited
                // fetches on their way to their callers (0.29 ms of a
                // Fetch (wait) on Postgres). The list is still read at
                // least once a poll interval, so a steady stream of waited
                // jobs never starves the rest.
                let named =
                    std::mem::take(&mut *waited.lock().unwrap_or_else(PoisonError::into_inner));
                let mut free = free;
                let mut waited_started = 0;
                for provider in named {
                    if free == 0 {
                        break;
                    }
                    let now = now_ms();
                    let claim = self
                        .store
                        .job_claim_waited(
                            &options.id,
                            free,
                            lease(now),
                            now,
                            &self.rates,
                            &provider,
                        )
                        .await;
                    let started = self.start(claim, &mut inflight, &hard, &finished, &mut next_due);
                    free = free.saturating_sub(started);
                    waited_started += started;
                }
                report.claimed += u64::from(waited_started);
                let due_read_lately =
                    due_read.is_some_and(|at| at.elapsed() < options.poll_interval);
                due_maybe |= wake.take_listed();
                if (waited_started == 0 && due_maybe) || !due_read_lately {
                    due_read = Some(tokio::time::Instant::now());
                    next_due = None;
                    let now = now_ms();
                    let claim = self
                        .store
                        .job_claim_within(&options.id, free, lease(now), now, &self.rates)
                        .await;
                    due_maybe = claim
                        .as_ref()
                        .map_or(true, |claim| claim.jobs.len() >= free as usize);
                    let started = self.start(claim, &mut inflight, &hard, &finished, &mut next_due);
                    report.claimed += u64::from(started);
                }
                self.rounds.send_modify(|rounds| *rounds += 1);
            }
            // A throttled provider's budget returns at a known moment: look
            // again then rather than at the next poll.
            let budget_back = next_due.map(|due| budget_back(due, now_ms()));
            // Freed slots claim again (in batches while others run); an idle worker polls.
            only_freed = tokio::select! {
                () = stop.cancelled() => break,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => true,
                () = tokio::time::sleep(options.poll_interval) => {
                    due_maybe = true;
                    false
                }
                () = wake.notify.notified() => false,
                () = sleep_until_some(budget_back) => {
                    due_maybe = true;
                    next_due = None;
                    false
                }
            };
        }
        listening.cancel();
        self.ready.set(false, "stopping");
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

    /// Starts the jobs of `claim`, each under its own span, and notes when
    /// a throttled provider may be called again; the number started.
    fn start(
        &self,
        claim: Result<Claim, StoreError>,
        inflight: &mut JoinSet<()>,
        hard: &CancellationToken,
        finished: &mpsc::Sender<JobFinish>,
        next_due: &mut Option<i64>,
    ) -> u32 {
        let claim = match claim {
            Ok(claim) => claim,
            Err(error) => {
                tracing::warn!(%error, "claim failed");
                self.ready.set(false, "claims fail");
                return 0;
            }
        };
        self.ready.set(true, "claims succeed");
        if let Some(due) = claim.next_due {
            *next_due = Some(next_due.map_or(due, |n| n.min(due)));
        }
        let started = u32::try_from(claim.jobs.len()).unwrap_or(u32::MAX);
        for job in claim.jobs {
            let span = job_span(&job);
            inflight.spawn(
                self.clone()
                    .process(job, hard.clone(), finished.clone())
                    .instrument(span),
            );
        }
        started
    }

    async fn process(self, job: Job, hard: CancellationToken, finished: mpsc::Sender<JobFinish>) {
        let started = std::time::Instant::now();
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
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(job = job.id, %error, "store error during the attempt; the lease will expire");
                return;
            }
        };
        let ended = outcome_name(&outcome);
        tracing::Span::current().record("roadie.job.outcome", ended);
        self.job_duration.record(
            started.elapsed().as_secs_f64() * 1000.0,
            &[
                KeyValue::new("roadie.provider", job.provider.clone()),
                KeyValue::new("roadie.job.outcome", ended),
            ],
        );
        // The slot is free once the completer has the result (see `completer`).
        let done = JobFinish {
            id: job.id,
            outcome,
        };
        if finished.send(done).await.is_err() {
            tracing::warn!(job = job.id, "the completer is gone; the lease will expire");
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
    async fn attempt(&self, job: &Job) -> Result<JobOutcome, StoreError> {
        let Some(provider) = self.providers.get(&job.provider) else {
            return Ok(JobOutcome::Fail {
                error: format!("unknown provider {:?}", job.provider),
                entry: None,
            });
        };
        let url = match Url::parse(&job.url) {
            Ok(url) => url,
            Err(error) => {
                return Ok(JobOutcome::Fail {
                    error: format!("bad url: {error}"),
                    entry: None,
                });
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
        let stored = if needs_stored(job, &fetched) {
            self.store
                .entry_get(&job.url)
                .await?
                .filter(|e| !e.negative)
        } else {
            None
        };
        let backoff = self.backoff(job.attempt);
        let (outcome, pause_until) = decide(
            job,
            fetched,
            stored.as_ref(),
            provider,
            self.options.failed_lookup_ttl,
            backoff,
            now,
        );
        if let Some(until) = pause_until {
            self.store.provider_pause(&job.provider, until).await?;
            tracing::warn!(provider = %job.provider, until, "upstream pushback: provider paused for every worker");
        }
        Ok(outcome)
    }

    /// The backoff before retrying after `attempt`, with a random jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let jitter = rand::rng().random_range(0.5..=1.0);
        backoff(
            self.options.backoff_base,
            self.options.backoff_max,
            attempt,
            jitter,
        )
    }
}

/// The span of one attempt: a child of the span that enqueued the job
/// (its row's `traceparent`), so the trace runs from the caller's RPC
/// through the queue to the upstream request.
fn job_span(job: &Job) -> tracing::Span {
    let span = tracing::info_span!(
        "worker.job",
        otel.name = %format!("job {}", job.provider),
        otel.kind = "consumer",
        job = job.id,
        provider = %job.provider,
        attempt = job.attempt,
        roadie.job.outcome = tracing::field::Empty,
    );
    if let Some(traceparent) = &job.traceparent {
        roadie_telemetry::propagation::continue_from_traceparent(&span, traceparent);
    }
    span
}

/// How an attempt ended, as a metric and span attribute.
fn outcome_name(outcome: &JobOutcome) -> &'static str {
    match outcome {
        JobOutcome::Complete { .. } => "completed",
        JobOutcome::RetryLater { counts: true, .. } => "retry",
        JobOutcome::RetryLater { counts: false, .. } => "pushback",
        JobOutcome::Fail { .. } => "failed",
    }
}

/// Exponential backoff for `attempt` (1-based): `base` doubled per attempt,
/// at most `max`, scaled by `jitter` (drawn from [½, 1]) so that jobs that
/// failed together do not all come back together.
fn backoff(base: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(20));
    exp.min(max).mul_f64(jitter)
}

/// When a throttled provider's budget is back (`due`, store time in ms), as
/// an instant on this process's clock.
fn budget_back(due: i64, now: i64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(u64::try_from(due - now).unwrap_or(0))
}

async fn wake_on_commits(store: Store, every: Duration, wake: Arc<Wake>, stop: CancellationToken) {
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
    let mut pace = PollPace::new(every);
    loop {
        match version.read().await {
            Ok(now) if last != Some(now) => {
                if last.is_some() {
                    wake.listed();
                    pace.moved();
                }
                last = Some(now);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read data_version; idle workers poll"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pace.next()) => {}
        }
    }
}

/// What wakes the claim loop, and whether the reason may have put jobs on
/// the list of due work: anything but a notification naming a waited job's
/// provider, whose own claim takes it.
#[derive(Debug, Default)]
pub(super) struct Wake {
    notify: Notify,
    listed: AtomicBool,
}

impl Wake {
    /// Jobs may have become due (enqueued, rescued, committed by another
    /// process on SQLite): the next round reads the list.
    pub(super) fn listed(&self) {
        self.listed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// A waited job of a named provider, claimed on its own.
    fn named(&self) {
        self.notify.notify_one();
    }

    /// Whether [`Wake::listed`] was called since the last time this was.
    fn take_listed(&self) -> bool {
        self.listed.swap(false, Ordering::AcqRel)
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
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_per_attempt_up_to_its_cap() {
        let max = Duration::from_secs(30);
        let full: Vec<u64> = (1..=7)
            .map(|attempt| backoff(SECOND, max, attempt, 1.0).as_secs())
            .collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 30, 30]);
        // Attempt 0 (never claimed) waits the base; huge attempts do not overflow.
        assert_eq!(backoff(SECOND, max, 0, 1.0), SECOND);
        assert_eq!(backoff(SECOND, max, u32::MAX, 1.0), max);
    }

    #[test]
    fn jitter_shortens_the_backoff_by_at_most_half() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(SECOND * 4, max, 1, 0.5), SECOND * 2);
        assert_eq!(backoff(SECOND * 4, max, 3, 0.5), SECOND * 8);
        // The cap applies before the jitter: capped retries spread too.
        assert_eq!(backoff(SECOND * 4, max, 5, 0.5), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_claim_loop_wakes_when_the_budget_is_back_and_not_before() {
        let start = tokio::time::Instant::now();
        let due = budget_back(10_000 + 1_500, 10_000);
        assert_eq!(due - start, Duration::from_millis(1_500));
        let early = tokio::time::timeout(Duration::from_millis(1_499), sleep_until_some(Some(due)));
        assert!(early.await.is_err(), "woke before the budget was back");
        sleep_until_some(Some(due)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1_500));
        // A budget already back (the store's clock ran ahead) wakes at once.
        let past = budget_back(9_000, 10_000);
        sleep_until_some(Some(past)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1_500));
        // No throttled provider: that arm never fires (the poll does).
        let never = tokio::time::timeout(Duration::from_secs(3_600), sleep_until_some(None));
        assert!(never.await.is_err());
    }
}
