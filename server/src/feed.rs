//! The change feed: one tail of the change log per server process, fanned
//! out in memory to every watcher and to the hot tier.
//!
//! A batch of Puts this process commits is taken as it commits
//! ([`Store::own_commits`]), with no read of the log, when its first change
//! is the one after the tail's last: another process's commit between
//! them, a lagging receiver or a watcher that wants values sends the tail
//! to the log instead. The tail reads the log only when something may have
//! changed: at once after this process commits anything else
//! ([`Store::committed`]); on Postgres when
//! another process NOTIFYs after its commit, or every `watch.fallback_poll`
//! in case a notification was lost; on SQLite when `PRAGMA data_version`
//! moves, checked every `watch.poll_interval`. Each read is one indexed
//! query however many watchers there are.
//!
//! Each change goes, through the [`Fanout`] index, to the queue of every
//! watcher whose filter it matches: at most `watch.buffer` changes each; a
//! watcher that falls further behind is cut off (see [`crate::watch`]), the
//! others never wait for it. Waiting Fetches, few and short-lived, read one
//! broadcast ring of every change instead.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use roadie_store::{
    Backend, Change, ChangeKind, Committed, Entry, PollPace, Store, StoreError, notified_revision,
};
use tokio::{
    sync::{Notify, broadcast},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    fanout::{Fanout, Filter, Live, Subscription},
    hot::HotTier,
};

/// Changes read from the log per query.
pub const PAGE: u32 = 1024;

/// True for the kinds whose changes carry the entry written.
pub fn carries_value(kind: ChangeKind) -> bool {
    matches!(kind, ChangeKind::Put | ChangeKind::Fetch)
}

/// The tail's position, the ring and the watchers, changed together under
/// one lock so a subscriber knows exactly which revisions it will get.
#[derive(Debug)]
struct Ring {
    last: u64,
    sender: broadcast::Sender<Arc<Live>>,
    fanout: Fanout,
}

/// The feed of one server process.
#[derive(Debug)]
pub struct Feed {
    ring: Mutex<Ring>,
    hot: Option<HotTier>,
    max_lag: Duration,
    /// When the tail last confirmed it had applied every change committed
    /// before that moment, in milliseconds after `epoch`.
    caught_up: AtomicU64,
    epoch: Instant,
    /// Watchers that want values; the tail loads entries only while some do.
    value_watchers: AtomicUsize,
    /// Open Watch streams.
    watchers: AtomicUsize,
    /// Open Watch streams by client address, for `watch.max_per_client`.
    per_client: Mutex<HashMap<IpAddr, u32>>,
    max_per_client: u32,
    /// Changes a watcher's queue holds.
    buffer: usize,
    /// Reads the hot tier could not answer because the tail lagged.
    bypassed: AtomicU64,
    /// `roadie.watch.lag`: commit to tail, per change.
    lag: opentelemetry::metrics::Histogram<f64>,
    /// Another process committed changes the tail may not have (Postgres).
    heard: Notify,
}

impl Feed {
    /// A feed whose tail starts after `revision`, recording each change's
    /// commit-to-tail time in `lag`.
    pub fn new(
        settings: &Settings,
        revision: u64,
        lag: opentelemetry::metrics::Histogram<f64>,
    ) -> Feed {
        let (sender, _) = broadcast::channel(settings.watch.buffer);
        let hot = &settings.hot_tier;
        Feed {
            ring: Mutex::new(Ring {
                last: revision,
                sender,
                fanout: Fanout::default(),
            }),
            hot: hot.enabled.then(|| HotTier::new(hot.max_bytes)),
            max_lag: hot.max_lag,
            caught_up: AtomicU64::new(0),
            epoch: Instant::now(),
            value_watchers: AtomicUsize::new(0),
            watchers: AtomicUsize::new(0),
            per_client: Mutex::default(),
            max_per_client: settings.watch.max_per_client,
            buffer: settings.watch.buffer,
            bypassed: AtomicU64::new(0),
            lag,
            heard: Notify::new(),
        }
    }

