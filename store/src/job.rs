//! The fetch-job queue: enqueue with per-key sharing, claim by priority
//! under a lease, heartbeat, finish only while holding the lease, rescue
//! jobs of lost workers, and the admin operations.

use std::sync::LazyLock;

use sqlx::{AnyPool, Row, any::AnyRow};

use crate::{
    Backend, Store, StoreError,
    change::{from_i64, parse_tags, to_i64},
    entry::{
        Ending, EntryPut, Lock, PutResult, entries_put_at, entries_put_in, last_written,
        writes_alone,
    },
    rate::{Rate, Rates, budget_sql},
    sql::{MAX_PARAMS, sql, with_rows_after},
};

/// Where a job is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting to be claimed, not before `run_after`.
    Available,
    /// Claimed by the worker holding its lease.
    Running,
    /// Finished; its result is in the cache.
    Completed,
    /// Gave up.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobState {
    /// The name stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state stored as `name`.
    pub fn parse(name: &str) -> Option<JobState> {
        [
            JobState::Available,
            JobState::Running,
            JobState::Completed,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// True for completed, failed and cancelled jobs.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The id.
    pub id: u64,
    /// Provider name.
    pub provider: String,
    /// The URL fetched; the cache key of the result.
    pub url: String,
    /// Policy of the result.
    pub policy: String,
    /// Tags of the result.
    pub tags: Vec<String>,
    /// 1 = waited for; larger = later.
    pub priority: u32,
    /// Life-cycle state.
    pub state: JobState,
    /// Attempts started.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Not claimed before, ms since the epoch.
    pub run_after: i64,
    /// While running: end of the lease.
    pub lease_expires_at: Option<i64>,
    /// While running: the worker holding it.
    pub lease_holder: Option<String>,
    /// Error of the last failed attempt.
    pub last_error: Option<String>,
    /// Enqueued at.
    pub created_at: i64,
    /// Last state change.
    pub updated_at: i64,
    /// Completed, failed or cancelled at.
    pub finished_at: Option<i64>,
    /// W3C traceparent of the enqueuing request.
    pub traceparent: Option<String>,
    /// Claims only: the ETag of the good entry cached under `url`, to revalidate.
    pub stored_etag: Option<String>,
    /// Claims only: the Last-Modified of the good entry cached under `url`.
    pub stored_last_modified: Option<String>,
}

/// The priority of a job a caller waits for; background jobs come after it.
pub const WAIT_PRIORITY: u32 = 1;

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct JobNew {
    /// Provider name.
    pub provider: String,
    /// The full URL; also the dedupe key.
    pub url: String,
    /// Policy of the result.
    pub policy: String,
    /// Tags of the result.
    pub tags: Vec<String>,
    /// [`WAIT_PRIORITY`] = waited for; larger = background.
    pub priority: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// W3C traceparent of the enqueuing request.
    pub traceparent: Option<String>,
    /// The clock.
    pub now: i64,
}

impl JobNew {
    /// The job `job_insert.sql` (and `postgres/entry_get_or_enqueue.sql`)
    /// makes of this request, given the id it got: available from now, no
    /// attempt yet, no lease.
    pub(crate) fn inserted(&self, id: u64) -> Job {
        Job {
            id,
            provider: self.provider.clone(),
            url: self.url.clone(),
            policy: self.policy.clone(),
            tags: self.tags.clone(),
            priority: self.priority,
            state: JobState::Available,
            attempt: 0,
            max_attempts: self.max_attempts,
            run_after: self.now,
            lease_expires_at: None,
            lease_holder: None,
            last_error: None,
            created_at: self.now,
            updated_at: self.now,
            finished_at: None,
            traceparent: self.traceparent.clone(),
            stored_etag: None,
            stored_last_modified: None,
        }
    }
}

/// What a claim got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// The jobs now leased to the worker.
    pub jobs: Vec<Job>,
    /// When a provider that had due work but no budget may be called next
    /// (ms since the epoch): the moment to look again instead of polling.
    pub next_due: Option<i64>,
}

impl Claim {
    /// Adds one provider's part; false when the provider had no budget.
    fn add(&mut self, part: Gated) -> bool {
        match part {
            Gated::Claimed(jobs) => {
                self.jobs.extend(jobs);
                true
            }
            Gated::Throttled { next } => {
                self.next_due = Some(self.next_due.map_or(next, |n| n.min(next)));
                false
            }
        }
    }
}

