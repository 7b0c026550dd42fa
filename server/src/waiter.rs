//! Notifications around jobs. [`JobWaiter`] wakes `Fetch` calls that wait
//! for a job; [`WorkSignal`] wakes idle workers when jobs are enqueued.
//!
//! Waiting: On Postgres the server's one LISTEN connection hears each
//! finished job's id on [`roadie_store::JOB_CHANNEL`] (sent by the worker
//! in the transaction that finishes it), and [`JobWaiter::heard`] fans it
//! out in memory, with a slow poll as a fallback. On both backends a change
//! to the job's URL seen by the server's tail of the change log (the
//! worker's result, written in the transaction that finishes the job) wakes
//! the waiter too; that is how SQLite, which has no notifications, hears of
//! it within `watch.poll_interval`. On SQLite waiters also poll the job's row, a
//! primary-key read, for outcomes that write no entry.

use std::{sync::Arc, time::Duration};

use roadie_store::{Backend, Entry, Job, Store, StoreError, WORK_CHANNEL};
use tokio::{
    sync::{Notify, broadcast},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::fanout::Live;

/// Shared by every waiting call of one server.
#[derive(Debug, Clone)]
pub struct JobWaiter {
    finished: broadcast::Sender<u64>,
    poll: Duration,
}

impl JobWaiter {
    /// Waiters on `backend`: on Postgres they hear [`JobWaiter::heard`]
    /// (the server's listener calls it) and poll slowly; on SQLite they
    /// poll the job's row.
    pub fn new(backend: Backend) -> JobWaiter {
        let (finished, _) = broadcast::channel(1024);
        let poll = match backend {
            Backend::Sqlite => Duration::from_millis(20),
            Backend::Postgres => Duration::from_millis(500),
        };
        JobWaiter { finished, poll }
    }

    /// A notification on [`roadie_store::JOB_CHANNEL`]: the ids of a batch
    /// of finished jobs, comma-separated. An empty payload (a reconnect) wakes nobody:
    /// the polls cover it.
    pub fn heard(&self, payload: &str) {
        for id in payload.split(',').filter_map(|id| id.parse::<u64>().ok()) {
            let _ = self.finished.send(id);
        }
    }

    /// What a call that will wait hears: the finished jobs, and the
    /// server's feed (`changes`, subscribed to with it). Taken before the
    /// job is enqueued or shared, so nothing that happens to the job after
    /// the enqueue's answer slips by, and the wait can start from the job
    /// as the enqueue returned it instead of reading it back.
    pub fn subscribe(&self, changes: broadcast::Receiver<Arc<Live>>) -> Heard {
        Heard {
            finished: self.finished.subscribe(),
            changes,
        }
    }

    /// `job` (fetching `url`, as the enqueue answered) once it has
    /// finished, with `url`'s entry read after it ended, or the job as it
    /// stands at `until` (no entry); `None` if it is gone.
    pub async fn wait(
        &self,
        store: &Store,
        job: Job,
        url: &str,
        heard: Heard,
        until: Instant,
    ) -> Result<Option<Waited>, StoreError> {
        let Heard {
            mut finished,
            mut changes,
        } = heard;
        let id = job.id;
        let mut job = Some(job);
        loop {
            match job {
                Some(ref waiting) if !waiting.state.is_finished() && Instant::now() < until => {}
                Some(job) if job.state.is_finished() => {
                    let entry = store.entry_get(url).await?;
                    return Ok(Some(Waited { job, entry }));
                }
                job => return Ok(job.map(|job| Waited { job, entry: None })),
            }
            // Whether this job's end was announced: the job's own id, not a
            // missed batch of ids.
            let woken = async {
                loop {
                    match finished.recv().await {
                        Ok(done) if done == id => return true,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                        // Missed some: look at the row.
                        Err(broadcast::error::RecvError::Lagged(_)) => return false,
                    }
                }
            };
            let written = async {
                loop {
                    match changes.recv().await {
                        Ok(live) if live.change.key != url => continue,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                    }
                }
            };
            let announced = tokio::select! {
                announced = woken => announced,
                () = written => false,
                () = tokio::time::sleep(self.poll) => false,
                () = tokio::time::sleep_until(until) => false,
            };
            if announced {
                // The end has committed, its entry with it: the job and the
                // entry side by side, not one round trip after the other.
                let (ended, entry) = tokio::try_join!(store.job_get(id), store.entry_get(url))?;
                match ended {
                    Some(job) if job.state.is_finished() => {
                        return Ok(Some(Waited { job, entry }));
                    }
                    ended => job = ended,
                }
            } else {
                job = store.job_get(id).await?;
            }
        }
    }
}

/// A job a call waited for, and when it had finished, the entry it waited
/// for (read after the job ended).
#[derive(Debug)]
pub struct Waited {
    /// The job.
    pub job: Job,
    /// The entry of the job's URL; `None` when absent or when the job had
    /// not finished.
    pub entry: Option<Entry>,
}

/// The notifications one waiting call subscribed to, from
/// [`JobWaiter::subscribe`].
#[derive(Debug)]
pub struct Heard {
    finished: broadcast::Receiver<u64>,
    changes: broadcast::Receiver<Arc<Live>>,
}

/// Tells idle workers there is new background work: at most one NOTIFY per
/// [`WORK_DEBOUNCE`] however many jobs are enqueued, so a burst of
/// BACKGROUND fetches costs one notification, not one each. A job a caller
/// waits for is announced by the statement that enqueues it (the store's
/// `enqueue`): a serial caller's next job would otherwise always fall inside
/// the last one's window and wait out the rest of it.
#[derive(Debug, Default)]
pub struct WorkSignal {
    pending: Notify,
}

/// Shortest gap between two work notifications for background jobs.
pub const WORK_DEBOUNCE: Duration = Duration::from_millis(10);

impl WorkSignal {
    /// Notes that background jobs were enqueued.
    pub fn nudge(&self) {
        self.pending.notify_one();
    }

    /// Sends the notifications until `cancel` fires (Postgres only).
    pub async fn run(self: std::sync::Arc<Self>, store: Store, cancel: CancellationToken) {
        if store.backend() != Backend::Postgres {
            return;
        }
        let mut quiet_until = Instant::now();
        loop {
            let background = async {
                self.pending.notified().await;
                tokio::time::sleep_until(quiet_until).await;
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = background => {}
            }
            if let Err(error) = store.notify(WORK_CHANNEL, "").await {
                tracing::warn!(%error, "cannot notify workers; they will poll");
            }
            quiet_until = Instant::now() + WORK_DEBOUNCE;
        }
    }
}
