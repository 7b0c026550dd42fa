//! Notifications around jobs. [`JobWaiter`] wakes `Fetch` calls that wait
//! for a job; [`WorkSignal`] wakes idle workers when jobs are enqueued.
//!
//! Waiting: On Postgres one LISTEN per
//! server process hears each finished job's id (sent by the worker in the
//! transaction that finishes it) and fans it out in memory, with a slow poll
//! as a fallback. On both backends a change to the job's URL seen by the
//! server's tail of the change log (the worker's result, written in the
//! transaction that finishes the job) wakes the waiter too; that is how
//! SQLite, which has no notifications, hears of it within
//! `watch.poll_interval`. On SQLite waiters also poll the job's row, a
//! primary-key read, for outcomes that write no entry.

use std::{sync::Arc, time::Duration};

use roadie_store::{Backend, JOB_CHANNEL, Job, Store, StoreError, WORK_CHANNEL};
use tokio::{
    sync::{Notify, broadcast},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::fanout::Live;

/// Shared by every waiting call of one server.
#[derive(Debug)]
pub struct JobWaiter {
    finished: broadcast::Sender<u64>,
    poll: Duration,
}

impl JobWaiter {
    /// Starts listening (on Postgres) until `cancel` fires.
    pub fn start(store: &Store, cancel: CancellationToken) -> JobWaiter {
        let (finished, _) = broadcast::channel(1024);
        let poll = match store.backend() {
            Backend::Sqlite => Duration::from_millis(20),
            Backend::Postgres => {
                let (store, sender) = (store.clone(), finished.clone());
                tokio::spawn(async move {
                    store
                        .listen(JOB_CHANNEL, cancel, |payload| {
                            // The ids of a batch of finished jobs, comma-separated;
                            // an empty payload (a reconnect) wakes nobody: the polls cover it.
                            for id in payload.split(',').filter_map(|id| id.parse::<u64>().ok()) {
                                let _ = sender.send(id);
                            }
                        })
                        .await;
                });
                Duration::from_millis(500)
            }
        };
        JobWaiter { finished, poll }
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
    /// finished, or as it stands at `until`; `None` if it is gone.
    pub async fn wait(
        &self,
        store: &Store,
        job: Job,
        url: &str,
        heard: Heard,
        until: Instant,
    ) -> Result<Option<Job>, StoreError> {
        let Heard {
            mut finished,
            mut changes,
        } = heard;
        let id = job.id;
        let mut job = Some(job);
        loop {
            match &job {
                Some(job) if !job.state.is_finished() && Instant::now() < until => {}
                _ => return Ok(job),
            }
            let woken = async {
                loop {
                    match finished.recv().await {
                        Ok(done) if done != id => continue,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                        // Ours, or missed some: look at the row.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return,
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
            tokio::select! {
                () = woken => {}
                () = written => {}
                () = tokio::time::sleep(self.poll) => {}
                () = tokio::time::sleep_until(until) => {}
            }
            job = store.job_get(id).await?;
        }
    }
}

/// The notifications one waiting call subscribed to, from
/// [`JobWaiter::subscribe`].
#[derive(Debug)]
pub struct Heard {
    finished: broadcast::Receiver<u64>,
    changes: broadcast::Receiver<Arc<Live>>,
}

/// Tells idle workers there is new work. Background work: at most one
/// NOTIFY per [`WORK_DEBOUNCE`] however many jobs are enqueued, so a burst of
/// BACKGROUND fetches costs one notification, not one each. A job a caller
/// waits for goes at once: a serial caller's next job would otherwise always
/// fall inside the last one's window and wait out the rest of it (a Fetch
/// (wait) took the debounce's 10 ms and 1.5 ms of work).
#[derive(Debug, Default)]
pub struct WorkSignal {
    pending: Notify,
    urgent: Notify,
}

/// Shortest gap between two work notifications for background jobs.
pub const WORK_DEBOUNCE: Duration = Duration::from_millis(10);

impl WorkSignal {
    /// Notes that jobs were enqueued; `waited` when a caller waits for one.
    pub fn nudge(&self, waited: bool) {
        if waited {
            self.urgent.notify_one();
        } else {
            self.pending.notify_one();
        }
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
                () = self.urgent.notified() => {}
                () = background => {}
            }
            if let Err(error) = store.notify(WORK_CHANNEL, "").await {
                tracing::warn!(%error, "cannot notify workers; they will poll");
            }
            quiet_until = Instant::now() + WORK_DEBOUNCE;
        }
    }
}
