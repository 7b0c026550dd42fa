//! Group commit for the store's entry writes: Puts, Deletes and
//! invalidations (Invalidate, library events, the expiry clean-up).
//!
//! Every such write of a process goes to one committer task, which takes
//! every write waiting at that moment (up to [`Batching::max_batch`],
//! waiting at most [`Batching::max_wait`] for company) and runs them in one
//! transaction: the revision lock taken once, the writes in arrival order
//! (each sees the ones before it, so `if_revision`, keep-higher-confidence
//! and two writes to one key keep their meaning; a run of Puts is written
//! together by `entries_put_at`), one revision per change that lands, the
//! counter set once, one commit. Each caller is answered after that
//! commit, never before. Revisions stay gapless and in commit order, so
//! Watch and the hot tier see nothing new.
//!
//! A write that fails inside a batch (a statement error) fails nothing
//! else: the batch is rolled back and each write is run again on its own.
//! A commit that fails fails every write of its batch, whose outcome the
//! store did not confirm.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{Any, AnyPool, Connection, pool::PoolConnection};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::{
    Backend, Compression, DeleteResult, StoreError,
    change::{Committed, announce, revision_lock, revision_set},
    entry::{
        Delete, EntryPut, Invalidation, Lock, PutResult, entries_invalidate_at, entries_put_at,
        entry_delete_at, last_written, writes_alone,
    },
    kept::Kept,
};

/// How the store's writes are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// The most writes one transaction takes.
    pub max_batch: usize,
    /// How long the committer waits for more writes when fewer than
    /// `max_batch` are waiting; zero takes what is there and costs a lone
    /// writer nothing.
    pub max_wait: Duration,
}

impl Default for Batching {
    fn default() -> Batching {
        Batching {
            max_batch: 256,
            max_wait: Duration::ZERO,
        }
    }
}

/// One write the committer takes.
#[derive(Debug)]
enum Write {
    Put(Box<EntryPut>),
    Delete(Delete),
    Invalidate(Invalidation),
}

/// What a write did, answered after its commit.
#[derive(Debug)]
enum Outcome {
    Put(PutResult),
    Delete(DeleteResult),
    /// The count each selector removed, and the last revision (0: none).
    Invalidate(Vec<u64>, u64),
}

impl Outcome {
    /// The last revision this write took, if it took any.
    fn revision(&self) -> Option<u64> {
        match self {
            Outcome::Put(result) => last_written(std::slice::from_ref(result)),
            Outcome::Delete(DeleteResult::Deleted { revision }) => Some(*revision),
            Outcome::Invalidate(_, last) if *last > 0 => Some(*last),
            _ => None,
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

/// The handle writers send to; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Committer {
    writes: mpsc::Sender<(Write, Reply)>,
    counts: Arc<Counts>,
    own: broadcast::Sender<Arc<Committed>>,
}

/// Batches run, the writes they carried, and the batches split after a
/// failed statement, since the store opened.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    batches: AtomicU64,
    writes: AtomicU64,
    split: AtomicU64,
    replans: AtomicU64,
}

/// What the group commit has done since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteBatches {
    /// Transactions run.
    pub batches: u64,
    /// Writes they carried: `writes / batches` is the mean batch.
    pub writes: u64,
    /// Batches a failed statement split into writes of one, each retried
    /// alone (a bad write among good ones, or a transaction Postgres
    /// chose to fail to break a deadlock).
    pub split: u64,
    /// Times the committer's connection threw its plans away (Postgres:
    /// a fresh connection's first batch, then at most once per `REPLAN`).
    pub replans: u64,
}

/// What the committer task needs of the store (not the store itself, whose
/// handle holds the sender: the task ends when the last handle goes).
struct Target {
    pub pool: AnyPool,
    pub backend: Backend,
    pub counts: Arc<Counts>,
    pub compression: Option<Compression>,
    pub committed: Arc<watch::Sender<u64>>,
    pub own: broadcast::Sender<Arc<Committed>>,
}

