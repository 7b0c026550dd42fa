//! `roadie.v1.Cache`: every RPC validates its request, talks to the store,
//! and maps failures through [`ApiError`]. The trait implementation here
//! hands each call to its room: `reads` (Get, BatchGet, GetRandom),
//! `list` (ListEntries), `writes` (Put, Delete, Invalidate), `fetch`
//! (Fetch and BatchFetch: plan, enqueue, wait), `publish` (PublishEvent),
//! `stats` (Stats); Watch goes to [`crate::watch`]. What several share (read options, the hot tier's
//! read-through, answers) stays in this file.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures::Stream;
use roadie_proto::v1::{self as pb, cache_server::Cache};
use roadie_store::{ChangeKind, Entry, Selector, now_ms};
use tonic::{Request, Response, Status};

use crate::{
    convert::entry_to_proto,
    error::ApiError,
    state::AppState,
    stats::Answer,
    validate::{self, FieldError},
    watch,
};

mod fetch;
mod list;
mod publish;
mod reads;
mod stats;
mod writes;

/// The Cache service.
#[derive(Debug, Clone)]
pub struct CacheService {
    state: Arc<AppState>,
}

/// What a reader accepts.
struct ReadOptions {
    max_stale_ms: i64,
    min_confidence: u8,
    fingerprint: String,
    miss_policy: String,
}

impl CacheService {
    /// The service over `state`.
    pub fn new(state: Arc<AppState>) -> CacheService {
        CacheService { state }
    }

    fn read_options(
        &self,
        max_stale: Option<&prost_types::Duration>,
        min_confidence: u32,
        fingerprint: String,
        policy: String,
    ) -> Result<ReadOptions, ApiError> {
        let max_stale_ms = max_stale
            .map(|d| validate::duration_ms("max_stale", d))
            .transpose()?
            .unwrap_or(0);
        let min_confidence = validate::confidence("min_confidence", min_confidence)?;
        validate::optional_text("fingerprint", &fingerprint, validate::MAX_FINGERPRINT_BYTES)?;
        let miss_policy = if policy.is_empty() {
            roadie_config::GENERIC_POLICY.to_owned()
        } else {
            self.configured_policy("policy", policy)?
        };
        Ok(ReadOptions {
            max_stale_ms,
            min_confidence,
            fingerprint,
            miss_policy,
        })
    }

    fn configured_policy(&self, field: &str, policy: String) -> Result<String, ApiError> {
        if self.state.settings.policies.contains_key(&policy) {
            return Ok(policy);
        }
        let known: Vec<&str> = self
            .state
            .settings
            .policies
            .keys()
            .map(String::as_str)
            .collect();
        Err(FieldError::new(
            field,
            format!(
                "unknown policy {}; configured: {}",
                validate::quoted(&policy),
                known.join(", ")
            ),
        )
        .into())
    }

    /// An optional provider filter: empty, or a configured provider.
    fn known_provider(&self, field: &str, provider: &str) -> Result<(), ApiError> {
        if provider.is_empty() || self.state.settings.providers.contains_key(provider) {
            return Ok(());
        }
        Err(FieldError::new(
            field,
            format!("unknown provider {}", validate::quoted(provider)),
        )
        .into())
    }

    /// One entry, from the hot tier when it may answer, else from the store
    /// (keeping the answer in the hot tier).
    async fn read_through(&self, key: &str) -> Result<Option<Entry>, ApiError> {
        let Some(hot) = self.state.feed.hot() else {
            return Ok(self.state.store.entry_get(key).await?);
        };
        if let Some(slot) = hot.get(key) {
            return Ok(slot.as_ref().clone());
        }
        let ticket = hot.ticket(key);
        let entry = self.state.store.entry_get(key).await?;
        hot.fill(key, ticket, entry.clone());
        Ok(entry)
    }

    /// The entries of `keys` that exist, by key, as [`Self::read_through`].
    async fn read_many_through(&self, keys: &[String]) -> Result<HashMap<String, Entry>, ApiError> {
        let Some(hot) = self.state.feed.hot() else {
            let found = self.state.store.entry_get_many(keys).await?;
            return Ok(found.into_iter().map(|e| (e.key.clone(), e)).collect());
        };
        let mut by_key = HashMap::new();
        let mut missing = Vec::new();
        for key in keys {
            match hot.get(key) {
                Some(slot) => {
                    if let Some(entry) = slot.as_ref() {
                        by_key.insert(key.clone(), entry.clone());
                    }
                }
                None => missing.push((key.clone(), hot.ticket(key))),
            }
        }
        if missing.is_empty() {
            return Ok(by_key);
        }
        let wanted: Vec<String> = missing.iter().map(|(key, _)| key.clone()).collect();
        let found = self.state.store.entry_get_many(&wanted).await?;
        let mut found: HashMap<String, Entry> =
            found.into_iter().map(|e| (e.key.clone(), e)).collect();
        for (key, ticket) in missing {
            let entry = found.remove(&key);
            hot.fill(&key, ticket, entry.clone());
            if let Some(entry) = entry {
                by_key.insert(key, entry);
            }
        }
        Ok(by_key)
    }