    /// A notification on [`roadie_store::CHANGE_CHANNEL`] (Postgres; the
    /// server's listener calls it): wakes the tail unless it has applied the
    /// revision named (most often this server's own, taken as it
    /// committed). An empty payload (a reconnect) wakes it: whatever was
    /// missed is in the log.
    pub fn notified(&self, payload: &str) {
        if notified_revision(payload).is_none_or(|r| r > self.last()) {
            self.heard.notify_one();
        }
    }

    /// The latest revision the tail has applied.
    pub fn last(&self) -> u64 {
        self.lock().last
    }

    /// A receiver of every change after the returned revision.
    pub fn subscribe(&self) -> (u64, broadcast::Receiver<Arc<Live>>) {
        let ring = self.lock();
        (ring.last, ring.sender.subscribe())
    }

    /// The changes `filter` matches after the returned revision, until the
    /// subscription is dropped.
    pub fn register(self: &Arc<Self>, filter: Arc<Filter>) -> (u64, Registered) {
        let mut ring = self.lock();
        let subscription = ring.fanout.add(filter, self.buffer);
        (
            ring.last,
            Registered {
                feed: self.clone(),
                subscription,
            },
        )
    }

    /// The hot tier, told of this server's own writes at once.
    pub fn hot_tier(&self) -> Option<&HotTier> {
        self.hot.as_ref()
    }

