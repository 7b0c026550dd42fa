//! The completer: finished attempts are written in batches, every one that
//! arrived while the last batch was committing in one transaction, so
//! writers wait their turn at the revision counter once per batch.

use roadie_store::{JobFinish, now_ms};
use tokio::sync::{mpsc, oneshot};

use super::Worker;

/// Most attempts written in one finishing transaction.
const FINISH_BATCH: usize = 64;

/// An attempt handed to the completer, with where to say how it went.
pub(super) struct Done {
    pub(super) finish: JobFinish,
    pub(super) reply: oneshot::Sender<Result<roadie_store::Finish, String>>,
}

impl Worker {
    /// Writes finished attempts, as many at a time as have arrived (up to
    /// [`FINISH_BATCH`]) in one transaction, until every sender is gone.
    pub(super) async fn complete(self, mut to_finish: mpsc::Receiver<Done>) {
        let mut batch = Vec::with_capacity(FINISH_BATCH);
        while to_finish.recv_many(&mut batch, FINISH_BATCH).await > 0 {
            let (finishes, replies): (Vec<JobFinish>, Vec<_>) = batch
                .drain(..)
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
