//! The rescuer: a service on its own timer that makes the jobs of workers
//! that stopped renewing their leases claimable again.

use std::{sync::Arc, time::Duration};

use roadie_store::{Store, now_ms};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The rescuer, on a timer of its own: wakes when the earliest lease of a
/// running job runs out (at the latest every `at_most`), makes the jobs of
/// workers that stopped renewing claimable again, and wakes the claim loop.
/// So a dead worker's jobs are claimable one lease after its last
/// heartbeat, not a rescue interval and a poll later.
pub(super) async fn rescue(
    store: Store,
    at_most: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let rescued = store.job_rescue(now_ms()).await;
        match &rescued {
            Ok((0, 0)) => {}
            Ok((retried, failed)) => {
                tracing::info!(retried, failed, "rescued jobs of lost workers");
                wake.notify_one();
            }
            Err(error) => tracing::warn!(%error, "rescue failed; trying again later"),
        }
        let next = match rescued {
            Ok(_) => store.job_next_lease_expiry().await,
            // Not at an expiry already past: that would spin.
            Err(_) => Ok(None),
        };
        let pause = match next {
            Ok(Some(at)) => {
                // Just past the expiry: the rescue compares strictly.
                let until = u64::try_from(at + 1 - now_ms()).unwrap_or(0);
                Duration::from_millis(until).min(at_most)
            }
            Ok(None) => at_most,
            Err(error) => {
                tracing::warn!(%error, "cannot read the next lease expiry");
                at_most
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
