//! Batched enqueues: every job enqueue waiting at a moment goes into one
//! `INSERT` (`sql/job_insert.sql`), grouped as the entry writes are
//! ([`crate::commit::gather`], the same [`Batching`]). A burst of BACKGROUND
//! fetches (a `BatchFetch`, a `roadie warm`, many callers at once) costs one
//! statement per batch instead of one per job; a lone enqueue is a batch of
//! one and costs what it did.
//!
//! The batch's statement inserts what it can: a key with an unfinished job,
//! a key asked twice in one batch, or a condition (`seen`) that no longer
//! holds leaves that request to [`enqueue_one`], which shares the unfinished
//! job (raising its priority), answers `None`, or inserts after all. A batch
//! whose statement fails is retried request by request, so one bad request
//! fails alone.
//!
//! A waited Fetch's first look on Postgres enqueues its job without waiting
//! for the disk ([`crate::job::UNFLUSHED`]); a caller who shares such a job
//! is answered once it is on disk.
//!
//! On Postgres the statement that enqueues a job a caller waits for (or
//! raises a shared job to that priority) also tells idle workers
//! ([`WORK_CHANNEL`], delivered at its commit): a notification sent after the
//! answer, from another task and connection, reached the worker half a
//! millisecond later. Background jobs are announced by the server, at most
//! once per debounce window however many are enqueued.

use std::collections::HashMap;

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Backend, Entry, StoreError, WORK_CHANNEL,
    change::{from_i64, to_i64},
    commit::{Batching, gather},
    entry::entry_from_row,
    job::{Job, JobNew, JobState, UNFLUSHED, WAIT_PRIORITY, job_flush, job_from_row},
    sql::{MAX_PARAMS, sql, with_rows},
};

/// What an enqueue answers: the job and whether it was shared, or `None`
/// when the entry was written since the caller read it.
pub(crate) type Enqueued = Option<(Job, bool)>;

type Request = (
    JobNew,
    Option<u64>,
    oneshot::Sender<Result<Enqueued, StoreError>>,
);

/// The handle enqueuers send to; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Enqueuer {
    requests: mpsc::Sender<Request>,
}

/// Where the batches run.
struct Queue {
    pool: AnyPool,
    backend: Backend,
}

impl Queue {
    /// `template` with its `{announce}` marker filled in for this backend.
    fn announcing(&self, template: &str) -> String {
        template.replace("{announce}", &announce(self.backend))
    }
}

/// The extra column of `job_insert` and `job_raise_priority` that tells
/// idle workers of a job a caller waits for: `pg_notify` for such a row,
/// naming its provider (Postgres sends it when the statement commits; a
/// worker claims that provider's waited jobs first), nothing on SQLite,
/// whose workers watch `data_version`.
fn announce(backend: Backend) -> String {
    match backend {
        Backend::Postgres => format!(
            ", CASE WHEN priority = {WAIT_PRIORITY} \
             THEN pg_notify('{WORK_CHANNEL}', provider) IS NOT NULL END AS announced"
        ),
        Backend::Sqlite => String::new(),
    }
}

impl Enqueuer {
    /// Starts the task that runs the batches on `pool`.
    pub(crate) fn start(pool: AnyPool, backend: Backend, batching: Batching) -> Enqueuer {
        let batching = Batching {
            max_batch: batching.max_batch.max(1),
            ..batching
        };
        let (requests, mut waiting) = mpsc::channel(batching.max_batch * 4);
        let queue = Queue { pool, backend };
        tokio::spawn(async move {
            while let Some(batch) = gather(&mut waiting, batching).await {
                run(&queue, batch).await;
            }
        });
        Enqueuer { requests }
    }

    /// Enqueues `job` in the next batch (see [`crate::Store::job_enqueue_unless_written`]).
    pub(crate) async fn enqueue(
        &self,
        job: JobNew,
        seen: Option<u64>,
    ) -> Result<Enqueued, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((job, seen, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".to_owned()))?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("the store closed before the enqueue".to_owned())
        })?
    }
}

async fn run(queue: &Queue, batch: Vec<Request>) {
    // A lone request goes straight to `enqueue_one`, whose first step is
    // the same insert. A failed statement inserted nothing: every request
    // goes alone.
    let mut inserted: HashMap<String, Job> = if batch.len() > 1 {
        let wanted: Vec<(&JobNew, Option<u64>)> =
            batch.iter().map(|(job, seen, _)| (job, *seen)).collect();
        insert(queue, &wanted)
            .await
            .map(|jobs| jobs.into_iter().map(|job| (job.url.clone(), job)).collect())
            .unwrap_or_default()
    } else {
        HashMap::new()
    };
    for (job, seen, reply) in batch {
        let result = match inserted.remove(&job.url) {
            Some(new) => Ok(Some((new, false))),
            None => enqueue_one(queue, &job, seen).await,
        };
        // A caller that went away (a cancelled RPC) needs no answer.
        let _ = reply.send(result);
    }
}

/// `job`'s columns bound in the order `job_insert` (and
/// `postgres/entry_get_or_enqueue`) name them: provider, url, policy, tags
/// (`tags`, as JSON), priority, max_attempts, the clock, traceparent.
fn bind_job<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    job: &'q JobNew,
    tags: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(&job.provider)
        .bind(&job.url)
        .bind(&job.policy)
        .bind(tags)
        .bind(i64::from(job.priority))
        .bind(i64::from(job.max_attempts))
        .bind(job.now)
        .bind(job.traceparent.as_deref())
}

