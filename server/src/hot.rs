//! The hot tier: entries (and known absences) in memory, in front of the
//! store for `Get` and `BatchGet`, bounded in bytes.
//!
//! Coherence comes from the change log, not from time-to-live: the server's
//! tail of the log ([`crate::feed`]) hands the tier every change it reads,
//! and the server hands it its own writes at once. A change removes the key
//! only when it is newer than what the tier holds: an entry remembers the
//! revision it was read at, so the tail's later report of a write the tier
//! already read costs nothing (a rewritten key costs one read of the store,
//! not two).
//!
//! A read that misses fills the tier with what the store answered, unless
//! a change the read may not have seen arrived while it read. Each key
//! hashes to a shard that keeps the highest revision of a change reported
//! for any of its keys; a fill carries that mark from before its read
//! ([`Ticket`]) and lands when no change came since, or when every change
//! since is one the read saw (the entry read is at that revision or later).
//! Revisions commit in order, so a read that began before a change committed
//! finds the shard's mark at most just below it, and the change, when it
//! comes, fails the fill. A slow read can therefore never put back a value a
//! newer write already replaced.
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

/// Shards of the fill/change marks: enough that fills of different keys
/// rarely wait on each other, and that the writes of one commit rarely
/// share a shard (where the tail reports a later one first, the earlier is
/// forgotten rather than written through: [`HotTier::written`]).
const SHARDS: usize = 1024;

/// What the store said about a key: an entry, or `None` for absent.
pub type Slot = Arc<Option<Entry>>;

/// The in-memory tier of one server.
#[derive(Debug)]
pub struct HotTier {
    cache: Cache<String, Slot>,
    shards: Box<[Mutex<Shard>]>,
    max_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Keys a shard remembers the tail removing, for [`HotTier::written`].
const FORGOTTEN: usize = 8;

/// One shard of keys: its marks, and the keys the tail removed last.
#[derive(Debug, Default)]
struct Shard {
    marks: Marks,
    /// The last keys the tail removed for a newer change, with the change's
    /// revision: when that change is this server's own write, the handler
    /// answering it finds the key forgotten and writes it back.
    forgotten: std::collections::VecDeque<(String, u64)>,
}

/// One shard's record of the changes reported for its keys.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Marks {
    /// The highest revision of a change reported for one of its keys.
    revision: u64,
    /// Bumped by [`HotTier::clear`], which forgets changes it cannot name.
    cleared: u64,
}

