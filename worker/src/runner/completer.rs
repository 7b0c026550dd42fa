//! The completer: finished attempts are written in batches, every one that
//! arrived while the last batch was committing in one transaction, so
//! writers wait their turn at the revision counter once per batch. Grouped
//! by the store's one rule and settings (`store.write_batch`,
//! `store.write_wait`), as the store's own writes are. An attempt's slot is
//! free once its result is handed over here (as River's completer frees
//! its workers), not when it commits: a job waiting for its batch holds no
//! upstream connection, and its row stays leased to this worker until then,
//! so no one claims it twice. The queue is bounded (the slots' count):
//! when it is full, a finished attempt waits in its slot.

use roadie_store::{Finish, JobFinish, gather, now_ms};
use tokio::sync::mpsc;

use super::Worker;

impl Worker {
    /// Writes finished attempts, as many at a time as have arrived (up to
    /// `store.write_batch`) in one transaction, until every sender is gone.
    pub(super) async fn complete(self, mut to_finish: mpsc::Receiver<JobFinish>) {
        let batching = self.store.batching();
        while let Some(finishes) = gather(&mut to_finish, batching).await {
            let result = self
                .store
                .job_finish_many_if_leased(&self.options.id, &finishes, now_ms())
                .await;
            match result {
                Ok(results) => {
                    for (finish, result) in finishes.iter().zip(&results) {
                        match result {
                            Finish::LeaseLost => tracing::warn!(
                                job = finish.id,
                                "lease lost before finishing: result dropped"
                            ),
                            Finish::Recorded { .. } => {
                                tracing::debug!(job = finish.id, "job finished")
                            }
                        }
                    }
                    let committed = results.len() as u64;
                    self.finishes.send_modify(|finishes| *finishes += committed);
                }
                Err(error) => tracing::warn!(
                    jobs = ?finishes.iter().map(|finish| finish.id).collect::<Vec<_>>(),
                    %error,
                    "could not finish these jobs; their leases will expire"
                ),
            }
        }
    }
}