impl Committer {
    /// Starts the committer: on Postgres a task of the current runtime; on
    /// SQLite a thread of its own (see [`on_its_own_thread`]).
    pub(crate) fn start(
        pool: AnyPool,
        backend: Backend,
        compression: Option<Compression>,
        committed: Arc<watch::Sender<u64>>,
        batching: Batching,
    ) -> Result<Committer, StoreError> {
        let max_batch = batching.max_batch.max(1);
        let (writes, queue) = mpsc::channel(max_batch * 4);
        let counts = Arc::new(Counts::default());
        let (own, _) = broadcast::channel(OWN_COMMITS);
        let target = Target {
            pool,
            backend,
            counts: counts.clone(),
            compression,
            committed,
            own: own.clone(),
        };
        let committing = run(
            queue,
            target,
            Batching {
                max_batch,
                ..batching
            },
        );
        match backend {
            Backend::Postgres => drop(tokio::spawn(committing)),
            Backend::Sqlite => on_its_own_thread(committing).map_err(|error| {
                StoreError::Unavailable(format!("cannot start the committer's thread: {error}"))
            })?,
        }
        Ok(Committer {
            writes,
            counts,
            own,
        })
    }

    /// What the group commit has done since the store opened.
    pub(crate) fn counts(&self) -> WriteBatches {
        WriteBatches {
            batches: self.counts.batches.load(Ordering::Relaxed),
            writes: self.counts.writes.load(Ordering::Relaxed),
            split: self.counts.split.load(Ordering::Relaxed),
            replans: self.counts.replans.load(Ordering::Relaxed),
        }
    }

    /// The batches of Puts committed from now on ([`Committed`]).
    pub(crate) fn own_commits(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.own.subscribe()
    }

    /// Writes `put` in the next batch; answers after its commit.
    pub(crate) async fn put(&self, put: EntryPut) -> Result<PutResult, StoreError> {
        match self.write(Write::Put(Box::new(put))).await? {
            Outcome::Put(result) => Ok(result),
            other => Err(mismatched(&other)),
        }
    }

    /// Runs `delete` in the next batch; answers after its commit.
    pub(crate) async fn delete(&self, delete: Delete) -> Result<DeleteResult, StoreError> {
        match self.write(Write::Delete(delete)).await? {
            Outcome::Delete(result) => Ok(result),
            other => Err(mismatched(&other)),
        }
    }

    /// Runs `invalidation` in the next batch; answers after its commit.
    pub(crate) async fn invalidate(
        &self,
        invalidation: Invalidation,
    ) -> Result<(Vec<u64>, u64), StoreError> {
        match self.write(Write::Invalidate(invalidation)).await? {
            Outcome::Invalidate(counts, last) => Ok((counts, last)),
            other => Err(mismatched(&other)),
        }
    }

    async fn write(&self, write: Write) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send((write, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".to_owned()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store closed before the commit".to_owned()))?
    }
}

/// Runs `committing` on a thread of its own, with a runtime of its own.
/// SQLite's committer crosses to the connection's thread and back for each
/// statement of a batch (BEGIN, the revision lock, the write, COMMIT; once
/// for a batch that [`write_alone`] writes); on the server's runtime each
/// return waited its turn behind the calls' tasks, between two statements
/// of the one batch every writer waits for. Put of new keys on SQLite:
/// 1.07x side by side (BENCHMARKS). Postgres's
/// committer stays on the runtime whose I/O driver its connections use.
fn on_its_own_thread(
    committing: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("roadie-committer".to_owned())
        .spawn(move || runtime.block_on(committing))?;
    Ok(())
}

/// A write answered with another write's outcome: a defect of this file.
fn mismatched(outcome: &Outcome) -> StoreError {
    StoreError::Corrupt(format!("a write was answered with {outcome:?}"))
}

async fn run(mut queue: mpsc::Receiver<(Write, Reply)>, target: Target, batching: Batching) {
    // The committer keeps its connection from one batch to the next while
    // writes keep coming: no pool checkout per batch. A batch that fails
    // gives it back to the pool, which closes it if its transaction did not
    // end cleanly; the next takes a fresh one.
    // Closing the pool waits for every connection to come back: the held
    // one goes back then, and the committer stops.
    let kept = Kept::default();
    let closed = target.pool.close_event();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            batch = gather(&mut queue, batching) => match batch {
                Some(batch) => commit(&target, &kept, batch).await,
                None => return,
            },
            () = &mut closed => return,
        }
    }
}

/// The next batch from `queue`: the first request to arrive, every one
/// waiting behind it (up to `max_batch`), and those arriving within
/// `max_wait` while the batch is not full; `None` once every sender is gone.
/// The one rule of grouping for every batched writer of the store.
pub async fn gather<T>(queue: &mut mpsc::Receiver<T>, batching: Batching) -> Option<Vec<T>> {
    let first = queue.recv().await?;
    let mut batch = vec![first];
    while batch.len() < batching.max_batch {
        match queue.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
    if batch.len() < batching.max_batch && !batching.max_wait.is_zero() {
        let deadline = tokio::time::Instant::now() + batching.max_wait;
        while batch.len() < batching.max_batch {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(request)) => batch.push(request),
                Ok(None) | Err(_) => break,
            }
        }
    }
    Some(batch)
}

