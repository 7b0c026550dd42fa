//! Stats: entries, bytes and answers per policy, providers, the tail, the
//! hot tier and the WAL.

use std::time::UNIX_EPOCH;

use roadie_proto::v1 as pb;
use roadie_store::now_ms;
use tonic::{Request, Response, Status};

use super::CacheService;
use crate::{convert::timestamp, error::ApiError};

pub(super) async fn stats(
    service: &CacheService,
    _request: Request<pb::StatsRequest>,
) -> Result<Response<pb::StatsResponse>, Status> {
    let usage = service
        .state
        .store
        .entry_usage()
        .await
        .map_err(ApiError::from)?;
    let revision = service
        .state
        .store
        .revision_current()
        .await
        .map_err(ApiError::from)?;
    let mut counters = service.state.stats.snapshot();
    let mut rows: Vec<pb::PolicyStats> = Vec::new();
    let mut names: Vec<String> = service.state.settings.policies.keys().cloned().collect();
    names.extend(usage.iter().map(|u| u.policy.clone()));
    names.extend(counters.keys().cloned());
    names.sort();
    names.dedup();
    for name in names {
        let used = usage.iter().find(|u| u.policy == name);
        let c = counters.remove(&name).unwrap_or_default();
        rows.push(pb::PolicyStats {
            budget_bytes: service
                .state
                .settings
                .policies
                .get(&name)
                .map_or(0, |p| p.max_bytes),
            entries: used.map_or(0, |u| u.entries),
            bytes: used.map_or(0, |u| u.bytes),
            raw_bytes: used.map_or(0, |u| u.raw_bytes),
            hits: c.hits,
            misses: c.misses,
            stale: c.stale,
            negative: c.negative,
            evicted: c.evicted,
            policy: name,
        });
    }
    let started_ms = service
        .state
        .started_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Ok(Response::new(pb::StatsResponse {
        policies: rows,
        providers: service.provider_stats().await?,
        revision,
        started_at: Some(timestamp(started_ms)),
        backend: service.state.store.backend().name().to_owned(),
        hot_tier: service.state.feed.hot_stats(),
        tail_revision: service.state.feed.last(),
        watchers: service.state.feed.watchers(),
        wal: service.state.store.wal_bytes().map(|bytes| pb::WalStats {
            bytes,
            limit_bytes: service.state.settings.store.wal_size_limit,
        }),
    }))
}

impl CacheService {
    /// Each configured provider's limit, backlog, next allowed request and
    /// the total time its jobs waited, from the state all workers share.
    async fn provider_stats(&self) -> Result<Vec<pb::ProviderStats>, ApiError> {
        let states = self.state.store.provider_stats().await?;
        let now = now_ms();
        Ok(self
            .state
            .settings
            .providers
            .iter()
            .map(|(name, provider)| {
                let state = states.iter().find(|s| &s.provider == name);
                // The rate as the workers spend it (none for a provider that is off).
                let rate = self.state.providers.get(name).and_then(|p| p.rate);
                let next = state
                    .map_or(now, |s| {
                        let allowed = rate.map_or(s.tat, |r| r.next_at(s.tat));
                        allowed.max(s.paused_until)
                    })
                    .max(now);
                pb::ProviderStats {
                    provider: name.clone(),
                    rate_per_second: provider.rate_per_second,
                    backlog: state.map_or(0, |s| s.backlog),
                    next_request_at: Some(timestamp(next)),
                    total_wait: Some(prost_types::Duration {
                        seconds: state.map_or(0, |s| s.waited_ms / 1000),
                        nanos: state.map_or(0, |s| (s.waited_ms % 1000) as i32 * 1_000_000),
                    }),
                }
            })
            .collect())
    }
}
