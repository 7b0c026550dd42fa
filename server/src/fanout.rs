//! Which watchers a change goes to. The feed's tail matches each change
//! once against an index of the watchers' filters (by key prefix, else by
//! tag; only watchers with neither are checked one by one) and hands it to
//! the queue of each watcher it matches. A watcher the change does not
//! concern does no work at all, and the writers, whose commits only wake
//! the tail, wait for none of it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use roadie_store::{Change, ChangeKind, Entry};
use tokio::sync::mpsc;

/// One change as the tail read it, shared by every watcher.
#[derive(Debug)]
pub struct Live {
    /// The change.
    pub change: Change,
    /// The entry as of this change (PUT and FETCH), when a watcher asked
    /// for values as the tail read it; `None` also when a later change
    /// already replaced it.
    pub entry: Option<Entry>,
    /// Whether the tail looked up entries for this change at all.
    pub values_loaded: bool,
}

/// What a watcher asked to see.
#[derive(Debug, Default)]
pub struct Filter {
    /// Keys starting with this ("" for every key).
    pub prefix: String,
    /// Entries carrying any of these tags (empty: any).
    pub tags: HashSet<String>,
    /// Entries of any of these policies (empty: any).
    pub policies: HashSet<String>,
    /// Entries fetched from any of these providers (empty: any).
    pub providers: HashSet<String>,
    /// Changes of any of these kinds (empty: any).
    pub kinds: HashSet<ChangeKind>,
}

impl Filter {
    /// Whether `change` passes every filter (an empty list passes all).
    pub fn matches(&self, change: &Change) -> bool {
        change.key.starts_with(&self.prefix)
            && (self.tags.is_empty() || change.tags.iter().any(|t| self.tags.contains(t)))
            && (self.policies.is_empty() || self.policies.contains(&change.policy))
            && (self.providers.is_empty()
                || change
                    .provider
                    .as_ref()
                    .is_some_and(|p| self.providers.contains(p)))
            && (self.kinds.is_empty() || self.kinds.contains(&change.kind))
    }
}

/// A watcher's end of the fan-out: the changes its filter matches, in
/// revision order.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) id: u64,
    /// Matching changes; ends when the watcher is cut off or the feed stops.
    pub changes: mpsc::Receiver<Arc<Live>>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// Whether the queue ended because the watcher fell a full queue behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct Subscriber {
    filter: Arc<Filter>,
    queue: mpsc::Sender<Arc<Live>>,
    lagged: Arc<AtomicBool>,
    /// The last revision handed over, so a watcher found under two of a
    /// change's tags gets it once.
    last: u64,
}

/// The watchers of one feed, indexed by their filters.
#[derive(Debug, Default)]
pub struct Fanout {
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
    /// Watchers with a key prefix, by prefix.
    by_prefix: HashMap<String, Vec<u64>>,
    /// The lengths of those prefixes, with how many watchers have each.
    prefix_lengths: BTreeMap<usize, usize>,
    /// Watchers with no prefix but tags, under each of their tags.
    by_tag: HashMap<String, Vec<u64>>,
    /// Watchers with neither: checked against every change.
    rest: Vec<u64>,
}

