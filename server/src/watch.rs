//! `Cache.Watch`: one task per watcher, reading history from the store
//! until it reaches the feed's tail, then the changes the feed's fan-out
//! hands it (only those its filter matches).
//!
//! The stream's first message is a progress message with the position it
//! starts from (for "now", the latest committed revision): every change
//! after it follows, so a client that has it sees every later write. Every
//! matching change after the position follows exactly once, in revision
//! order: history pages are gapless, so the watcher checks each one is the
//! next and fails loudly rather than skip. Progress messages keep a quiet
//! watcher's resume point recent.
//!
//! Endings, each telling the client where to resume:
//! - OUT_OF_RANGE: the start is older than the retained log, with the
//!   oldest retained revision ([`roadie_proto::revision_compacted`]);
//! - RESOURCE_EXHAUSTED: the client read so slowly that it fell more than
//!   `watch.buffer` matching changes behind the tail (or, at the start, it
//!   already holds `watch.max_per_client` watches);
//! - UNAVAILABLE: the server is shutting down.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use roadie_proto::v1 as pb;
use roadie_store::{Change, Entry, now_ms};
use tokio::{sync::mpsc, time::Instant};
use tonic::Status;

use crate::{
    convert::{change_kind_from_proto, change_kind_to_proto, entry_to_proto, timestamp},
    error::ApiError,
    fanout::{Filter, Live},
    feed::{self, PAGE},
    state::AppState,
    validate::{self, FieldError},
};

/// Messages queued for one client beyond what HTTP/2 already buffers.
const QUEUE: usize = 64;

/// A validated Watch request.
#[derive(Debug)]
pub struct WatchPlan {
    filter: Arc<Filter>,
    after: Option<u64>,
    include_values: bool,
}

/// Checks a Watch request against the limits and the configuration.
pub fn plan(state: &AppState, req: pb::WatchRequest) -> Result<WatchPlan, ApiError> {
    if !req.key_prefix.is_empty() {
        validate::key("key_prefix", &req.key_prefix)?;
    }
    validate::tags("tags", &req.tags)?;
    for (i, policy) in req.policies.iter().enumerate() {
        if !state.settings.policies.contains_key(policy) {
            return Err(FieldError::new(
                format!("policies[{i}]"),
                format!("unknown policy {}", validate::quoted(policy)),
            )
            .into());
        }
    }
    for (i, provider) in req.providers.iter().enumerate() {
        if !state.settings.providers.contains_key(provider) {
            return Err(FieldError::new(
                format!("providers[{i}]"),
                format!("unknown provider {}", validate::quoted(provider)),
            )
            .into());
        }
    }
    let mut kinds = HashSet::new();
    for (i, &kind) in req.kinds.iter().enumerate() {
        let kind = pb::ChangeKind::try_from(kind)
            .ok()
            .and_then(change_kind_from_proto)
            .ok_or_else(|| {
                FieldError::new(
                    format!("kinds[{i}]"),
                    format!("{kind} is not a change kind"),
                )
            })?;
        kinds.insert(kind);
    }
    Ok(WatchPlan {
        filter: Arc::new(Filter {
            prefix: req.key_prefix,
            tags: req.tags.into_iter().collect(),
            policies: req.policies.into_iter().collect(),
            providers: req.providers.into_iter().collect(),
            kinds,
        }),
        after: req.after_revision,
        include_values: req.include_values,
    })
}

