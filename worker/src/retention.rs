//! Deletes finished jobs once their retention ends: completed jobs after
//! `jobs.keep_completed`, failed and cancelled ones after `jobs.keep_failed`.
//!
//! Every worker process runs one. The purge is a single idempotent DELETE,
//! so several workers purging the same store only repeat each other's work,
//! and a deployment keeps purging as long as any worker runs.

use std::time::Duration;

use roadie_store::{Store, StoreError, now_ms};
use tokio_util::sync::CancellationToken;

/// Purges finished jobs now and then every [`Retention::INTERVAL`].
#[derive(Debug, Clone)]
pub struct Retention {
    store: Store,
    keep_completed: Duration,
    keep_failed: Duration,
}

impl Retention {
    /// Time between purges.
    pub const INTERVAL: Duration = Duration::from_secs(60);

    /// Retention over `store`, keeping completed jobs for `keep_completed`
    /// and failed or cancelled ones for `keep_failed`.
    pub fn new(store: Store, keep_completed: Duration, keep_failed: Duration) -> Retention {
        Retention {
            store,
            keep_completed,
            keep_failed,
        }
    }

    /// Purges at once, then every [`Retention::INTERVAL`], until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Self::INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A purge caught by the stop is simply cut short: the next
            // worker to start repeats it.
            tokio::select! {
                () = stop.cancelled() => return,
                purged = self.purge(now_ms()) => match purged {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "purged finished jobs"),
                    Err(error) => tracing::warn!(%error, "job purge failed; retrying at the next interval"),
                },
            }
        }
    }

    /// One purge as of `now` (ms since the epoch); returns the jobs deleted.
    pub async fn purge(&self, now: i64) -> Result<u64, StoreError> {
        let (completed_before, failed_before) = cutoffs(now, self.keep_completed, self.keep_failed);
        self.store.job_purge(completed_before, failed_before).await
    }
}

/// The `finished_at` bounds below which completed and failed jobs go.
fn cutoffs(now: i64, keep_completed: Duration, keep_failed: Duration) -> (i64, i64) {
    let before =
        |keep: Duration| now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
    (before(keep_completed), before(keep_failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_subtract_each_retention() {
        assert_eq!(
            cutoffs(
                100_000_000,
                Duration::from_secs(3600),
                Duration::from_secs(7200)
            ),
            (100_000_000 - 3_600_000, 100_000_000 - 7_200_000)
        );
        assert_eq!(cutoffs(5, Duration::ZERO, Duration::ZERO), (5, 5));
        // Absurd retentions keep everything instead of overflowing.
        assert_eq!(
            cutoffs(5, Duration::MAX, Duration::MAX),
            (5 - i64::MAX, 5 - i64::MAX)
        );
    }
}
