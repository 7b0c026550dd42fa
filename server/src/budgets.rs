//! What this server's Puts added to each policy since it last counted the
//! policy's bytes: the estimate that decides when a write wakes the budget
//! pass ([`crate::maintenance`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::sync::Notify;

use crate::config::Policy;

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
    pub(crate) wake: Notify,
    /// One pass at a time: a pass flushes the reads noted in memory before
    /// it picks what to evict, and another must not evict while that flush
    /// is on its way.
    pub(crate) pass: tokio::sync::Mutex<()>,
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
    pub(crate) fn may_exceed(&self, policy: &str) -> bool {
        self.policies.get(policy).is_none_or(|headroom| {
            headroom.written.load(Ordering::Relaxed) > headroom.limit.load(Ordering::Relaxed)
        })
    }

    /// What this server had written to `policy` before a count began.
    pub(crate) fn mark(&self, policy: &str) -> u64 {
        self.policies
            .get(policy)
            .map_or(0, |headroom| headroom.written.load(Ordering::Relaxed))
    }

    /// A count begun at `mark` found `policy` holding `held` bytes: it may
    /// pass its budget once this server writes the difference. Writes
    /// during the count are in `written` and in `held` alike, counted twice
    /// (the estimate errs high, never low).
    pub(crate) fn counted(&self, policy: &str, mark: u64, held: u64) {
        if let Some(headroom) = self.policies.get(policy) {
            let room = headroom.budget.saturating_sub(held);
            headroom
                .limit
                .store(mark.saturating_add(room), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
