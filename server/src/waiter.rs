//! Wakes `Fetch` calls that wait for a job. On Postgres one LISTEN per
//! server process hears each finished job's id (sent by the worker in the
//! transaction that finishes it) and fans it out in memory, with a slow poll
//! as a fallback; on SQLite, which has no notifications, waiters poll the
//! job's row, a primary-key read.

use std::time::Duration;

use roadie_store::{Backend, JOB_CHANNEL, Job, Store, StoreError};
use sqlx::postgres::PgListener;
use tokio::{sync::broadcast, time::Instant};
use tokio_util::sync::CancellationToken;

/// Shared by every waiting call of one server.
#[derive(Debug)]
pub struct JobWaiter {
    finished: broadcast::Sender<u64>,
    poll: Duration,
}

impl JobWaiter {
    /// Starts listening (on Postgres) until `cancel` fires.
    pub fn start(store: &Store, url: &str, cancel: CancellationToken) -> JobWaiter {
        let (finished, _) = broadcast::channel(1024);
        let poll = match store.backend() {
            Backend::Sqlite => Duration::from_millis(20),
            Backend::Postgres => {
                tokio::spawn(listen(url.to_owned(), finished.clone(), cancel));
                Duration::from_millis(500)
            }
        };
        JobWaiter { finished, poll }
    }

    /// Job `id` once it has finished, or as it stands at `until`.
    pub async fn wait(
        &self,
        store: &Store,
        id: u64,
        until: Instant,
    ) -> Result<Option<Job>, StoreError> {
        let mut finished = self.finished.subscribe();
        loop {
            let job = store.job_get(id).await?;
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
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(self.poll) => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

async fn listen(url: String, finished: broadcast::Sender<u64>, cancel: CancellationToken) {
    loop {
        match PgListener::connect(&url).await {
            Ok(mut listener) => match listener.listen(JOB_CHANNEL).await {
                Ok(()) => loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        notification = listener.recv() => match notification {
                            Ok(n) => {
                                if let Ok(id) = n.payload().parse::<u64>() {
                                    let _ = finished.send(id);
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, "job notifications lost; reconnecting");
                                break;
                            }
                        }
                    }
                },
                Err(error) => tracing::warn!(%error, "cannot LISTEN for jobs; waiters poll"),
            },
            Err(error) => tracing::warn!(%error, "cannot connect to LISTEN for jobs; waiters poll"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