impl Fanout {
    /// Adds a watcher whose queue holds up to `capacity` changes.
    pub fn add(&mut self, filter: Arc<Filter>, capacity: usize) -> Subscription {
        let id = self.next_id;
        self.next_id += 1;
        let (queue, changes) = mpsc::channel(capacity.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        if !filter.prefix.is_empty() {
            self.by_prefix
                .entry(filter.prefix.clone())
                .or_default()
                .push(id);
            *self.prefix_lengths.entry(filter.prefix.len()).or_default() += 1;
        } else if !filter.tags.is_empty() {
            for tag in &filter.tags {
                self.by_tag.entry(tag.clone()).or_default().push(id);
            }
        } else {
            self.rest.push(id);
        }
        self.subscribers.insert(
            id,
            Subscriber {
                filter,
                queue,
                lagged: lagged.clone(),
                last: 0,
            },
        );
        Subscription {
            id,
            changes,
            lagged,
        }
    }

    /// Removes a watcher (gone, or cut off); its queue ends.
    pub fn remove(&mut self, id: u64) {
        let Some(subscriber) = self.subscribers.remove(&id) else {
            return;
        };
        let filter = &subscriber.filter;
        let unlist = |ids: &mut Vec<u64>| ids.retain(|&other| other != id);
        if !filter.prefix.is_empty() {
            if let Some(ids) = self.by_prefix.get_mut(&filter.prefix) {
                unlist(ids);
                if ids.is_empty() {
                    self.by_prefix.remove(&filter.prefix);
                }
            }
            if let Some(count) = self.prefix_lengths.get_mut(&filter.prefix.len()) {
                *count -= 1;
                if *count == 0 {
                    self.prefix_lengths.remove(&filter.prefix.len());
                }
            }
        } else if !filter.tags.is_empty() {
            for tag in &filter.tags {
                if let Some(ids) = self.by_tag.get_mut(tag) {
                    unlist(ids);
                    if ids.is_empty() {
                        self.by_tag.remove(tag);
                    }
                }
            }
        } else {
            unlist(&mut self.rest);
        }
    }

    /// Watchers on this feed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    /// Whether no watcher is on this feed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// Hands `live` to every watcher whose filter it matches. A watcher
    /// whose queue is full is cut off (it resumes from its revision); one
    /// that is gone is removed.
    pub fn dispatch(&mut self, live: &Arc<Live>) {
        if self.subscribers.is_empty() {
            return;
        }
        let change = &live.change;
        let mut candidates: Vec<u64> = Vec::new();
        for &length in self.prefix_lengths.keys() {
            if length > change.key.len() {
                break;
            }
            if let Some(prefix) = change.key.get(..length)
                && let Some(ids) = self.by_prefix.get(prefix)
            {
                candidates.extend_from_slice(ids);
            }
        }
        for tag in &change.tags {
            if let Some(ids) = self.by_tag.get(tag) {
                candidates.extend_from_slice(ids);
            }
        }
        candidates.extend_from_slice(&self.rest);
        let mut dropped = Vec::new();
        for id in candidates {
            let Some(subscriber) = self.subscribers.get_mut(&id) else {
                continue;
            };
            if subscriber.last == change.revision || !subscriber.filter.matches(change) {
                continue;
            }
            subscriber.last = change.revision;
            match subscriber.queue.try_send(live.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.lagged.store(true, Ordering::Release);
                    dropped.push(id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => dropped.push(id),
            }
        }
        for id in dropped {
            self.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(revision: u64, key: &str, tags: &[&str]) -> Arc<Live> {
        Arc::new(Live {
            change: Change {
                revision,
                kind: ChangeKind::Put,
                key: key.to_owned(),
                policy: "generic".to_owned(),
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                provider: None,
                at: 0,
            },
            entry: None,
            values_loaded: false,
        })
    }

    fn filter(prefix: &str, tags: &[&str]) -> Arc<Filter> {
        Arc::new(Filter {
            prefix: prefix.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        })
    }

    fn received(subscription: &mut Subscription) -> Vec<u64> {
        let mut revisions = Vec::new();
        while let Ok(live) = subscription.changes.try_recv() {
            revisions.push(live.change.revision);
        }
        revisions
    }

    #[test]
    fn each_change_reaches_exactly_the_watchers_it_matches_once() {
        let mut fanout = Fanout::default();
        let mut everything = fanout.add(filter("", &[]), 16);
        let mut artists = fanout.add(filter("artist/", &[]), 16);
        let mut daft = fanout.add(filter("artist/daft", &[]), 16);
        let mut tagged = fanout.add(filter("", &["a", "b"]), 16);
        let mut tagged_prefix = fanout.add(filter("x", &["a"]), 16);

        fanout.dispatch(&live(1, "artist/daft punk", &[]));
        fanout.dispatch(&live(2, "artist/air", &["a", "b"]));
        fanout.dispatch(&live(3, "release/1", &["b"]));
        fanout.dispatch(&live(4, "x1", &["a"]));
        fanout.dispatch(&live(5, "x2", &[]));
        fanout.dispatch(&live(6, "é", &[]));

        assert_eq!(received(&mut everything), [1, 2, 3, 4, 5, 6]);
        assert_eq!(received(&mut artists), [1, 2]);
        assert_eq!(received(&mut daft), [1]);
        assert_eq!(received(&mut tagged), [2, 3, 4]);
        assert_eq!(received(&mut tagged_prefix), [4]);
    }

    #[test]
    fn a_full_queue_cuts_its_watcher_off_alone_and_removal_unindexes() {
        let mut fanout = Fanout::default();
        let mut slow = fanout.add(filter("k", &[]), 2);
        let mut fast = fanout.add(filter("k", &[]), 16);
        for revision in 1..=3 {
            fanout.dispatch(&live(revision, "k", &[]));
        }
        assert!(slow.lagged() && !fast.lagged());
        assert_eq!(received(&mut slow), [1, 2]);
        assert!(slow.changes.is_closed() || slow.changes.try_recv().is_err());
        assert_eq!(received(&mut fast), [1, 2, 3]);
        assert_eq!(fanout.len(), 1);

        fanout.remove(fast.id);
        assert!(fanout.is_empty());
        assert!(fanout.by_prefix.is_empty() && fanout.prefix_lengths.is_empty());
        let tagged = fanout.add(filter("", &["t", "u"]), 4);
        fanout.remove(tagged.id);
        assert!(fanout.by_tag.is_empty());
    }
}