/// Taken before reading the store, handed to [`HotTier::fill`] after.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    shard: usize,
    marks: Marks,
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
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
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

    /// The marks of `key`'s shard, before a read of the store.
    pub fn ticket(&self, key: &str) -> Ticket {
        let shard = shard_of(key);
        let marks = self.lock(shard).marks;
        Ticket { shard, marks }
    }

    /// Keeps what the store answered for `key`, unless a change its read
    /// may have missed was reported since `ticket` was taken.
    pub fn fill(&self, key: &str, ticket: Ticket, entry: Option<Entry>) {
        let marks = self.lock(ticket.shard).marks;
        let read_at = revision_of(&entry);
        let unchanged = marks == ticket.marks;
        let seen = marks.cleared == ticket.marks.cleared && marks.revision <= read_at;
        if (unchanged || seen) && self.held_at(key).is_none_or(|held| held < read_at) {
            self.cache.insert(key.to_owned(), Arc::new(entry));
        }
    }

    /// A change of `key` at `revision` committed: forgets what the tier
    /// holds for `key` if it is older, and fails every fill of its shard
    /// that began before the change.
    pub fn changed(&self, key: &str, revision: u64) {
        let mut shard = self.lock(shard_of(key));
        shard.marks.revision = shard.marks.revision.max(revision);
        if self.held_at(key).is_some_and(|held| held < revision) {
            self.cache.invalidate(key);
            if shard.forgotten.len() == FORGOTTEN {
                shard.forgotten.pop_front();
            }
            shard.forgotten.push_back((key.to_owned(), revision));
        }
    }

    /// This server's own write of `entry` committed. Where the tier holds
    /// the key (read before, even as absent; or held until the tail's report
    /// of this very write removed it), the entry replaces it at once,
    /// so the next read needs no store and the tail's later report of the
    /// write removes nothing; a key the tier does not hold stays out (a
    /// write is not a read: a load of new keys would fill the tier with
    /// entries nobody asked for). The tail may have reported the write
    /// already (its revision is this write's alone); a change of the shard
    /// past it may be a newer write of this very key, so then the key is
    /// only forgotten, as by [`Self::changed`]. Either way every fill that
    /// began before the write fails.
    pub fn written(&self, entry: Entry) {
        let revision = entry.revision;
        let mut shard = self.lock(shard_of(&entry.key));
        let newest = shard.marks.revision <= revision;
        shard.marks.revision = shard.marks.revision.max(revision);
        // A fill may already hold a newer write (read before the tail
        // reported either): then nothing changes.
        let held = match self.held_at(&entry.key) {
            Some(held) => held < revision,
            None => shard
                .forgotten
                .iter()
                .any(|(key, at)| *key == entry.key && *at == revision),
        };
        if held {
            if newest {
                self.cache.insert(entry.key.clone(), Arc::new(Some(entry)));
            } else {
                self.cache.invalidate(&entry.key);
            }
        }
    }

    /// Forgets everything (a selector write, or a gap in the tail).
    pub fn clear(&self) {
        let mut held: Vec<_> = (0..SHARDS).map(|shard| self.lock(shard)).collect();
        for shard in &mut held {
            shard.marks.cleared += 1;
            shard.forgotten.clear();
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

    /// The revision of what the tier holds for `key`, if anything. Not a
    /// read: a key absent (the usual case for the tail's reports) is
    /// answered without touching the cache's access records.
    fn held_at(&self, key: &str) -> Option<u64> {
        if !self.cache.contains_key(key) {
            return None;
        }
        self.cache.get(key).map(|held| revision_of(&held))
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        // Counters and a list, each written in one step: a poisoned lock is
        // still good.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The revision a slot was read at: its entry's last write, or 0 for an
/// absence (whose deletion's revision the read did not say, so every later
/// change of the key is taken as newer).
fn revision_of(entry: &Option<Entry>) -> u64 {
    entry.as_ref().map_or(0, |e| e.revision)
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

    fn entry(key: &str, revision: u64) -> Option<Entry> {
        Some(Entry {
            key: key.to_owned(),
            value: bytes::Bytes::from_static(b"v"),
            media_type: "text/plain".to_owned(),
            policy: "default".to_owned(),
            tags: Vec::new(),
            confidence: 100,
            fingerprint: None,
            metadata: Default::default(),
            negative: false,
            created_at: 0,
            updated_at: 0,
            expires_at: None,
            revision,
            provenance: None,
        })
    }

    fn held(tier: &HotTier, key: &str) -> Option<Option<u64>> {
        tier.get(key)
            .map(|slot| slot.as_ref().as_ref().map(|e| e.revision))
    }

    #[test]
    fn a_change_removes_only_what_is_older() {
        let tier = HotTier::new(1 << 20);
        let ticket = tier.ticket("k");
        tier.fill("k", ticket, entry("k", 5));
        tier.changed("k", 5);
        assert_eq!(held(&tier, "k"), Some(Some(5)), "the write it read is kept");
        tier.changed("k", 4);
        assert_eq!(held(&tier, "k"), Some(Some(5)), "an older change is kept");
        tier.changed("k", 6);
        assert_eq!(held(&tier, "k"), None, "a newer change removes it");

        let ticket = tier.ticket("gone");
        tier.fill("gone", ticket, None);
        assert_eq!(held(&tier, "gone"), Some(None), "an absence is kept");
        tier.changed("gone", 1);
        assert_eq!(
            held(&tier, "gone"),
            None,
            "any change of an absent key removes it"
        );
    }

    #[test]
    fn a_fill_lands_only_if_its_read_saw_every_change_since_its_ticket() {
        let tier = HotTier::new(1 << 20);
        // The read began before the write at 7 and saw 6: the write's report
        // fails the fill.
        let ticket = tier.ticket("k");
        tier.changed("k", 7);
        tier.fill("k", ticket, entry("k", 6));
        assert_eq!(held(&tier, "k"), None, "the stale fill was dropped");
        // The read saw the write at 7 (reported during the read): kept.
        let ticket = tier.ticket("k");
        tier.changed("k", 8);
        tier.fill("k", ticket, entry("k", 8));
        assert_eq!(held(&tier, "k"), Some(Some(8)));
        // An absence read while a change came is never kept.
        let ticket = tier.ticket("a");
        tier.changed("a", 9);
        tier.fill("a", ticket, None);
        assert_eq!(held(&tier, "a"), None);
        // A fill never replaces a newer value with an older one.
        let ticket = tier.ticket("k");
        tier.fill("k", ticket, entry("k", 3));
        assert_eq!(held(&tier, "k"), Some(Some(8)));
    }

    #[test]
    fn an_own_write_replaces_what_is_held_unless_a_later_change_came_first() {
        let tier = HotTier::new(1 << 20);
        let fill = |key: &str, entry: Option<Entry>| {
            let ticket = tier.ticket(key);
            tier.fill(key, ticket, entry);
        };
        tier.written(entry("new", 2).expect("an entry"));
        assert_eq!(held(&tier, "new"), None, "a key never read stays out");
        fill("k", entry("k", 1));
        tier.written(entry("k", 3).expect("an entry"));
        assert_eq!(held(&tier, "k"), Some(Some(3)), "written through");
        tier.changed("k", 3);
        assert_eq!(
            held(&tier, "k"),
            Some(Some(3)),
            "the tail's report of it removes nothing"
        );
        fill("absent", None);
        tier.written(entry("absent", 4).expect("an entry"));
        assert_eq!(
            held(&tier, "absent"),
            Some(Some(4)),
            "a remembered absence too"
        );
        // A fill that read before the write is dropped.
        let ticket = tier.ticket("k");
        tier.written(entry("k", 5).expect("an entry"));
        tier.fill("k", ticket, entry("k", 4));
        assert_eq!(held(&tier, "k"), Some(Some(5)));
        // The tail reported the write, and removed the key, before the
        // server answered it.
        fill("w", entry("w", 6));
        tier.changed("w", 7);
        assert_eq!(held(&tier, "w"), None);
        tier.written(entry("w", 7).expect("an entry"));
        assert_eq!(held(&tier, "w"), Some(Some(7)), "written back");
        // Removed for a later write than this one: stays out.
        tier.changed("w", 8);
        tier.written(entry("w", 7).expect("an entry"));
        assert_eq!(held(&tier, "w"), None);
        // The tail already reported a change of the shard at 15: the write
        // at 14 may be older than the key's latest, so the key is forgotten.
        tier.changed("q", 15);
        fill("q", entry("q", 3));
        tier.written(entry("q", 14).expect("an entry"));
        assert_eq!(held(&tier, "q"), None);
        // A read that saw a newer write than one answered late keeps it.
        fill("n", entry("n", 20));
        tier.written(entry("n", 19).expect("an entry"));
        assert_eq!(held(&tier, "n"), Some(Some(20)));
    }

    #[test]
    fn a_clear_during_a_read_fails_the_fill() {
        let tier = HotTier::new(1 << 20);
        let ticket = tier.ticket("k");
        tier.fill("k", ticket, entry("k", 1));
        tier.clear();
        assert_eq!(held(&tier, "k"), None);
        let ticket = tier.ticket("k");
        tier.clear();
        tier.fill("k", ticket, entry("k", 1));
        assert_eq!(
            held(&tier, "k"),
            None,
            "a fill from before a clear is dropped"
        );
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