/// One provider's part of a claim ([`Store::job_claim_within`]): up to
/// `want` of its due jobs of `priority`.
struct Wanted<'a> {
    worker: &'a str,
    lease_until: i64,
    now: i64,
    want: u32,
    provider: &'a str,
    priority: i64,
}

impl Wanted<'_> {
    /// `text`, a claim statement, with its six parameters bound: at most
    /// `limit` jobs.
    fn query<'q>(
        &'q self,
        text: &'q str,
        limit: i64,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        sqlx::query(text)
            .bind(self.worker)
            .bind(self.lease_until)
            .bind(self.now)
            .bind(limit)
            .bind(self.provider)
            .bind(self.priority)
    }
}

/// Where one provider's part of a claim ended.
enum Gated {
    Claimed(Vec<Job>),
    /// No budget now; the provider may be called again at `next`.
    Throttled {
        next: i64,
    },
}

/// A provider's claim held back: when `row` (the provider's `tat` and
/// `paused_until`, and the jobs `allowed` now) allows none, and when to look
/// again; `None` when it allows some.
fn throttled(row: &AnyRow, rate: Rate) -> Result<Option<Gated>, StoreError> {
    if row.try_get::<i64, _>("allowed")? > 0 {
        return Ok(None);
    }
    let tat: i64 = row.try_get("tat")?;
    let paused_until: i64 = row.try_get("paused_until")?;
    Ok(Some(Gated::Throttled {
        next: rate.next_at(tat).max(paused_until),
    }))
}

/// `statement`, which ends jobs and returns their `id`s, made to tell
/// listeners on [`crate::JOB_CHANNEL`] too on Postgres ([`crate::notify::announce_ended`]).
/// SQLite has no notifications: waiters poll.
fn announcing_ends(backend: Backend, statement: &str) -> String {
    match backend {
        Backend::Sqlite => statement.to_owned(),
        Backend::Postgres => format!(
            "WITH ended_ids AS ({statement})
             SELECT ended_ids.id FROM ended_ids, ({}) announced",
            crate::notify::announce_ended("ended_ids")
        ),
    }
}

/// The claim statements of one backend, their markers filled in.
struct ClaimTexts {
    /// `job_claim`, at most `$4` jobs.
    claim: String,
    /// Postgres: `job_claim_gated`.
    gated: String,
    /// `provider_state_lock`.
    lock: String,
    /// `provider_state_spend`.
    spend: String,
}

/// The marker of a statement on Postgres whose transaction commits
/// without waiting for its WAL to reach the disk (`synchronous_commit` off
/// for that transaction alone). The WAL writer flushes such commits within
/// three of its delays (0.6 s by default), and any later commit that waits
/// for the disk (every Put, finish and background enqueue does) flushes
/// them before it. Two statements use it:
///
/// - A claim: the provider's row is locked until the commit, so a flush
///   there (a millisecond or more) would hold every other claim for the
///   provider back, and the worker's request after it. What a crash of the
///   database can lose is safe to lose: the last claims of the moment before
///   it. Their jobs are available again (their workers' finishes find the
///   lease gone and write nothing), and the budget they spent is spent again
///   once.
/// - A waited Fetch's first look (`postgres/entry_get_or_enqueue.sql`): the
///   job's worker hears of it one flush sooner. No one is told of the job
///   before it is on disk: its caller hears when it ends (the finish waits
///   for the disk), and anyone told sooner is told after
///   [`Store::job_durable`].
pub(crate) const UNFLUSHED: &str =
    "(SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL";

/// A write of job `id`'s row that waits for the disk (Postgres): the log
/// up to it, an unflushed enqueue of the job among it, is then on disk.
pub(crate) async fn job_flush(pool: &AnyPool, backend: Backend, id: u64) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query(sql!("postgres/job_flush"))
            .bind(to_i64(id))
            .execute(pool)
            .await?;
    }
    Ok(())
}

