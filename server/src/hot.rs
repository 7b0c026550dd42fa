//! The hot tier: entries (and known absences) in memory, in front of the
//! store for `Get` and `BatchGet`, bounded in bytes.
//!
//! Coherence comes from the change log, not from time-to-live: the server's
//! tail of the log ([`crate::feed`]) removes every key a change touches, and
//! the server removes a key at once after its own write. A read that misses
//! fills the tier with what the store answered, but only if no removal of
//! that key happened while it read: each key hashes to a shard with a
//! generation, bumped by every removal, and a fill carries the generation it
//! saw before reading ([`Ticket`]). A slow read can therefore never put back
//! a value a newer write already replaced.
//!
//! Staleness is bounded by the feed: the tier is consulted only while the
//! tail has confirmed, within `hot_tier.max_lag`, that it has applied every
//! committed change (see [`crate::feed::Feed::hot`]).

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use moka::sync::Cache;
use roadie_store::Entry;

/// Shards of the fill/remove generations: enough that fills of different
/// keys rarely wait on each other.
const SHARDS: usize = 64;

/// What the store said about a key: an entry, or `None` for absent.
pub type Slot = Arc<Option<Entry>>;

/// The in-memory tier of one server.
#[derive(Debug)]
pub struct HotTier {
    cache: Cache<String, Slot>,
    generations: Box<[Mutex<u64>]>,
    max_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Taken before reading the store, handed to [`HotTier::fill`] after.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    shard: usize,
    generation: u64,
}

impl HotTier {
    /// An empty tier holding at most `max_bytes` (keys, values, metadata).
    pub fn new(max_bytes: u64) -> HotTier {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, slot: &Slot| weight(key, slot))
            .build();
        HotTier {
            cache,
            generations: (0..SHARDS).map(|_| Mutex::new(0)).collect(),
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// What the tier holds for `key`, if anything.
    pub fn get(&self, key: &str) -> Option<Slot> {
        let slot = self.cache.get(key);
        let counter = if slot.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        slot
    }

    /// The generation of `key`'s shard, before a read of the store.
    pub fn ticket(&self, key: &str) -> Ticket {
        let shard = shard_of(key);
        let generation = *self.lock(shard);
        Ticket { shard, generation }
    }

    /// Keeps what the store answered for `key`, unless `key`'s shard saw a
    /// removal since `ticket` was taken.
    pub fn fill(&self, key: &str, ticket: Ticket, entry: Option<Entry>) {
        let generation = self.lock(ticket.shard);
        if *generation == ticket.generation {
            self.cache.insert(key.to_owned(), Arc::new(entry));
        }
    }

    /// Forgets `key`, and fails every fill of its shard already under way.
    pub fn remove(&self, key: &str) {
        let shard = shard_of(key);
        let mut generation = self.lock(shard);
        *generation += 1;
        self.cache.invalidate(key);
    }

    /// Forgets everything (a selector write, or a gap in the tail).
    pub fn clear(&self) {
        let mut held: Vec<_> = (0..SHARDS).map(|shard| self.lock(shard)).collect();
        for generation in &mut held {
            **generation += 1;
        }
        self.cache.invalidate_all();
    }

    /// Weighted size in bytes (approximate until moka's pending work runs).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Figures for `Stats`; `bypassed` is counted by the feed.
    pub fn stats(&self, bypassed: u64) -> roadie_proto::v1::HotTierStats {
        roadie_proto::v1::HotTierStats {
            bytes: self.weighted_bytes(),
            entries: self.cache.entry_count(),
            max_bytes: self.max_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bypassed,
        }
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, u64> {
        // A counter cannot be left half-updated: a poisoned lock is still good.
        self.generations[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn shard_of(key: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (hash % SHARDS as u64) as usize
}

/// Bytes a slot costs: what it stores plus a fixed allowance for the
/// structures around it.
fn weight(key: &str, slot: &Slot) -> u32 {
    const OVERHEAD: usize = 160;
    let entry = slot.as_ref().as_ref().map_or(0, |e| {
        e.value.len()
            + e.media_type.len()
            + e.policy.len()
            + e.tags.iter().map(String::len).sum::<usize>()
            + e.fingerprint.as_ref().map_or(0, String::len)
            + e.metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + e.key.len()
    });
    u32::try_from(OVERHEAD + key.len() + entry).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_during_a_read_fails_the_fill() {
        let tier = HotTier::new(1 << 20);
        let ticket = tier.ticket("k");
        tier.remove("k");
        tier.fill("k", ticket, None);
        assert!(tier.get("k").is_none(), "the stale fill was dropped");

        let ticket = tier.ticket("k");
        tier.fill("k", ticket, None);
        assert!(tier.get("k").is_some(), "an undisturbed fill is kept");
        tier.clear();
        assert!(tier.get("k").is_none());
        let ticket_before_clear = tier.ticket("k");
        tier.clear();
        tier.fill("k", ticket_before_clear, None);
        assert!(tier.get("k").is_none());
    }

    #[test]
    fn the_tier_stays_within_its_bytes() {
        let tier = HotTier::new(100_000);
        for i in 0..1000 {
            let key = format!("key-{i}");
            let ticket = tier.ticket(&key);
            tier.fill(&key, ticket, None);
        }
        assert!(
            tier.weighted_bytes() <= 100_000,
            "{}",
            tier.weighted_bytes()
        );
    }
}
