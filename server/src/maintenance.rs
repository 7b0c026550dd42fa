//! Background upkeep of the store: expired entries are cleaned (on start and
//! every `maintenance.interval`), size budgets enforced by eviction (on the
//! same timer, and shortly after this server's writes may have taken a
//! policy past its budget), SQLite's write-ahead log checkpointed and
//! truncated (same timer), and read statistics flushed in batches so a read
//! never writes to the store.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use roadie_store::{ChangeKind, Selector, StoreError, now_ms};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{config::Policy, state::AppState};

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

/// What this server's writes may have added to each policy since it last
/// counted the policy's bytes, so that a write wakes the budget pass (whose
/// count reads every entry of the policy) only when the policy may have
/// passed its budget, not after every write.
///
/// A write adds the length of its value as sent (a stored value is never
/// longer), so the estimate errs high. Writes of other processes (workers'
/// fetches, other servers) are not seen here: the full pass counts them,
/// every `maintenance.interval`.
#[derive(Debug)]
pub struct Budgets {
    policies: HashMap<String, Headroom>,
    wake: Notify,
    /// One pass at a time: a pass flushes the reads noted in memory before
    /// it picks what to evict, and another must not evict while that flush
    /// is on its way.
    pass: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Headroom {
    budget: u64,
    /// Bytes this server has written to the policy since it started.
    written: AtomicU64,
    /// The `written` past which the policy may hold more than its budget;
    /// 0 until the first count.
    limit: AtomicU64,
}

impl Budgets {
    /// Nothing counted yet: the first write of each policy wakes the pass.
    pub fn new(policies: &BTreeMap<String, Policy>) -> Budgets {
        let policies = policies
            .iter()
            .map(|(name, policy)| {
                let headroom = Headroom {
                    budget: policy.max_bytes,
                    written: AtomicU64::new(0),
                    limit: AtomicU64::new(0),
                };
                (name.clone(), headroom)
            })
            .collect();
        Budgets {
            policies,
            wake: Notify::new(),
            pass: tokio::sync::Mutex::new(()),
        }
    }

    /// Counts a write of `bytes` to `policy`, waking the budget pass when
    /// the policy may now hold more than its budget.
    pub fn wrote(&self, policy: &str, bytes: usize) {
        let Some(headroom) = self.policies.get(policy) else {
            return;
        };
        let bytes = bytes as u64;
        let written = headroom.written.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if written > headroom.limit.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Whether `policy` may hold more than its budget.
    fn may_exceed(&self, policy: &str) -> bool {
        self.policies.get(policy).is_none_or(|headroom| {
            headroom.written.load(Ordering::Relaxed) > headroom.limit.load(Ordering::Relaxed)
        })
    }

    /// What this server had written to `policy` before a count began.
    fn mark(&self, policy: &str) -> u64 {
        self.policies
            .get(policy)
            .map_or(0, |headroom| headroom.written.load(Ordering::Relaxed))
    }

    /// A count begun at `mark` found `policy` holding `held` bytes: it may
    /// pass its budget once this server writes the difference. Writes
    /// during the count are in `written` and in `held` alike, counted twice
    /// (the estimate errs high, never low).
    fn counted(&self, policy: &str, mark: u64, held: u64) {
        if let Some(headroom) = self.policies.get(policy) {
            let room = headroom.budget.saturating_sub(held);
            headroom
                .limit
                .store(mark.saturating_add(room), Ordering::Relaxed);
        }
    }
}

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
    /// writes may have taken past their budgets (see [`Budgets`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(max_bytes: u64) -> Budgets {
        let policy = Policy {
            max_bytes,
            ..Policy::default()
        };
        Budgets::new(&BTreeMap::from([("generic".to_owned(), policy)]))
    }

    #[test]
    fn a_policy_never_counted_may_exceed_its_budget_after_any_write() {
        let budgets = budgets(1000);
        assert!(!budgets.may_exceed("generic"), "nothing written");
        budgets.wrote("generic", 1);
        assert!(budgets.may_exceed("generic"));
        // A policy the settings do not name is never skipped.
        assert!(budgets.may_exceed("unknown"));
    }

    #[test]
    fn writes_up_to_the_room_left_at_the_count_stay_within_the_budget() {
        let budgets = budgets(1000);
        let mark = budgets.mark("generic");
        budgets.counted("generic", mark, 600);
        assert!(!budgets.may_exceed("generic"));
        budgets.wrote("generic", 400);
        assert!(!budgets.may_exceed("generic"), "exactly at the budget");
        budgets.wrote("generic", 1);
        assert!(budgets.may_exceed("generic"));
        // Another policy's writes count for it alone.
        budgets.wrote("unknown", 10_000);
        let mark = budgets.mark("generic");
        budgets.counted("generic", mark, 0);
        assert!(!budgets.may_exceed("generic"));
    }

    #[test]
    fn writes_during_a_count_are_counted_again() {
        let budgets = budgets(1000);
        let mark = budgets.mark("generic");
        // Landed while the count ran: in its sum and in `written` alike.
        budgets.wrote("generic", 300);
        budgets.counted("generic", mark, 900);
        assert!(
            budgets.may_exceed("generic"),
            "300 written against 100 of room"
        );
    }

    #[test]
    fn a_policy_counted_over_its_budget_wakes_the_pass_at_its_next_write() {
        let budgets = budgets(1000);
        budgets.counted("generic", budgets.mark("generic"), 1500);
        assert!(!budgets.may_exceed("generic"));
        budgets.wrote("generic", 1);
        assert!(budgets.may_exceed("generic"));
    }

    /// Whether a wake-up is waiting for the pass (taking it).
    async fn woken(budgets: &Budgets) -> bool {
        tokio::time::timeout(Duration::ZERO, budgets.wake.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_write_wakes_the_pass_only_past_the_room_left() {
        let budgets = budgets(1000);
        budgets.wrote("generic", 10);
        assert!(
            woken(&budgets).await,
            "never counted: the first write wakes"
        );
        budgets.counted("generic", budgets.mark("generic"), 500);
        budgets.wrote("generic", 500);
        assert!(!woken(&budgets).await, "at the budget");
        budgets.wrote("generic", 1);
        assert!(woken(&budgets).await, "past it");
    }
}