fn claim_texts(backend: Backend) -> &'static ClaimTexts {
    fn texts(backend: Backend) -> ClaimTexts {
        let claim = sql!(backend, "job_claim").replace("{unflushed}", UNFLUSHED);
        ClaimTexts {
            claim: claim.replace("{limit}", "$4"),
            gated: budget_sql(
                &sql!("postgres/job_claim_gated")
                    .replace("{unflushed}", UNFLUSHED)
                    .replace(
                        "{claim}",
                        &claim.replace("{limit}", "COALESCE((SELECT allowed FROM budget), 0)"),
                    ),
                "$7",
                "$4",
                "(SELECT count(*) FROM claimed)",
                "$8",
                "$9",
            ),
            lock: budget_sql(sql!("provider_state_lock"), "$2", "$3", "0", "$4", "$5"),
            spend: budget_sql(sql!("provider_state_spend"), "$2", "0", "$4", "$5", "0"),
        }
    }
    static SQLITE: LazyLock<ClaimTexts> = LazyLock::new(|| texts(Backend::Sqlite));
    static POSTGRES: LazyLock<ClaimTexts> = LazyLock::new(|| texts(Backend::Postgres));
    match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    }
}

/// One provider's shared state, as `Stats` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderState {
    /// Provider name.
    pub provider: String,
    /// Jobs available (due or not).
    pub backlog: u64,
    /// Pushback pause end, ms since the epoch (0: never paused).
    pub paused_until: i64,
    /// GCRA theoretical arrival time, ms since the epoch.
    pub tat: i64,
    /// Total time claimed jobs waited between becoming due and being claimed.
    pub waited_ms: i64,
}

/// Unfinished jobs of one provider in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// Provider name.
    pub provider: String,
    /// `Available` or `Running`.
    pub state: JobState,
    /// How many.
    pub jobs: u64,
    /// When the oldest of them was enqueued, ms since the epoch.
    pub oldest_created_at: i64,
}

/// How a worker's attempt at a job ended: the one owned account of it,
/// from the worker's decision to the transaction that records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Done: write `entry` (if any) and mark the job completed, atomically.
    Complete {
        /// The result to store.
        entry: Option<EntryPut>,
    },
    /// Try again not before `run_after`.
    RetryLater {
        /// Why this attempt failed.
        error: String,
        /// Earliest next claim, ms since the epoch.
        run_after: i64,
        /// Whether this attempt counts against `max_attempts`: not when
        /// upstream pushed back (429/503), which is the provider's state,
        /// not the job's failure.
        counts: bool,
    },
    /// Give up: write `entry` (a negative one, if any) and mark the job failed.
    Fail {
        /// Why.
        error: String,
        /// A negative entry to store, unless a good entry must be kept.
        entry: Option<EntryPut>,
    },
}

/// One attempt to end, for [`Store::job_finish_many_if_leased`].
#[derive(Debug, Clone)]
pub struct JobFinish {
    /// The job.
    pub id: u64,
    /// How its attempt ended.
    pub outcome: JobOutcome,
}

/// What finishing an attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Recorded; `put` is the result of the entry write, if any.
    Recorded {
        /// The entry write.
        put: Option<PutResult>,
    },
    /// The worker no longer held the lease (expired and taken over, or the
    /// job was cancelled): nothing was written.
    LeaseLost,
}

impl Store {
    /// Enqueues a job, or returns the unfinished job for the same URL. The
    /// flag says whether the job was shared. A shared job waiting at a lower
    /// priority moves up to the request's.
    pub async fn job_enqueue(&self, job: &JobNew) -> Result<(Job, bool), StoreError> {
        self.job_enqueue_unless_written(job, None)
            .await?
            .ok_or_else(|| StoreError::Corrupt("an unconditional enqueue was refused".to_owned()))
    }

    /// As [`Store::job_enqueue`], but a new job only while the entry at
    /// `job.url` is still at revision `seen` (0: absent), as the caller read
    /// it: `None` when the entry has been written since (read it again: a job
    /// that finished in between may have answered the call already). An
    /// unfinished job is shared whatever the entry. Enqueues waiting at the
    /// same moment go into one statement (`enqueue`).
    #[tracing::instrument(target = "roadie_store::db", name = "db job_enqueue", skip_all, fields(otel.kind = "client", db.system.name = self.backend.system_name(), db.operation.name = "job_enqueue"))]
    pub async fn job_enqueue_unless_written(
        &self,
        job: &JobNew,
        seen: Option<u64>,
    ) -> Result<Option<(Job, bool)>, StoreError> {
        self.enqueuer.enqueue(job.clone(), seen).await
    }