/// One `INSERT` per chunk of `requests`; the jobs it created.
async fn insert(
    queue: &Queue,
    requests: &[(&JobNew, Option<u64>)],
) -> Result<Vec<Job>, StoreError> {
    const WIDTH: usize = 9;
    let mut jobs = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(MAX_PARAMS / WIDTH) {
        let tags: Vec<String> = chunk
            .iter()
            .map(|(job, _)| serde_json::to_string(&job.tags))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let text = queue.announcing(&with_rows(
            queue.backend,
            sql!("job_insert"),
            chunk.len(),
            WIDTH,
        ));
        let mut query = sqlx::query(&text);
        for ((job, seen), tags) in chunk.iter().zip(&tags) {
            query = bind_job(query, job, tags).bind(seen.map(to_i64));
        }
        for row in query.fetch_all(&queue.pool).await? {
            jobs.push(job_from_row(&row)?);
        }
    }
    Ok(jobs)
}

/// Enqueues one job, or shares the unfinished job for its key (raising
/// that job's priority to the request's), or answers `None` when `seen` no
/// longer holds.
async fn enqueue_one(
    queue: &Queue,
    job: &JobNew,
    seen: Option<u64>,
) -> Result<Enqueued, StoreError> {
    // The unfinished job found by a conflicting insert may finish before
    // it is read; then the key is free again and the insert is retried.
    for _ in 0..5 {
        if let Some(new) = insert(queue, &[(job, seen)]).await?.pop() {
            return Ok(Some((new, false)));
        }
        let existing = sqlx::query(sql!("job_unfinished_by_key"))
            .bind(&job.url)
            .fetch_optional(&queue.pool)
            .await?;
        if let Some(row) = existing {
            let mut shared = job_from_row(&row)?;
            if shared.state == JobState::Available && shared.priority > job.priority {
                // A write that waits for the disk: the job is on disk after it.
                sqlx::query(&queue.announcing(sql!("job_raise_priority")))
                    .bind(to_i64(shared.id))
                    .bind(i64::from(job.priority))
                    .bind(job.now)
                    .fetch_optional(&queue.pool)
                    .await?;
                shared.priority = job.priority;
            } else if shared.priority == WAIT_PRIORITY {
                // Perhaps a waited Fetch's, enqueued without waiting for the
                // disk: on disk before this caller is told of it.
                job_flush(&queue.pool, queue.backend, shared.id).await?;
            }
            return Ok(Some((shared, true)));
        }
        if let Some(seen) = seen {
            let meta = sqlx::query(sql!("entry_meta"))
                .bind(&job.url)
                .fetch_optional(&queue.pool)
                .await?;
            let at: i64 = meta
                .map(|m| m.try_get("revision"))
                .transpose()?
                .unwrap_or(0);
            if at != to_i64(seen) {
                return Ok(None);
            }
        }
    }
    Err(StoreError::Conflict(format!(
        "could not enqueue or share a job for {}",
        job.url
    )))
}

/// What a waited Fetch's first look found or did
/// ([`crate::Store::entry_get_or_enqueue`]).
#[derive(Debug)]
pub enum FirstLook {
    /// The entry stored for the key.
    Entry(Entry),
    /// No entry was stored, and this new job now fetches it. It was
    /// committed without waiting for the disk: tell no one of it before it
    /// ends or [`crate::Store::job_durable`] answers.
    Enqueued(Job),
    /// No entry was stored, and nothing was enqueued: an unfinished job
    /// holds the key (share it through [`crate::Store::job_enqueue_unless_written`]),
    /// or the backend enqueues only that way (SQLite).
    Absent,
}

impl crate::Store {
    /// The entry at `job.url`, or when there is none, `job` enqueued (a
    /// new job, unless an unfinished one holds the key), announced to idle
    /// workers as a job a caller waits for: on Postgres one statement
    /// (`sql/postgres/entry_get_or_enqueue.sql`), where a miss's read and
    /// enqueue would be two round trips one after the other, committed
    /// without waiting for the disk (see [`FirstLook::Enqueued`]). SQLite only
    /// reads (its round trips stay inside the process). Only for a caller
    /// who may enqueue, and whose provider's address is already known to
    /// be allowed: nothing is checked between the read and the enqueue.
    #[tracing::instrument(target = "roadie_store::db", name = "db entry_get_or_enqueue", skip_all, fields(otel.kind = "client", db.system.name = self.backend.system_name(), db.operation.name = "entry_get_or_enqueue"))]
    pub async fn entry_get_or_enqueue(&self, job: &JobNew) -> Result<FirstLook, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(match self.entry_get(&job.url).await? {
                Some(entry) => FirstLook::Entry(entry),
                None => FirstLook::Absent,
            });
        }
        static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            sql!("postgres/entry_get_or_enqueue")
                .replace("{found}", &sql!("entry_get").replace("$1", "$2"))
                .replace("{announce}", &announce(Backend::Postgres))
                .replace("{unflushed}", UNFLUSHED)
        });
        let tags =
            serde_json::to_string(&job.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let row = bind_job(sqlx::query(&TEXT), job, &tags)
            .fetch_one(&self.pool)
            .await?;
        if row.try_get::<Option<String>, _>("key")?.is_some() {
            return Ok(FirstLook::Entry(entry_from_row(&row)?));
        }
        Ok(match row.try_get::<Option<i64>, _>("job_id")? {
            Some(id) => FirstLook::Enqueued(job.inserted(from_i64(id))),
            None => FirstLook::Absent,
        })
    }
}