    /// After this server's own write of `key` at `revision`: its next read
    /// sees it.
    fn forget(&self, key: &str, revision: u64) {
        if let Some(hot) = self.state.feed.hot_tier() {
            hot.changed(key, revision);
        }
    }

    /// Deletes every entry `selector` matches and forgets them in the hot
    /// tier; the count and the last revision.
    async fn invalidate(&self, selector: &Selector) -> Result<(u64, u64), ApiError> {
        let (counts, revision) = self.invalidate_each(std::slice::from_ref(selector)).await?;
        Ok((counts.iter().sum(), revision))
    }

    /// Deletes every entry each selector matches, in one commit, and
    /// forgets them in the hot tier; the count of each and the last
    /// revision.
    async fn invalidate_each(&self, selectors: &[Selector]) -> Result<(Vec<u64>, u64), ApiError> {
        let (counts, revision) = self
            .state
            .store
            .entry_invalidate_each(selectors, ChangeKind::Invalidate, now_ms())
            .await?;
        for (selector, count) in selectors.iter().zip(&counts) {
            if *count > 0 {
                self.forget_selected(selector, revision);
            }
        }
        Ok((counts, revision))
    }

    /// After this server's own invalidation of many keys, committed by
    /// `revision`.
    fn forget_selected(&self, selector: &Selector, revision: u64) {
        if let Some(hot) = self.state.feed.hot_tier() {
            match selector {
                Selector::Key(key) => hot.changed(key, revision),
                _ => hot.clear(),
            }
        }
    }

    /// Classifies what a read found, counts it, and builds the answer.
    fn answer(&self, entry: Option<Entry>, read: &ReadOptions, now: i64) -> pb::GetResponse {
        let status = lookup(entry.as_ref(), read, now);
        self.respond(status, entry, &read.miss_policy, now)
    }

    /// Counts an answer and builds it (no entry for a miss).
    fn respond(
        &self,
        status: pb::LookupStatus,
        entry: Option<Entry>,
        miss_policy: &str,
        now: i64,
    ) -> pb::GetResponse {
        let policy = entry.as_ref().map_or(miss_policy, |e| e.policy.as_str());
        let answer = match status {
            pb::LookupStatus::Hit => Answer::Hit,
            pb::LookupStatus::Stale => Answer::Stale,
            pb::LookupStatus::Negative => Answer::Negative,
            _ => Answer::Miss,
        };
        self.state.stats.record(policy, answer);
        if answer == Answer::Miss {
            return pb::GetResponse {
                status: status.into(),
                entry: None,
            };
        }
        let entry = entry.map(|e| {
            self.state.access.record(&e.key, now);
            entry_to_proto(e, now)
        });
        pb::GetResponse {
            status: status.into(),
            entry,
        }
    }
}

/// What a read finds in `entry` for a reader asking `read`.
fn lookup(entry: Option<&Entry>, read: &ReadOptions, now: i64) -> pb::LookupStatus {
    match entry {
        None => pb::LookupStatus::Miss,
        Some(e)
            if !read.fingerprint.is_empty()
                && e.fingerprint.as_deref() != Some(read.fingerprint.as_str()) =>
        {
            pb::LookupStatus::Miss
        }
        Some(e) if e.confidence < read.min_confidence => pb::LookupStatus::Miss,
        Some(e) if e.negative => {
            if e.is_expired(now) {
                pb::LookupStatus::Miss
            } else {
                pb::LookupStatus::Negative
            }
        }
        Some(e) => match e.expires_at {
            Some(at) if at <= now => {
                if now - at <= read.max_stale_ms && read.max_stale_ms > 0 {
                    pb::LookupStatus::Stale
                } else {
                    pb::LookupStatus::Miss
                }
            }
            _ => pb::LookupStatus::Hit,
        },
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Cache for CacheService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        reads::get(self, request).await
    }

    async fn batch_get(
        &self,
        request: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        reads::batch_get(self, request).await
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        writes::put(self, request).await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        writes::delete(self, request).await
    }

    async fn invalidate(
        &self,
        request: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        writes::invalidate(self, request).await
    }

    async fn get_random(
        &self,
        request: Request<pb::GetRandomRequest>,
    ) -> Result<Response<pb::GetRandomResponse>, Status> {
        reads::get_random(self, request).await
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        fetch::fetch(self, request).await
    }

    async fn batch_fetch(
        &self,
        request: Request<pb::BatchFetchRequest>,
    ) -> Result<Response<pb::BatchFetchResponse>, Status> {
        fetch::batch_fetch(self, request).await
    }

    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventResponse>, Status> {
        publish::publish_event(self, request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let client = request.remote_addr().map(|addr| addr.ip());
        let plan = watch::plan(&self.state, request.into_inner())?;
        let messages = watch::start(self.state.clone(), plan, client).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(messages),
        )))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        stats::stats(self, request).await
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        list::list_entries(self, request).await
    }
}