    /// Claims up to `limit` available jobs for `worker`, leased until
    /// `lease_until`, with no rate limits (see [`Store::job_claim_within`]).
    pub async fn job_claim(
        &self,
        worker: &str,
        limit: u32,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<Job>, StoreError> {
        Ok(self
            .job_claim_within(worker, limit, lease_until, now, &Rates::default())
            .await?
            .jobs)
    }

    /// Claims up to `limit` available jobs for `worker`, leased until
    /// `lease_until`: lowest priority number first across every provider,
    /// oldest first within a priority, and for a provider in `rates` only as
    /// many as its budget allows now. The budget is spent in the
    /// transaction that claims, so no worker holds a claim it may not use
    /// yet; on Postgres that is one statement per provider, which holds the
    /// provider's row only while it runs. Paused providers are skipped.
    #[tracing::instrument(target = "roadie_store::db", name = "db job_claim", skip_all, fields(otel.kind = "client", db.system.name = self.backend.system_name(), db.operation.name = "job_claim"))]
    pub async fn job_claim_within(
        &self,
        worker: &str,
        limit: u32,
        lease_until: i64,
        now: i64,
        rates: &Rates,
    ) -> Result<Claim, StoreError> {
        let mut claim = Claim::default();
        if limit == 0 {
            return Ok(claim);
        }
        // The budget is measured at the moment the provider's row is locked,
        // not when the claim began: the queries before it take variable time,
        // and a request goes out right after the claim commits.
        let started = std::time::Instant::now();
        let due = sqlx::query(sql!("job_due_providers"))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        // Providers found without budget in this claim are not asked again.
        let mut throttled: Vec<String> = Vec::new();
        for row in &due {
            let provider: String = row.try_get("provider")?;
            let priority: i64 = row.try_get("priority")?;
            let remaining = limit - u32::try_from(claim.jobs.len()).unwrap_or(limit);
            if remaining == 0 {
                break;
            }
            if throttled.contains(&provider) {
                continue;
            }
            let wanted = Wanted {
                worker,
                lease_until,
                now,
                want: remaining,
                provider: &provider,
                priority,
            };
            if !claim.add(self.claim_group(&wanted, rates, started).await?) {
                throttled.push(provider);
            }
        }
        claim.jobs.sort_by_key(|j| (j.priority, j.id));
        Ok(claim)
    }

    /// Claims up to `limit` of `provider`'s due jobs that callers wait for
    /// ([`WAIT_PRIORITY`], the most urgent a job can be), within its budget
    /// as [`Store::job_claim_within`] does, without first reading the list
    /// of due work: a worker told that such a job was enqueued (the
    /// enqueue's notification names its provider) starts it one round trip
    /// sooner. Jobs of other providers at the same priority may be older;
    /// the worker's next round claims them.
    #[tracing::instrument(target = "roadie_store::db", name = "db job_claim", skip_all, fields(otel.kind = "client", db.system.name = self.backend.system_name(), db.operation.name = "job_claim"))]
    pub async fn job_claim_waited(
        &self,
        worker: &str,
        limit: u32,
        lease_until: i64,
        now: i64,
        rates: &Rates,
        provider: &str,
    ) -> Result<Claim, StoreError> {
        let mut claim = Claim::default();
        if limit > 0 {
            let wanted = Wanted {
                worker,
                lease_until,
                now,
                want: limit,
                provider,
                priority: i64::from(WAIT_PRIORITY),
            };
            let started = std::time::Instant::now();
            claim.add(self.claim_group(&wanted, rates, started).await?);
        }
        Ok(claim)
    }

    /// One provider's part of a claim: one statement when it has no rate
    /// limit, else its budget at the moment its row is locked (`started`
    /// is when the claim began, `wanted.now` the time it was given).
    async fn claim_group(
        &self,
        wanted: &Wanted<'_>,
        rates: &Rates,
        started: std::time::Instant,
    ) -> Result<Gated, StoreError> {
        match rates.get(wanted.provider) {
            None => Ok(Gated::Claimed(self.claim_ungated(wanted).await?)),
            Some(rate) => {
                let at = wanted.now + i64::try_from(started.elapsed().as_millis()).unwrap_or(0);
                match self.backend {
                    Backend::Postgres => self.claim_gated_postgres(wanted, *rate, at).await,
                    Backend::Sqlite => self.claim_gated_sqlite(wanted, *rate, at).await,
                }
            }
        }
    }

    /// One provider's due jobs of one priority, with no rate limit: one
    /// statement.
    async fn claim_ungated(&self, wanted: &Wanted<'_>) -> Result<Vec<Job>, StoreError> {
        let texts = claim_texts(self.backend);
        let mut taken = self.claims.take(&self.pool, self.backend).await?;
        let rows = wanted
            .query(&texts.claim, i64::from(wanted.want))
            .fetch_all(&mut *taken.conn)
            .await?;
        self.claims.keep(taken, &self.pool);
        rows.iter().map(job_from_row).collect()
    }

    /// A rate-limited provider's claim on Postgres: one statement that
    /// locks the provider's row, claims what the budget allows at `at` and
    /// spends it (`postgres/job_claim_gated.sql`); the row is created the
    /// first time.
    async fn claim_gated_postgres(
        &self,
        wanted: &Wanted<'_>,
        rate: Rate,
        at: i64,
    ) -> Result<Gated, StoreError> {
        let texts = claim_texts(self.backend);
        for _ in 0..2 {
            let mut taken = self.claims.take(&self.pool, self.backend).await?;
            let rows = wanted
                .query(&texts.gated, i64::from(wanted.want))
                .bind(at)
                .bind(rate.interval_ms())
                .bind(rate.tolerance_ms())
                .fetch_all(&mut *taken.conn)
                .await?;
            self.claims.keep(taken, &self.pool);
            let Some(first) = rows.first() else {
                self.provider_state_lock(wanted, rate, at, &self.pool)
                    .await?;
                continue;
            };
            if let Some(throttled) = throttled(first, rate)? {
                return Ok(throttled);
            }
            let mut jobs = Vec::with_capacity(rows.len());
            for row in &rows {
                if row.try_get::<Option<i64>, _>("id")?.is_some() {
                    jobs.push(job_from_row(row)?);
                }
            }
            return Ok(Gated::Claimed(jobs));
        }
        Err(StoreError::Corrupt(format!(
            "the rate state of provider {} was not created",
            wanted.provider
        )))
    }

    /// A rate-limited provider's claim on SQLite: the provider's row, the
    /// claim and the spend in one write transaction.
    async fn claim_gated_sqlite(
        &self,
        wanted: &Wanted<'_>,
        rate: Rate,
        at: i64,
    ) -> Result<Gated, StoreError> {
        let texts = claim_texts(self.backend);
        let mut tx = self.pool.begin().await?;
        let row = self.provider_state_lock(wanted, rate, at, &mut *tx).await?;
        if let Some(throttled) = throttled(&row, rate)? {
            return Ok(throttled);
        }
        let allowed: i64 = row.try_get("allowed")?;
        let rows = wanted
            .query(&texts.claim, allowed)
            .fetch_all(&mut *tx)
            .await?;
        let mut waited = 0;
        for row in &rows {
            waited += row.try_get::<i64, _>("waited")?;
        }
        sqlx::query(&texts.spend)
            .bind(wanted.provider)
            .bind(at)
            .bind(waited)
            .bind(i64::try_from(rows.len()).unwrap_or(i64::MAX))
            .bind(rate.interval_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Gated::Claimed(
            rows.iter().map(job_from_row).collect::<Result<_, _>>()?,
        ))
    }

    /// Creates the provider's rate row if needed and locks it (SQLite: the
    /// write lock): its `tat`, `paused_until` and the jobs `allowed` at `at`.
    async fn provider_state_lock<'e>(
        &self,
        wanted: &Wanted<'_>,
        rate: Rate,
        at: i64,
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    ) -> Result<AnyRow, StoreError> {
        Ok(sqlx::query(&claim_texts(self.backend).lock)
            .bind(wanted.provider)
            .bind(at)
            .bind(i64::from(wanted.want))
            .bind(rate.interval_ms())
            .bind(rate.tolerance_ms())
            .fetch_one(executor)
            .await?)
    }