/// Starts the watcher's task; its messages arrive on the returned receiver.
/// A start older than the retained log, or one past the client's share of
/// watches, fails here, before the stream opens.
pub async fn start(
    state: Arc<AppState>,
    plan: WatchPlan,
    client: Option<IpAddr>,
) -> Result<mpsc::Receiver<Result<pb::WatchResponse, Status>>, Status> {
    let guard = state
        .feed
        .watcher(plan.include_values, client)
        .ok_or_else(|| {
            ApiError::ResourceExhausted(format!(
                "this client already holds {} open watches (watch.max_per_client); \
                 close one, or combine filters into fewer watches",
                state.feed.max_per_client()
            ))
        })?;
    let after = match plan.after {
        Some(after) => {
            let oldest = state.store.change_oldest().await.map_err(ApiError::from)?;
            if after.saturating_add(1) < oldest {
                return Err(ApiError::Compacted { after, oldest }.into());
            }
            after
        }
        // "Now" is the latest commit, this server's own writes included,
        // even before the tail has read them.
        None => state
            .store
            .revision_current()
            .await
            .map_err(ApiError::from)?,
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut watcher = Watcher {
        guard,
        state,
        filter: plan.filter,
        tx,
        pos: 0,
        last_sent: Instant::now(),
    };
    tokio::spawn(async move {
        let ending = watcher.run(after).await;
        if let Err(status) = ending {
            // The client may be gone already; nothing to tell then.
            let _ = watcher.tx.send(Err(status)).await;
        }
    });
    Ok(rx)
}

/// Why a watcher stopped without an error for the client.
struct Gone;

struct Watcher {
    state: Arc<AppState>,
    filter: Arc<Filter>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    /// Every change up to here was sent or filtered out.
    pos: u64,
    last_sent: Instant,
    guard: feed::WatcherGuard,
}

impl Watcher {
    /// Streams until the client goes (Ok) or the watch must end (Err).
    async fn run(&mut self, after: u64) -> Result<(), Status> {
        let feed = self.state.feed.clone();
        self.pos = after;
        if self.progress().await.is_err() {
            return Ok(());
        }
        // History first, from the store, until close to the tail, so the
        // ring does not overflow while history is read.
        while feed.last().saturating_sub(self.pos) > u64::from(PAGE) {
            if self.history(u64::MAX).await?.is_err() {
                return Ok(());
            }
        }
        let (last, mut registered) = feed.register(self.filter.clone());
        while self.pos < last {
            if self.history(last).await?.is_err() {
                return Ok(());
            }
        }
        let interval = self.state.settings.watch.progress_interval;
        let stopping = self.state.stopping.clone();
        let client = self.tx.clone();
        loop {
            let changes = &mut registered.subscription.changes;
            tokio::select! {
                received = changes.recv() => match received {
                    Some(live) => {
                        if self.live(&live).await?.is_err() {
                            return Ok(());
                        }
                    }
                    None if registered.subscription.lagged() => return Err(self.fell_behind()),
                    None => return Err(self.shutting_down()),
                },
                () = tokio::time::sleep_until(self.last_sent + interval) => {
                    // Every matching change up to `last` is queued by now:
                    // send those, then the position covers the rest.
                    let last = feed.last();
                    while let Ok(live) = registered.subscription.changes.try_recv() {
                        if self.live(&live).await?.is_err() {
                            return Ok(());
                        }
                    }
                    // Cut off meanwhile, the queue lost some of them: the
                    // position stays at the last change sent.
                    if registered.subscription.lagged() {
                        return Err(self.fell_behind());
                    }
                    self.pos = self.pos.max(last);
                    if self.progress().await.is_err() {
                        return Ok(());
                    }
                }
                () = stopping.cancelled() => return Err(self.shutting_down()),
                () = client.closed() => return Ok(()),
            }
        }
    }

    /// The end of a watcher whose queue overflowed, naming the revision
    /// to resume after: the last it was sent.
    fn fell_behind(&self) -> Status {
        ApiError::ResourceExhausted(format!(
            "this watcher fell more than {} changes behind; resume with after_revision {}",
            self.state.settings.watch.buffer, self.pos
        ))
        .into()
    }

    fn shutting_down(&self) -> Status {
        ApiError::ShuttingDown(format!(
            "the server is shutting down; resume with after_revision {}",
            self.pos
        ))
        .into()
    }

    /// Sends the changes after `pos` and up to `until` from the store, one
    /// page. The outer error ends the watch; the inner one means the client left.
    async fn history(&mut self, until: u64) -> Result<Result<(), Gone>, Status> {
        let store = &self.state.store;
        let changes = store
            .change_list_since(self.pos, PAGE)
            .await
            .map_err(ApiError::from)?;
        let changes: Vec<Change> = changes
            .into_iter()
            .take_while(|c| c.revision <= until)
            .collect();
        if changes.is_empty() {
            // Compacted away since the watch started (the log cannot end
            // before the tail otherwise).
            let oldest = store.change_oldest().await.map_err(ApiError::from)?;
            return Err(ApiError::Compacted {
                after: self.pos,
                oldest,
            }
            .into());
        }
        let mut entries = if self.guard.values() {
            feed::load_entries(store, &changes)
                .await
                .map_err(ApiError::from)?
        } else {
            HashMap::new()
        };
        for change in changes {
            if change.revision != self.pos + 1 {
                // Only compaction past a running watcher can make a hole.
                let status = ApiError::Compacted {
                    after: self.pos,
                    oldest: change.revision,
                }
                .into();
                let _ = self.tx.send(Err(status)).await;
                return Ok(Err(Gone));
            }
            self.pos = change.revision;
            if !self.filter.matches(&change) {
                continue;
            }
            let entry = entries.remove(&(change.key.clone(), change.revision));
            if self.send_change(change, entry).await.is_err() {
                return Ok(Err(Gone));
            }
        }
        Ok(Ok(()))
    }

    /// Sends one change the fan-out matched, skipping what history already
    /// sent.
    async fn live(&mut self, live: &Live) -> Result<Result<(), Gone>, Status> {
        let change = &live.change;
        if change.revision <= self.pos {
            return Ok(Ok(()));
        }
        self.pos = change.revision;
        let mut entry = live.entry.clone();
        if self.guard.values() && !live.values_loaded && feed::carries_value(change.kind) {
            // Subscribed just as the tail stopped loading values: look it up.
            entry = self
                .state
                .store
                .entry_get(&change.key)
                .await
                .map_err(ApiError::from)?
                .filter(|e| e.revision == change.revision);
        }
        Ok(self.send_change(change.clone(), entry).await)
    }

    /// Sends a change that passed the filter.
    async fn send_change(&mut self, change: Change, entry: Option<Entry>) -> Result<(), Gone> {
        let now = now_ms();
        let message = pb::WatchResponse {
            event: Some(pb::watch_response::Event::Change(pb::Change {
                revision: change.revision,
                kind: change_kind_to_proto(change.kind).into(),
                at: Some(timestamp(change.at)),
                provider: change.provider.unwrap_or_default(),
                entry: entry
                    .filter(|_| self.guard.values())
                    .map(|e| entry_to_proto(e, now)),
                key: change.key,
                policy: change.policy,
                tags: change.tags,
            })),
        };
        self.send(message).await
    }

    async fn progress(&mut self) -> Result<(), Gone> {
        let message = pb::WatchResponse {
            event: Some(pb::watch_response::Event::Progress(pb::Progress {
                revision: self.pos,
            })),
        };
        self.send(message).await
    }

    async fn send(&mut self, message: pb::WatchResponse) -> Result<(), Gone> {
        self.last_sent = Instant::now();
        self.tx.send(Ok(message)).await.map_err(|_| Gone)
    }
}
