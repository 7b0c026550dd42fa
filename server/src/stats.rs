//! Answer counters by policy since the server started.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// What a read answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A fresh entry.
    Hit,
    /// No usable entry.
    Miss,
    /// A stale entry within the reader's window.
    Stale,
    /// A negative entry.
    Negative,
}

/// Counters of one policy.
#[derive(Debug, Default)]
pub struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    negative: AtomicU64,
    evicted: AtomicU64,
}

/// A snapshot of one policy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Fresh answers.
    pub hits: u64,
    /// Misses.
    pub misses: u64,
    /// Stale answers.
    pub stale: u64,
    /// Negative answers.
    pub negative: u64,
    /// Evicted entries.
    pub evicted: u64,
}

/// Counters for every policy. Configured policies are counted lock-free;
/// a policy found only in the store (configuration changed since it was
/// written) falls back to a locked map.
#[derive(Debug)]
pub struct Stats {
    configured: HashMap<String, Counters>,
    expired: AtomicU64,
    others: Mutex<HashMap<String, CounterSnapshot>>,
}

impl Stats {
    /// Counters for `policies`, all zero.
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a String>) -> Stats {
        Stats {
            configured: policies
                .into_iter()
                .map(|p| (p.clone(), Counters::default()))
                .collect(),
            expired: AtomicU64::new(0),
            others: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one answer under `policy`.
    pub fn record(&self, policy: &str, answer: Answer) {
        if let Some(c) = self.configured.get(policy) {
            let counter = match answer {
                Answer::Hit => &c.hits,
                Answer::Miss => &c.misses,
                Answer::Stale => &c.stale,
                Answer::Negative => &c.negative,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
            let c = others.entry(policy.to_owned()).or_default();
            match answer {
                Answer::Hit => c.hits += 1,
                Answer::Miss => c.misses += 1,
                Answer::Stale => c.stale += 1,
                Answer::Negative => c.negative += 1,
            }
        }
    }

    /// Counts `count` evictions under `policy`.
    pub fn record_evicted(&self, policy: &str, count: u64) {
        if let Some(c) = self.configured.get(policy) {
            c.evicted.fetch_add(count, Ordering::Relaxed);
        } else {
            let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
            others.entry(policy.to_owned()).or_default().evicted += count;
        }
    }

    /// Counts `count` expired entries cleaned up.
    pub fn record_expired(&self, count: u64) {
        self.expired.fetch_add(count, Ordering::Relaxed);
    }

    /// Expired entries cleaned up since start.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// Every policy's counters, by name.
    pub fn snapshot(&self) -> BTreeMap<String, CounterSnapshot> {
        let mut all: BTreeMap<String, CounterSnapshot> = self
            .configured
            .iter()
            .map(|(name, c)| {
                let snapshot = CounterSnapshot {
                    hits: c.hits.load(Ordering::Relaxed),
                    misses: c.misses.load(Ordering::Relaxed),
                    stale: c.stale.load(Ordering::Relaxed),
                    negative: c.negative.load(Ordering::Relaxed),
                    evicted: c.evicted.load(Ordering::Relaxed),
                };
                (name.clone(), snapshot)
            })
            .collect();
        let others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        all.extend(others.iter().map(|(k, v)| (k.clone(), *v)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_configured_and_unknown_policies() {
        let stats = Stats::new(&["generic".to_owned()]);
        stats.record("generic", Answer::Hit);
        stats.record("generic", Answer::Hit);
        stats.record("generic", Answer::Negative);
        stats.record("retired", Answer::Miss);
        stats.record_evicted("generic", 3);
        let snapshot = stats.snapshot();
        assert_eq!(
            snapshot["generic"],
            CounterSnapshot {
                hits: 2,
                misses: 0,
                stale: 0,
                negative: 1,
                evicted: 3
            }
        );
        assert_eq!(snapshot["retired"].misses, 1);
    }
}