    /// Each known provider's shared state and backlog, for `Stats`.
    pub async fn provider_stats(&self) -> Result<Vec<ProviderState>, StoreError> {
        let rows = sqlx::query(sql!("provider_stats"))
            .fetch_all(&self.pool)
            .await?;
        let backlog = sqlx::query(sql!("job_backlog"))
            .fetch_all(&self.pool)
            .await?;
        let mut states: std::collections::BTreeMap<String, ProviderState> =
            std::collections::BTreeMap::new();
        for row in &rows {
            let provider: String = row.try_get("provider")?;
            states.insert(
                provider.clone(),
                ProviderState {
                    provider,
                    backlog: 0,
                    paused_until: row.try_get("paused_until")?,
                    tat: row.try_get("tat")?,
                    waited_ms: row.try_get("waited_ms")?,
                },
            );
        }
        for row in &backlog {
            let provider: String = row.try_get("provider")?;
            let count = from_i64(row.try_get("backlog")?);
            states
                .entry(provider.clone())
                .or_insert_with(|| ProviderState {
                    provider,
                    ..ProviderState::default()
                })
                .backlog = count;
        }
        Ok(states.into_values().collect())
    }

    /// The unfinished jobs by provider and state, with the oldest of each.
    pub async fn job_depth(&self) -> Result<Vec<QueueDepth>, StoreError> {
        let rows = sqlx::query(sql!("job_depth")).fetch_all(&self.pool).await?;
        let mut depth = Vec::with_capacity(rows.len());
        for row in &rows {
            let state: String = row.try_get("state")?;
            let Some(state) = JobState::parse(&state) else {
                continue;
            };
            depth.push(QueueDepth {
                provider: row.try_get("provider")?,
                state,
                jobs: from_i64(row.try_get("jobs")?),
                oldest_created_at: row.try_get("oldest_created_at")?,
            });
        }
        Ok(depth)
    }