    /// The hot tier if it may answer reads now: the tail confirmed less than
    /// `hot_tier.max_lag` ago that it was caught up.
    pub fn hot(&self) -> Option<&HotTier> {
        let hot = self.hot.as_ref()?;
        let confirmed = Duration::from_millis(self.caught_up.load(Ordering::Acquire));
        if self.epoch.elapsed().saturating_sub(confirmed) < self.max_lag {
            Some(hot)
        } else {
            self.bypassed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// The hot tier's figures, if it is on.
    pub fn hot_stats(&self) -> Option<roadie_proto::v1::HotTierStats> {
        let hot = self.hot.as_ref()?;
        Some(hot.stats(self.bypassed.load(Ordering::Relaxed)))
    }

    /// Open Watch streams.
    pub fn watchers(&self) -> u64 {
        self.watchers.load(Ordering::Relaxed) as u64
    }

    /// Counts a watcher while the guard lives (and, with `values`, one that
    /// wants values: the tail loads entries only while some do); `None` when
    /// `client` already holds `watch.max_per_client` watches.
    pub fn watcher(self: &Arc<Self>, values: bool, client: Option<IpAddr>) -> Option<WatcherGuard> {
        if let Some(client) = client {
            let mut per_client = self
                .per_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let open = per_client.entry(client).or_default();
            if *open >= self.max_per_client {
                return None;
            }
            *open += 1;
        }
        self.watchers.fetch_add(1, Ordering::AcqRel);
        if values {
            self.value_watchers.fetch_add(1, Ordering::AcqRel);
        }
        Some(WatcherGuard {
            feed: self.clone(),
            values,
            client,
        })
    }

    /// The most watches one client may hold open.
    pub fn max_per_client(&self) -> u32 {
        self.max_per_client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Both fields are written together under the lock; never half-done.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks every change committed before `started` as applied.
    fn confirm(&self, started: Instant) {
        let at = started.saturating_duration_since(self.epoch).as_millis();
        self.caught_up
            .fetch_max(u64::try_from(at).unwrap_or(u64::MAX), Ordering::AcqRel);
    }

    /// Reads the log from the tail's position to its end and hands every
    /// change to the hot tier and the watchers.
    async fn catch_up(&self, store: &Store) -> Result<(), StoreError> {
        loop {
            let after = self.last();
            let changes = store.change_list_since(after, PAGE).await?;
            let Some(first) = changes.first() else {
                return Ok(());
            };
            if first.revision != after + 1 {
                // The log was compacted past the tail (it was stopped longer
                // than the retention): which keys changed is unknown.
                tracing::warn!(
                    after,
                    next = first.revision,
                    "change log compacted past this server's tail"
                );
                if let Some(hot) = &self.hot {
                    hot.clear();
                }
            }
            let full = changes.len() == PAGE as usize;
            let values_loaded = self.value_watchers.load(Ordering::Acquire) > 0;
            let entries = if values_loaded {
                load_entries(store, &changes).await?
            } else {
                Default::default()
            };
            self.apply(changes, entries, values_loaded);
            if !full {
                return Ok(());
            }
        }
    }

    /// Takes a batch this server committed as the log's next changes, when
    /// it is: the tail's last change is the one before the batch's first,
    /// and no watcher wants values (those are read with the log). Whether
    /// the tail now holds the batch; `false` asks for a read of the log.
    fn take_own(&self, committed: &Committed) -> bool {
        let (Some(first), Some(last)) = (committed.changes.first(), committed.changes.last())
        else {
            return true;
        };
        // Only this task moves the tail: what it reads here stays true.
        let tail = self.last();
        if last.revision <= tail {
            return true;
        }
        if first.revision != tail + 1 || self.value_watchers.load(Ordering::Acquire) > 0 {
            return false;
        }
        self.apply(committed.changes.clone(), Default::default(), false);
        self.confirm(Instant::from_std(committed.began));
        true
    }

    /// Hands `changes`, the log's next ones in order, to the hot tier and
    /// every watcher (with their entries when `values_loaded`).
    fn apply(
        &self,
        changes: Vec<Change>,
        mut entries: HashMap<(String, u64), Entry>,
        values_loaded: bool,
    ) {
        if let Some(hot) = &self.hot {
            for change in &changes {
                hot.changed(&change.key, change.revision);
            }
        }
        let now = roadie_store::now_ms();
        for change in &changes {
            self.lag.record((now - change.at).max(0) as f64, &[]);
        }
        let mut ring = self.lock();
        for change in changes {
            let entry = entries
                .remove(&(change.key.clone(), change.revision))
                .filter(|_| carries_value(change.kind));
            ring.last = change.revision;
            let live = Arc::new(Live {
                change,
                entry,
                values_loaded,
            });
            ring.fanout.dispatch(&live);
            // No receivers is fine: no Fetch is waiting.
            let _ = ring.sender.send(live);
        }
    }

    /// Tails the log until `cancel` fires.
    pub async fn run(self: Arc<Self>, store: Store, settings: Settings, cancel: CancellationToken) {
        let mut committed = store.committed();
        let mut own = Some(store.own_commits());
        let interval = match store.backend() {
            Backend::Sqlite => settings.watch.poll_interval,
            Backend::Postgres => settings.watch.fallback_poll,
        };
        let mut version = DataVersionCheck::default();
        // SQLite: read the log's version quickly while commits keep coming.
        let mut pace = PollPace::new(interval);
        let mut failing = false;
        // Whether to read the log now: not for a batch of this server's own
        // the tail took as it committed.
        let mut read = true;
        loop {
            if read {
                let started = Instant::now();
                let result = match version.changed(&store).await {
                    Ok(false) => Ok(()),
                    Ok(true) => {
                        if store.backend() == Backend::Sqlite {
                            pace.moved();
                        }
                        self.catch_up(&store).await
                    }
                    Err(error) => Err(error),
                };
                match result {
                    Ok(()) => {
                        self.confirm(started);
                        if failing {
                            tracing::info!("change log readable again");
                            failing = false;
                        }
                    }
                    // The store closed under the tail (the server is stopping:
                    // its committer's end woke the tail): nothing left to read.
                    Err(_) if store.is_closed() => return,
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "cannot read the change log; the hot tier is bypassed until it can");
                            failing = true;
                        }
                        version.forget();
                    }
                }
            }
            let Some(wake) = self
                .next_wake(&mut own, &mut committed, &self.heard, &pace, &cancel)
                .await
            else {
                return;
            };
            read = wake;
        }
    }

