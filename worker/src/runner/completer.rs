//! The completer: finished attempts are written in batches, every one that
//! arrived while the last batch was committing in one transaction, so
//! writers wait their turn at the revision counter once per batch.

use roadie_store::{EntryPut, JobFinish, JobOutcome, now_ms};
use tokio::sync::{mpsc, oneshot};

use super::{Worker, decide::Decision};

/// Most attempts written in one finishing transaction.
const FINISH_BATCH: usize = 64;

/// An attempt handed to the completer, with where to say how it went.
pub(super) struct Done {
    pub(super) id: u64,
    pub(super) decision: Decision,
    pub(super) entry: Option<EntryPut>,
    pub(super) reply: oneshot::Sender<Result<roadie_store::Finish, String>>,
}

impl Done {
    fn finish(&self) -> JobFinish<'_> {
        let outcome = match &self.decision {
            Decision::Complete => JobOutcome::Complete {
                entry: self.entry.as_ref(),
            },
            Decision::Retry { error, at } => JobOutcome::RetryLater {
                error: error.clone(),
                run_after: *at,
                counts: true,
            },
            Decision::PushedBack { error, at, .. } => JobOutcome::RetryLater {
                error: error.clone(),
                run_after: *at,
                counts: false,
            },
            Decision::Fail { error } => JobOutcome::Fail {
                error: error.clone(),
                entry: self.entry.as_ref(),
            },
        };
        JobFinish {
            id: self.id,
            outcome,
        }
    }
}

impl Worker {
    /// Writes finished attempts, as many at a time as have arrived (up to
    /// [`FINISH_BATCH`]) in one transaction, until every sender is gone.
    pub(super) async fn complete(self, mut to_finish: mpsc::Receiver<Done>) {
        let mut batch = Vec::with_capacity(FINISH_BATCH);
        while to_finish.recv_many(&mut batch, FINISH_BATCH).await > 0 {
            let finishes: Vec<JobFinish<'_>> = batch.iter().map(Done::finish).collect();
            let result = self
                .store
                .job_finish_many_if_leased(&self.options.id, &finishes, now_ms())
                .await;
            drop(finishes);
            match result {
                Ok(results) => {
                    for (done, result) in batch.drain(..).zip(results) {
                        let _ = done.reply.send(Ok(result));
                    }
                }
                Err(error) => {
                    let error = error.to_string();
                    for done in batch.drain(..) {
                        let _ = done.reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}
