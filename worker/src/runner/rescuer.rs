//! The rescuer: a service on its own timer that makes the jobs of workers
//! that stopped renewing their leases claimable again.

use std::{sync::Arc, time::Duration};

use super::Wake;
use roadie_store::{Store, now_ms};
use tokio_util::sync::CancellationToken;

/// The rescuer, on a timer of its own: wakes when the earliest lease of a
/// running job runs out (at the latest every `at_most`), makes the jobs of
/// workers that stopped renewing claimable again, and wakes the claim loop.
/// So a dead worker's jobs are claimable one lease after its last
/// heartbeat, not a rescue interval and a poll later.
pub(super) async fn rescue(
    store: Store,
    at_most: Duration,
    wake: Arc<Wake>,
    stop: CancellationToken,
) {
    loop {
        let rescued = store.job_rescue(now_ms()).await;
        match &rescued {
            Ok((0, 0)) => {}
            Ok((retried, failed)) => {
                tracing::info!(retried, failed, "rescued jobs of lost workers");
                wake.listed();
            }
            Err(error) => tracing::warn!(%error, "rescue failed; trying again later"),
        }
        let next = match rescued {
            Ok(_) => store.job_next_lease_expiry().await,
            // Not at an expiry already past: that would spin.
            Err(_) => Ok(None),
        };
        let next = next.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the next lease expiry");
            None
        });
        let pause = pause_until_expiry(next, now_ms(), at_most);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// How long the rescuer sleeps when the earliest running lease expires at
/// `next` (store time in ms; `None`: no job is running): until just past
/// the expiry, since the rescue compares strictly, and at most `at_most`.
fn pause_until_expiry(next: Option<i64>, now: i64, at_most: Duration) -> Duration {
    match next {
        Some(at) => Duration::from_millis(u64::try_from(at + 1 - now).unwrap_or(0)).min(at_most),
        None => at_most,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT_MOST: Duration = Duration::from_secs(5);

    #[test]
    fn the_rescuer_wakes_just_past_the_earliest_expiry() {
        assert_eq!(
            pause_until_expiry(Some(12_000), 10_000, AT_MOST),
            Duration::from_millis(2_001)
        );
    }

    #[test]
    fn an_expiry_already_past_is_rescued_at_once() {
        assert_eq!(
            pause_until_expiry(Some(9_000), 10_000, AT_MOST),
            Duration::ZERO
        );
    }

    #[test]
    fn far_expiries_and_no_running_jobs_wait_at_most_the_round() {
        assert_eq!(pause_until_expiry(Some(60_000), 10_000, AT_MOST), AT_MOST);
        assert_eq!(pause_until_expiry(None, 10_000, AT_MOST), AT_MOST);
    }
}
