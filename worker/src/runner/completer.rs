//! The completer: finished attempts are written in batches, every one that
//! arrived while the last batch was committing in one transaction, so
//! writers wait their turn at the revision counter once per batch. Grouped
//! by the store's one rule and settings (`store.write_batch`,
//! `store.write_wait`), as the store's own writes are.

use roadie_store::{JobFinish, gather, now_ms};
use tokio::sync::{mpsc, oneshot};

use super::Worker;

/// An attempt handed to the completer, with where to say how it went.
pub(super) struct Done {
    pub(super) finish: JobFinish,
    pub(super) reply: oneshot::Sender<Result<roadie_store::Finish, String>>,
}

impl Worker {
    /// Writes finished attempts, as many at a time as have arrived (up to
    /// `store.write_batch`) in one transaction, until every sender is gone.
    pub(super) async fn complete(self, mut to_finish: mpsc::Receiver<Done>) {
        let batching = self.store.batching();
        while let Some(batch) = gather(&mut to_finish, batching).await {
            let (finishes, replies): (Vec<JobFinish>, Vec<_>) = batch
                .into_iter()
                .map(|done| (done.finish, done.reply))
                .unzip();
            let result = self
                .store
                .job_finish_many_if_leased(&self.options.id, &finishes, now_ms())
                .await;
            match result {
                Ok(results) => {
                    let committed = results.len() as u64;
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                    self.finishes.send_modify(|finishes| *finishes += committed);
                }
                Err(error) => {
                    let error = error.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}