    /// Waits for the next reason to look at the log: `Some(true)` to read
    /// it, `Some(false)` when this server's own batch was taken as it
    /// committed, `None` once `cancel` fired.
    async fn next_wake(
        &self,
        own: &mut Option<broadcast::Receiver<Arc<Committed>>>,
        committed: &mut tokio::sync::watch::Receiver<u64>,
        heard: &Notify,
        pace: &PollPace,
        cancel: &CancellationToken,
    ) -> Option<bool> {
        tokio::select! {
            // Own batches first: the announcement of one taken needs no read.
            biased;
            () = cancel.cancelled() => None,
            taken = recv_own(own), if own.is_some() => Some(match taken {
                Ok(batch) => !self.take_own(&batch),
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                // The store is closing; its last commits are in the log.
                Err(broadcast::error::RecvError::Closed) => {
                    *own = None;
                    true
                }
            }),
            _ = committed.changed() => Some(*committed.borrow_and_update() > self.last()),
            () = heard.notified() => Some(true),
            () = tokio::time::sleep(pace.next()) => Some(true),
        }
    }
}

/// The next batch of `own`, which is open (see [`Feed::next_wake`]).
async fn recv_own(
    own: &mut Option<broadcast::Receiver<Arc<Committed>>>,
) -> Result<Arc<Committed>, broadcast::error::RecvError> {
    match own {
        Some(own) => own.recv().await,
        None => Err(broadcast::error::RecvError::Closed),
    }
}

/// A watcher's place in the fan-out; leaves it when dropped.
#[derive(Debug)]
pub struct Registered {
    feed: Arc<Feed>,
    /// The changes for this watcher.
    pub subscription: Subscription,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.feed.lock().fanout.remove(self.subscription.id);
    }
}

/// Uncounts a watcher when dropped.
#[derive(Debug)]
pub struct WatcherGuard {
    feed: Arc<Feed>,
    values: bool,
    client: Option<IpAddr>,
}

impl WatcherGuard {
    /// Whether this watcher wants values.
    pub fn values(&self) -> bool {
        self.values
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.feed.watchers.fetch_sub(1, Ordering::AcqRel);
        if self.values {
            self.feed.value_watchers.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(client) = self.client {
            let mut per_client = self
                .feed
                .per_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(open) = per_client.get_mut(&client) {
                *open -= 1;
                if *open == 0 {
                    per_client.remove(&client);
                }
            }
        }
    }
}

/// The entries written by `changes` (PUT and FETCH), by key and revision,
/// still as they were at their change.
pub async fn load_entries(
    store: &Store,
    changes: &[Change],
) -> Result<std::collections::HashMap<(String, u64), Entry>, StoreError> {
    let keys: Vec<String> = changes
        .iter()
        .filter(|c| carries_value(c.kind))
        .map(|c| c.key.clone())
        .collect();
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let found = store.entry_get_many(&keys).await?;
    Ok(found
        .into_iter()
        .map(|e| ((e.key.clone(), e.revision), e))
        .collect())
}

/// Whether the log may have changed since the last look: always on
/// Postgres (the wake-ups say so); on SQLite, whether `data_version` moved.
#[derive(Debug, Default)]
struct DataVersionCheck {
    connection: Option<roadie_store::DataVersion>,
    seen: Option<i64>,
}

impl DataVersionCheck {
    async fn changed(&mut self, store: &Store) -> Result<bool, StoreError> {
        if store.backend() != Backend::Sqlite {
            return Ok(true);
        }
        if self.connection.is_none() {
            self.connection = store.data_version().await?;
        }
        let Some(connection) = self.connection.as_mut() else {
            return Ok(true);
        };
        // Read before the log: a commit after this read moves it again.
        let now = connection.read().await?;
        let moved = self.seen != Some(now);
        self.seen = Some(now);
        Ok(moved)
    }

    /// After a failure: reconnect and read the log on the next check.
    fn forget(&mut self) {
        self.connection = None;
        self.seen = None;
    }
}