/// Where a batch's transaction failed.
enum Failure {
    /// Before the commit: nothing was written; the writes may be retried.
    Statement(StoreError),
    /// At the commit: the outcome is unknown; nothing may be retried.
    Commit(StoreError),
}

async fn commit(target: &Target, kept: &Kept, batch: Vec<(Write, Reply)>) {
    target.counts.batches.fetch_add(1, Ordering::Relaxed);
    target
        .counts
        .writes
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let (writes, replies): (Vec<Write>, Vec<Reply>) = batch.into_iter().unzip();
    let began = Instant::now();
    match write_all(target, kept, &writes).await {
        Ok(outcomes) => {
            // This server's tail takes the batch before it hears of it.
            hand_over(target, &writes, &outcomes, began);
            announce_all(target, &outcomes);
            answer(replies, outcomes.into_iter().map(Ok));
        }
        Err(Failure::Commit(error)) => {
            answer(replies, writes.iter().map(|_| Err(unconfirmed(&error))));
        }
        Err(Failure::Statement(error)) if writes.len() == 1 => answer(replies, [Err(error)]),
        Err(Failure::Statement(_)) => {
            // One bad write must not fail its neighbours: each alone.
            target.counts.split.fetch_add(1, Ordering::Relaxed);
            for (write, reply) in writes.iter().zip(replies) {
                let result = match write_all(target, kept, std::slice::from_ref(write)).await {
                    Ok(mut outcomes) => {
                        announce_all(target, &outcomes);
                        outcomes.pop().ok_or_else(|| {
                            StoreError::Corrupt("a write of one gave no outcome".to_owned())
                        })
                    }
                    Err(Failure::Statement(error)) => Err(error),
                    Err(Failure::Commit(error)) => Err(unconfirmed(&error)),
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// Announces the last revision `outcomes` of one committed transaction took.
fn announce_all(target: &Target, outcomes: &[Outcome]) {
    if let Some(last) = outcomes.iter().filter_map(Outcome::revision).max() {
        announce(&target.committed, last);
    }
}

/// Batches of Puts a tail that falls behind may miss before it reads the
/// log instead. The channel keeps this many batches' change rows until
/// newer ones replace them: at most 16 × `store.write_batch` keys and tags.
const OWN_COMMITS: usize = 16;

/// Hands the changes a committed batch of Puts wrote to this process's tail
/// of the log ([`Committed`]), built from the writes as they were sent: one
/// read of the log less per batch. A batch with anything else (a Delete's
/// change row names what the row held; an invalidation's, the rows it
/// matched) is left to the log.
fn hand_over(target: &Target, writes: &[Write], outcomes: &[Outcome], began: Instant) {
    if target.own.receiver_count() == 0 {
        return;
    }
    let mut changes = Vec::with_capacity(writes.len());
    for (write, outcome) in writes.iter().zip(outcomes) {
        match (write, outcome) {
            (Write::Put(put), Outcome::Put(PutResult::Written { revision, .. })) => {
                changes.push(put.change(*revision));
            }
            (Write::Put(_), Outcome::Put(_)) => {}
            _ => return,
        }
    }
    if !changes.is_empty() {
        // No receiver left meanwhile is fine: nobody tails the log.
        let _ = target.own.send(Arc::new(Committed { changes, began }));
    }
}

/// The error each write of a batch whose commit failed is answered with:
/// a full store stays "full" (nothing was written), anything else says the
/// store could not confirm the write.
fn unconfirmed(error: &StoreError) -> StoreError {
    match error {
        StoreError::Full(message) => StoreError::Full(message.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn answer(replies: Vec<Reply>, outcomes: impl IntoIterator<Item = Result<Outcome, StoreError>>) {
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A caller that went away (a cancelled RPC) needs no answer.
        let _ = reply.send(outcome);
    }
}

/// One transaction for `writes`, in order, on the kept connection (or a
/// fresh one: see `kept`); commits when any changed the store. The
/// connection is kept again only when the transaction ended cleanly.
async fn write_all(
    target: &Target,
    kept: &Kept,
    writes: &[Write],
) -> Result<Vec<Outcome>, Failure> {
    let mut taken = kept
        .take(&target.pool, target.backend)
        .await
        .map_err(Failure::Statement)?;
    if taken.replanned {
        target.counts.replans.fetch_add(1, Ordering::Relaxed);
    }
    let outcomes = write_on(target, &mut taken.conn, writes).await?;
    kept.keep(taken, &target.pool);
    Ok(outcomes)
}

async fn write_on(
    target: &Target,
    conn: &mut PoolConnection<Any>,
    writes: &[Write],
) -> Result<Vec<Outcome>, Failure> {
    let statement = |e: StoreError| Failure::Statement(e);
    if let Some(puts) = alone(writes) {
        return write_alone(target, conn, &puts).await;
    }
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| Failure::Statement(e.into()))?;
    let start = revision_lock(&mut tx).await.map_err(statement)?;
    let mut base = start;
    // What the counter holds in this transaction: a run of Puts on
    // Postgres moves it itself.
    let mut counter = start;
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut rest = writes;
    while let Some((write, after)) = rest.split_first() {
        let done = match write {
            Write::Put(_) => {
                // A run of Puts goes as one statement of each kind.
                let run: Vec<&EntryPut> = rest
                    .iter()
                    .map_while(|w| match w {
                        Write::Put(put) => Some(&**put),
                        _ => None,
                    })
                    .collect();
                rest = &rest[run.len()..];
                entries_put_at(
                    &mut tx,
                    target.backend,
                    &run,
                    target.compression.as_ref(),
                    Lock::Held(base),
                    &mut counter,
                )
                .await
                .map_err(statement)?
                .into_iter()
                .map(Outcome::Put)
                .collect()
            }
            Write::Delete(delete) => {
                rest = after;
                let result = entry_delete_at(&mut tx, target.backend, delete, base)
                    .await
                    .map_err(statement)?;
                vec![Outcome::Delete(result)]
            }
            Write::Invalidate(invalidation) => {
                rest = after;
                let counts = entries_invalidate_at(&mut tx, target.backend, invalidation, base)
                    .await
                    .map_err(statement)?;
                let removed: u64 = counts.iter().sum();
                let last = if removed > 0 { base + removed } else { 0 };
                vec![Outcome::Invalidate(counts, last)]
            }
        };
        if let Some(last) = done.iter().filter_map(Outcome::revision).max() {
            base = last;
        }
        outcomes.extend(done);
    }
    if base > start {
        if base > counter {
            revision_set(&mut tx, base).await.map_err(statement)?;
        }
        tx.commit().await.map_err(|e| Failure::Commit(e.into()))?;
    } else {
        // Nothing landed. Rolled back now, not when the transaction drops:
        // a dropped transaction's ROLLBACK waits for the connection's next
        // use, and the held connection would keep the revision lock (every
        // other writer of the database) until this process writes again.
        tx.rollback()
            .await
            .map_err(|e| Failure::Statement(e.into()))?;
    }
    Ok(outcomes)
}

/// The Puts of `writes` when the batch is only Puts that [`writes_alone`]
/// allows to go in one round trip without a transaction around it.
fn alone(writes: &[Write]) -> Option<Vec<&EntryPut>> {
    let puts: Vec<&EntryPut> = writes
        .iter()
        .map(|write| match write {
            Write::Put(put) => Some(&**put),
            _ => None,
        })
        .collect::<Option<_>>()?;
    writes_alone(&puts).then_some(puts)
}

/// A batch of unconditional Puts in one round trip that takes the revision
/// lock, writes, moves the counter and commits, instead of four (BEGIN, the
/// lock, the write, COMMIT): on Postgres one statement, its own
/// transaction; on SQLite one query from BEGIN IMMEDIATE to COMMIT. An
/// error the database answered means it rolled the write back: the writes
/// may be retried. Any other (the connection lost on the way, a result that
/// does not read back) leaves the outcome unknown.
async fn write_alone(
    target: &Target,
    conn: &mut PoolConnection<Any>,
    puts: &[&EntryPut],
) -> Result<Vec<Outcome>, Failure> {
    let mut counter = 0;
    let written = entries_put_at(
        conn,
        target.backend,
        puts,
        target.compression.as_ref(),
        Lock::Taken,
        &mut counter,
    )
    .await;
    if written.is_err() && target.backend == Backend::Sqlite {
        // A statement that failed stopped the query short of its COMMIT,
        // inside a transaction the driver does not know of: the connection
        // is closed, which rolls it back, never used again.
        conn.close_on_drop();
    }
    let results = written.map_err(|error| match error {
        StoreError::Database(_) | StoreError::Full(_) | StoreError::Conflict(_) => {
            Failure::Statement(error)
        }
        other => Failure::Commit(other),
    })?;
    Ok(results.into_iter().map(Outcome::Put).collect())
}