    /// When the earliest lease of a running job runs out, ms since the
    /// epoch; `None` when no job runs.
    pub async fn job_next_lease_expiry(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(sql!("job_next_lease_expiry"))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Makes jobs whose lease expired claimable again (or failed, after their
    /// last attempt). Returns how many were rescued and failed.
    pub async fn job_rescue(&self, now: i64) -> Result<(u64, u64), StoreError> {
        let retried = sqlx::query(sql!("job_rescue_retry"))
            .bind(now)
            .execute(&self.pool)
            .await?;
        let failed = sqlx::query(sql!("job_rescue_fail"))
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok((retried.rows_affected(), failed.rows_affected()))
    }

    /// Extends `worker`'s lease on job `id`; false when it no longer holds it.
    pub async fn job_heartbeat(
        &self,
        id: u64,
        worker: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql!("job_heartbeat"))
            .bind(to_i64(id))
            .bind(worker)
            .bind(lease_until)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends `worker`'s attempt at job `id`, only while it holds the lease;
    /// an entry is written in the same transaction.
    pub async fn job_finish_if_leased(
        &self,
        id: u64,
        worker: &str,
        outcome: &JobOutcome,
        now: i64,
    ) -> Result<Finish, StoreError> {
        let finishes = [JobFinish {
            id,
            outcome: outcome.clone(),
        }];
        let mut done = self
            .job_finish_many_if_leased(worker, &finishes, now)
            .await?;
        done.pop()
            .ok_or_else(|| StoreError::Corrupt("no result for a finished job".to_owned()))
    }

    /// Ends several of `worker`'s attempts in one transaction, each only
    /// while the worker holds its lease (a lost lease skips that job alone),
    /// each with its entry. One commit for many jobs: writers take the
    /// revision counter in turn, so a busy worker that finishes a batch at
    /// once waits its turn once, not once per job. Results in `finishes` order.
    #[tracing::instrument(target = "roadie_store::db", name = "db job_finish", skip_all, fields(otel.kind = "client", db.system.name = self.backend.system_name(), db.operation.name = "job_finish"))]
    pub async fn job_finish_many_if_leased(
        &self,
        worker: &str,
        finishes: &[JobFinish],
        now: i64,
    ) -> Result<Vec<Finish>, StoreError> {
        if let Some(done) = self.job_finish_at_once(worker, finishes, now).await? {
            return Ok(done);
        }
        let mut tx = self.pool.begin().await?;
        // Every job row first, then the entries (which take the revision
        // counter): the order a single finish has always locked in. Retries
        // (rare: an upstream that failed) one statement each; every ended
        // attempt in one statement.
        let mut held = vec![false; finishes.len()];
        let mut ended: Vec<(i64, JobState, Option<&str>)> = Vec::new();
        for (finish, held) in finishes.iter().zip(&mut held) {
            let id = to_i64(finish.id);
            match &finish.outcome {
                JobOutcome::Complete { .. } => ended.push((id, JobState::Completed, None)),
                JobOutcome::Fail { error, .. } => {
                    ended.push((id, JobState::Failed, Some(error.as_str())));
                }
                JobOutcome::RetryLater {
                    error,
                    run_after,
                    counts,
                } => {
                    let done = sqlx::query(sql!("job_retry_later_if_leased"))
                        .bind(id)
                        .bind(worker)
                        .bind(error)
                        .bind(*run_after)
                        .bind(now)
                        .bind(i64::from(!counts))
                        .execute(&mut *tx)
                        .await?;
                    *held = done.rows_affected() == 1;
                }
            }
        }
        let mut still_held = std::collections::HashSet::new();
        for chunk in ended.chunks((MAX_PARAMS - 2) / 3) {
            let text = announcing_ends(
                self.backend,
                &with_rows_after(sql!("job_finish_if_leased"), 2, chunk.len(), 3),
            );
            let mut query = sqlx::query(&text).bind(now).bind(worker);
            for (id, state, error) in chunk {
                query = query.bind(*id).bind(state.as_str()).bind(*error);
            }
            for row in query.fetch_all(&mut *tx).await? {
                still_held.insert(from_i64(row.try_get("id")?));
            }
        }
        for (finish, held) in finishes.iter().zip(&mut held) {
            if !matches!(finish.outcome, JobOutcome::RetryLater { .. }) {
                *held = still_held.contains(&finish.id);
            }
        }
        // Then every entry of the batch in one write (the revision lock
        // once, one statement of each kind), in the order of `finishes`.
        let entries: Vec<Option<&EntryPut>> = finishes
            .iter()
            .zip(&held)
            .map(|(finish, held)| match &finish.outcome {
                JobOutcome::Complete { entry } | JobOutcome::Fail { entry, .. } if *held => {
                    entry.as_ref()
                }
                _ => None,
            })
            .collect();
        let puts: Vec<&EntryPut> = entries.iter().flatten().copied().collect();
        let written = if puts.is_empty() {
            Vec::new()
        } else {
            entries_put_in(&mut tx, self.backend, &puts, self.compression.as_ref()).await?
        };
        let revision = last_written(&written).unwrap_or(0);
        let mut written = written.into_iter();
        let mut results = Vec::with_capacity(finishes.len());
        for (held, entry) in held.into_iter().zip(&entries) {
            if !held {
                results.push(Finish::LeaseLost);
                continue;
            }
            let put = match entry {
                Some(_) => Some(written.next().ok_or_else(|| {
                    StoreError::Corrupt("a batch of entries gave fewer results".to_owned())
                })?),
                None => None,
            };
            results.push(Finish::Recorded { put });
        }
        tx.commit().await?;
        self.announce(revision);
        Ok(results)
    }

    /// [`Self::job_finish_many_if_leased`] in one statement, with no
    /// transaction around it (one round trip instead of BEGIN, the jobs,
    /// the entries and COMMIT), for the usual batch on Postgres: every job
    /// completed or failed with an entry to write, none conditional. `None`
    /// when the batch is not such a batch, or when the worker no longer
    /// holds every lease (then the statement changed nothing, and the
    /// caller sorts the batch out job by job).
    async fn job_finish_at_once(
        &self,
        worker: &str,
        finishes: &[JobFinish],
        now: i64,
    ) -> Result<Option<Vec<Finish>>, StoreError> {
        #[derive(serde::Serialize)]
        struct Ended<'a> {
            id: u64,
            state: &'static str,
            error: Option<&'a str>,
        }
        if self.backend != Backend::Postgres || finishes.is_empty() {
            return Ok(None);
        }
        let mut ended = Vec::with_capacity(finishes.len());
        let mut puts = Vec::with_capacity(finishes.len());
        for finish in finishes {
            let (state, error, entry) = match &finish.outcome {
                JobOutcome::Complete { entry } => (JobState::Completed, None, entry),
                JobOutcome::Fail { error, entry } => {
                    (JobState::Failed, Some(error.as_str()), entry)
                }
                JobOutcome::RetryLater { .. } => return Ok(None),
            };
            let Some(entry) = entry else {
                return Ok(None);
            };
            ended.push(Ended {
                id: finish.id,
                state: state.as_str(),
                error,
            });
            puts.push(entry);
        }
        if !writes_alone(&puts) {
            return Ok(None);
        }
        let ending = Ending {
            jobs: serde_json::to_string(&ended).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            count: ended.len(),
            worker,
            now,
        };
        let mut taken = self.finishes.take(&self.pool, self.backend).await?;
        let mut counter = 0;
        let written = match entries_put_at(
            &mut taken.conn,
            self.backend,
            &puts,
            self.compression.as_ref(),
            Lock::TakenAfter(&ending),
            &mut counter,
        )
        .await
        {
            Ok(written) => {
                self.finishes.keep(taken, &self.pool);
                written
            }
            // A lease lost, or a rule the statement broke: nothing was
            // written; the careful way finds out which.
            Err(StoreError::Conflict(_)) => return Ok(None),
            Err(other) => return Err(other),
        };
        // The statement notified the servers' tails itself.
        self.announce_notified(counter);
        Ok(Some(
            written
                .into_iter()
                .map(|put| Finish::Recorded { put: Some(put) })
                .collect(),
        ))
    }

    /// Hands back every job `worker` holds, for another worker to take at once.
    pub async fn job_release(&self, worker: &str, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(sql!("job_release"))
            .bind(worker)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// The job `id`, if it exists.
    pub async fn job_get(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(sql!("job_get"))
            .bind(to_i64(id))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Makes sure job `id`'s row is on disk, before a caller is told of a
    /// job that has not ended: a waited Fetch's first look enqueues without
    /// waiting for the disk (see [`UNFLUSHED`]). Nothing to do on SQLite,
    /// whose enqueues all wait.
    pub async fn job_durable(&self, id: u64) -> Result<(), StoreError> {
        job_flush(&self.pool, self.backend, id).await
    }

    /// Up to `limit` jobs with an id below `before`, newest first, filtered
    /// by state and provider when given.
    pub async fn job_list(
        &self,
        state: Option<JobState>,
        provider: Option<&str>,
        before: u64,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(sql!("job_list"))
            .bind(state.map_or("", JobState::as_str))
            .bind(provider.unwrap_or(""))
            .bind(to_i64(before))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Cancels an unfinished job; returns the job as it now is.
    pub async fn job_cancel(&self, id: u64, now: i64) -> Result<Option<Job>, StoreError> {
        sqlx::query(&announcing_ends(self.backend, sql!("job_cancel")))
            .bind(to_i64(id))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        self.job_get(id).await
    }

    /// Makes a failed or cancelled job available again with fresh attempts.
    /// `Conflict` when another unfinished job for the same URL exists.
    pub async fn job_retry(&self, id: u64, now: i64) -> Result<Option<Job>, StoreError> {
        sqlx::query(sql!("job_retry"))
            .bind(to_i64(id))
            .bind(now)
            .execute(&self.pool)
            .await?;
        self.job_get(id).await
    }

    /// Stops every worker calling `provider` before `until` (ms since the
    /// epoch); an existing later pause stands.
    pub async fn provider_pause(&self, provider: &str, until: i64) -> Result<(), StoreError> {
        sqlx::query(sql!("provider_pause"))
            .bind(provider)
            .bind(until)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes completed jobs finished before `completed_before` and failed
    /// or cancelled ones finished before `failed_before`.
    pub async fn job_purge(
        &self,
        completed_before: i64,
        failed_before: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sql!("job_purge"))
            .bind(completed_before)
            .bind(failed_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

pub(crate) fn job_from_row(row: &AnyRow) -> Result<Job, StoreError> {
    let state: String = row.try_get("state")?;
    let small = |column: &str| -> Result<u32, StoreError> {
        Ok(u32::try_from(row.try_get::<i64, _>(column)?.max(0)).unwrap_or(u32::MAX))
    };
    Ok(Job {
        id: from_i64(row.try_get("id")?),
        provider: row.try_get("provider")?,
        url: row.try_get("url")?,
        policy: row.try_get("policy")?,
        tags: parse_tags(&row.try_get::<String, _>("tags")?)?,
        priority: small("priority")?,
        state: JobState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown job state {state:?}")))?,
        attempt: small("attempt")?,
        max_attempts: small("max_attempts")?,
        run_after: row.try_get("run_after")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        lease_holder: row.try_get("lease_holder")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        traceparent: row.try_get("traceparent")?,
        // Present only in claims' answers.
        stored_etag: row.try_get("stored_etag").ok().flatten(),
        stored_last_modified: row.try_get("stored_last_modified").ok().flatten(),
    })
}
