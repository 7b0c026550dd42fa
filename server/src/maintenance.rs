//! Background upkeep of the store: expired entries are cleaned (on start and
//! every `maintenance.interval`), size budgets enforced by eviction (on the
//! same timer, and shortly after this server's writes may have taken a
//! policy past its budget), SQLite's write-ahead log checkpointed and
//! truncated (same timer), and read statistics flushed in batches so a read
//! never writes to the store.

use std::{sync::Arc, time::Duration};

use roadie_store::{ChangeKind, Selector, StoreError, now_ms};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Expired entries removed.
    pub expired: u64,
    /// Entries evicted for budgets.
    pub evicted: u64,
    /// Changes compacted out of the log (`watch.retention_*`).
    pub compacted: u64,
    /// Whether the SQLite WAL was checkpointed in full and truncated (always
    /// true on Postgres).
    pub checkpointed: bool,
}

/// Runs the upkeep; a cheap clone of the server's state.
#[derive(Debug, Clone)]
pub struct Maintenance {
    state: Arc<AppState>,
}

/// Shortest gap between eviction passes triggered by writes.
const EVICTION_DEBOUNCE: Duration = Duration::from_secs(1);

impl Maintenance {
    /// Upkeep for `state`.
    pub fn new(state: Arc<AppState>) -> Maintenance {
        Maintenance { state }
    }

    /// One full pass: flush reads, clean expired entries, enforce budgets.
    pub async fn run_once(&self) -> Result<Report, StoreError> {
        self.flush_access().await?;
        let now = now_ms();
        let keep_stale = i64::try_from(self.state.settings.maintenance.keep_stale.as_millis())
            .unwrap_or(i64::MAX);
        let (expired, _) = self
            .state
            .store
            .entry_invalidate(
                &Selector::Expired {
                    now,
                    stale_before: now.saturating_sub(keep_stale),
                },
                ChangeKind::Expire,
                now,
            )
            .await?;
        self.state.stats.record_expired(expired);
        let evicted = self.enforce_budgets().await?;
        let watch = &self.state.settings.watch;
        let compacted = self
            .state
            .store
            .change_compact(watch.retention_age, watch.retention_count, now)
            .await?;
        let checkpointed = self.state.store.checkpoint().await?;
        if !checkpointed {
            tracing::info!(
                wal_bytes = self.state.store.wal_bytes(),
                "WAL checkpoint could not finish (a reader held old pages); next pass tries again"
            );
        }
        Ok(Report {
            expired,
            evicted,
            compacted,
            checkpointed,
        })
    }

    /// Evicts, in every configured policy over its budget, the least
    /// valuable entries down to the cleanup threshold.
    pub async fn enforce_budgets(&self) -> Result<u64, StoreError> {
        self.evict(|_| true).await
    }

    /// [`Maintenance::enforce_budgets`] for the policies this server's
    /// writes may have taken past their budgets (see [`crate::budgets::Budgets`]).
    pub async fn enforce_budgets_after_writes(&self) -> Result<u64, StoreError> {
        let budgets = &self.state.budgets;
        self.evict(|name| budgets.may_exceed(name)).await
    }

    async fn evict(&self, check: impl Fn(&str) -> bool) -> Result<u64, StoreError> {
        let policies: Vec<_> = (self.state.settings.policies.iter())
            .filter(|(name, _)| check(name))
            .collect();
        if policies.is_empty() {
            return Ok(0);
        }
        let _pass = self.state.budgets.pass.lock().await;
        // Recent reads decide what is least valuable: flush them first.
        self.flush_access().await?;
        let mut total = 0;
        for (name, policy) in policies {
            let target = (policy.max_bytes as f64 * policy.cleanup_threshold) as u64;
            let mark = self.state.budgets.mark(name);
            let eviction = self
                .state
                .store
                .entry_evict(name, policy.max_bytes, target, now_ms())
                .await?;
            self.state.budgets.counted(name, mark, eviction.held);
            if eviction.count > 0 {
                tracing::info!(policy = %name, count = eviction.count, bytes = eviction.bytes, "evicted entries over budget");
                self.state.stats.record_evicted(name, eviction.count);
                total += eviction.count;
            }
        }
        Ok(total)
    }

    /// Writes pending read statistics.
    pub async fn flush_access(&self) -> Result<(), StoreError> {
        let accesses = self.state.access.take();
        if accesses.is_empty() {
            return Ok(());
        }
        self.state.store.entry_touch(&accesses).await
    }

    /// Runs until `cancel` fires, then flushes what is pending.
    pub async fn run(self, cancel: CancellationToken) {
        let settings = &self.state.settings.maintenance;
        let mut full = tokio::time::interval(settings.interval);
        let mut flush = tokio::time::interval(settings.access_flush_interval);
        full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The start-up pass already ran before the server listened.
        full.tick().await;
        flush.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = full.tick() => log_failure("maintenance", self.run_once().await.map(|_| ())),
                _ = flush.tick() => log_failure("access flush", self.flush_access().await),
                () = self.state.budgets.wake.notified() => {
                    log_failure("eviction", self.enforce_budgets_after_writes().await.map(|_| ()));
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(EVICTION_DEBOUNCE) => {}
                    }
                }
            }
        }
        log_failure("access flush", self.flush_access().await);
    }
}

fn log_failure(what: &str, result: Result<(), StoreError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "{what} failed; will retry");
    }
}
