//! The server's OpenTelemetry instruments, and the probe that keeps its
//! readiness honest.
//!
//! Per-call figures are recorded where they happen (`rpc.server.duration`
//! by the call layer, `roadie.watch.lag` by the feed). Everything the
//! server counts anyway (answers by policy, evictions, the hot tier,
//! watchers, the pool) is read by observable instruments when a reader
//! collects, so the request path pays nothing for them. What only the
//! store knows (queue depth, the oldest available job, entries and bytes
//! against each budget, paused providers, rate-limit waits) is sampled by
//! [`probe`] into a snapshot those instruments read.
//!
//! Without a meter provider (no OTLP endpoint, no admin port) every
//! instrument is the API's no-op.

use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use opentelemetry::{
    KeyValue, global,
    metrics::{AsyncInstrument, Counter, Histogram, Meter},
};
use roadie_store::{JobState, PolicyUsage, ProviderState, QueueDepth, now_ms};
use roadie_telemetry::admin::Readiness;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How often the store is asked whether it answers (readiness).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The meter every server instrument comes from.
pub(crate) fn meter() -> Meter {
    global::meter("roadie-server")
}

/// `rpc.server.duration`, in milliseconds (OpenTelemetry's RPC conventions).
pub(crate) fn rpc_duration() -> Histogram<f64> {
    meter()
        .f64_histogram("rpc.server.duration")
        .with_description("Duration of inbound RPCs, to the response headers")
        .with_unit("ms")
        .with_boundaries(vec![
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
            5000.0, 10000.0,
        ])
        .build()
}

/// `roadie.watch.lag`: from a change's commit to the tail handing it on.
pub(crate) fn watch_lag() -> Histogram<f64> {
    meter()
        .f64_histogram("roadie.watch.lag")
        .with_description("Time from a change's commit to this server's tail of the change log")
        .with_unit("ms")
        .with_boundaries(vec![
            1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        ])
        .build()
}

/// `roadie.auth.decisions`: calls allowed and refused by the token check,
/// by `outcome` (allowed, unauthenticated, permission_denied) and `role`
/// (the role needed).
pub(crate) fn auth_decisions() -> Counter<u64> {
    meter()
        .u64_counter("roadie.auth.decisions")
        .with_description("Calls allowed or refused by the token check")
        .build()
}

/// `roadie.transport.closed`: connections and calls the transport limits
/// ended, by `reason` (connection_limit, handshake, idle, request_stalled,
/// request_bytes).
pub(crate) fn transport_closed() -> Counter<u64> {
    meter()
        .u64_counter("roadie.transport.closed")
        .with_description("Connections and calls ended by the server's transport limits")
        .build()
}

/// The store's figures at the last sample.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    depth: Vec<QueueDepth>,
    providers: Vec<ProviderState>,
    usage: Vec<PolicyUsage>,
    at: i64,
}

/// A callback reading `state`, weakly: instruments never keep a stopped
/// server alive.
fn from_state<T>(
    state: &Arc<AppState>,
    read: impl Fn(&AppState, &dyn AsyncInstrument<T>) + Send + Sync + 'static,
) -> impl Fn(&dyn AsyncInstrument<T>) + Send + Sync + 'static {
    let state: Weak<AppState> = Arc::downgrade(state);
    move |o| {
        if let Some(state) = state.upgrade() {
            read(&state, o);
        }
    }
}

/// A callback reading the store's figures at the last sample.
fn from_sample<T>(
    sample: &Arc<Mutex<Sample>>,
    read: impl Fn(&Sample, &dyn AsyncInstrument<T>) + Send + Sync + 'static,
) -> impl Fn(&dyn AsyncInstrument<T>) + Send + Sync + 'static {
    let sample = sample.clone();
    move |o| read(&sample.lock().unwrap_or_else(|e| e.into_inner()), o)
}

/// Registers the observable instruments, reading `state` (weakly: they
/// never keep a stopped server alive) and `sample`.
pub(crate) fn observe(state: &Arc<AppState>, sample: &Arc<Mutex<Sample>>) {
    let meter = meter();
    meter
        .u64_observable_counter("roadie.cache.lookups")
        .with_description("Read answers by policy and result (hit, miss, stale, negative)")
        .with_unit("{lookup}")
        .with_callback(from_state(state, |state, o| {
            for (policy, c) in state.stats.snapshot() {
                for (result, n) in [
                    ("hit", c.hits),
                    ("miss", c.misses),
                    ("stale", c.stale),
                    ("negative", c.negative),
                ] {
                    o.observe(
                        n,
                        &[
                            KeyValue::new("roadie.policy", policy.clone()),
                            KeyValue::new("roadie.result", result),
                        ],
                    );
                }
            }
        }))
        .build();
    meter
        .u64_observable_counter("roadie.cache.evictions")
        .with_description("Entries evicted to keep a policy within its budget")
        .with_unit("{entry}")
        .with_callback(from_state(state, |state, o| {
            for (policy, c) in state.stats.snapshot() {
                o.observe(c.evicted, &[KeyValue::new("roadie.policy", policy)]);
            }
        }))
        .build();
    meter
        .u64_observable_counter("roadie.cache.expirations")
        .with_description("Expired entries cleaned up")
        .with_unit("{entry}")
        .with_callback(from_state(state, |state, o| {
            o.observe(state.stats.expired(), &[])
        }))
        .build();
    meter
        .u64_observable_counter("roadie.hot_tier.reads")
        .with_description(
            "Reads the hot tier answered (hit), filled (miss) or could not be trusted for (bypass)",
        )
        .with_unit("{read}")
        .with_callback(from_state(state, |state, o| {
            if let Some(hot) = state.feed.hot_stats() {
                for (result, n) in [
                    ("hit", hot.hits),
                    ("miss", hot.misses),
                    ("bypass", hot.bypassed),
                ] {
                    o.observe(n, &[KeyValue::new("roadie.result", result)]);
                }
            }
        }))
        .build();
    meter
        .u64_observable_gauge("roadie.watch.watchers")
        .with_description("Watch streams open on this server")
        .with_unit("{stream}")
        .with_callback(from_state(state, |state, o| {
            o.observe(state.feed.watchers(), &[])
        }))
        .build();
    observe_pool(&meter, state);
    observe_sample(&meter, sample);
}

/// The pool's connections in use and idle.
fn observe_pool(meter: &Meter, state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    roadie_telemetry::observe_pool(meter, move || {
        weak.upgrade().map(|state| {
            let pool = state.store.pool_usage();
            (state.store.backend().system_name(), pool.open, pool.idle)
        })
    });
}

fn observe_sample(meter: &Meter, sample: &Arc<Mutex<Sample>>) {
    meter
        .u64_observable_gauge("roadie.queue.depth")
        .with_description("Unfinished jobs by provider and state (available, running)")
        .with_unit("{job}")
        .with_callback(from_sample(sample, |s, o| {
            for d in &s.depth {
                o.observe(
                    d.jobs,
                    &[
                        KeyValue::new("roadie.provider", d.provider.clone()),
                        KeyValue::new("roadie.job.state", d.state.as_str()),
                    ],
                );
            }
        }))
        .build();
    meter
        .f64_observable_gauge("roadie.queue.oldest_age")
        .with_description("Age of the oldest available job, by provider")
        .with_unit("s")
        .with_callback(from_sample(sample, |s, o| {
            for d in s.depth.iter().filter(|d| d.state == JobState::Available) {
                let age = (s.at - d.oldest_created_at).max(0) as f64 / 1000.0;
                o.observe(age, &[KeyValue::new("roadie.provider", d.provider.clone())]);
            }
        }))
        .build();
    meter
        .u64_observable_gauge("roadie.provider.paused")
        .with_description("1 while a provider is paused by an upstream Retry-After")
        .with_callback(from_sample(sample, |s, o| {
            for p in &s.providers {
                o.observe(
                    u64::from(p.paused_until > s.at),
                    &[KeyValue::new("roadie.provider", p.provider.clone())],
                );
            }
        }))
        .build();
    meter
        .f64_observable_counter("roadie.rate_limit.wait")
        .with_description("Time claimed jobs waited for their provider's rate limit, in total")
        .with_unit("s")
        .with_callback(from_sample(sample, |s, o| {
            for p in &s.providers {
                o.observe(
                    p.waited_ms.max(0) as f64 / 1000.0,
                    &[KeyValue::new("roadie.provider", p.provider.clone())],
                );
            }
        }))
        .build();
    meter
        .u64_observable_gauge("roadie.cache.entries")
        .with_description("Entries stored, by policy")
        .with_unit("{entry}")
        .with_callback(from_sample(sample, |s, o| {
            for u in &s.usage {
                o.observe(
                    u.entries,
                    &[KeyValue::new("roadie.policy", u.policy.clone())],
                );
            }
        }))
        .build();
    meter
        .u64_observable_gauge("roadie.cache.size")
        .with_description("Bytes stored, by policy (compare roadie.cache.budget)")
        .with_unit("By")
        .with_callback(from_sample(sample, |s, o| {
            for u in &s.usage {
                o.observe(u.bytes, &[KeyValue::new("roadie.policy", u.policy.clone())]);
            }
        }))
        .build();
}

/// Registers `roadie.cache.budget`: each policy's configured size budget.
pub(crate) fn observe_budgets(settings: &roadie_config::Settings) {
    let budgets: Vec<(String, u64)> = settings
        .policies
        .iter()
        .map(|(name, p)| (name.clone(), p.max_bytes))
        .collect();
    meter()
        .u64_observable_gauge("roadie.cache.budget")
        .with_description("Each policy's size budget (policies.NAME.max_bytes)")
        .with_unit("By")
        .with_callback(move |o| {
            for (policy, bytes) in &budgets {
                o.observe(*bytes, &[KeyValue::new("roadie.policy", policy.clone())]);
            }
        })
        .build();
}

/// Asks the store every second whether it answers, and says so through
/// `ready` (which the health service and `/readyz` follow); every
/// `admin.sample_interval`, while anything reads metrics, samples its
/// figures. Ends when `stop` fires.
pub(crate) async fn probe(
    state: Arc<AppState>,
    sample: Arc<Mutex<Sample>>,
    ready: Readiness,
    stop: CancellationToken,
) {
    let sample_every = state.settings.admin.sample_interval;
    let acquire = meter()
        .f64_histogram("db.client.connection.wait_time")
        .with_description("Time the readiness probe (every second) waited for a pooled store connection: the pool's contention, sampled")
        .with_unit("s")
        .with_boundaries(vec![0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0])
        .build();
    let system = KeyValue::new("db.system.name", state.store.backend().system_name());
    let mut sampled: Option<tokio::time::Instant> = None;
    loop {
        let reachable = tokio::time::timeout(PROBE_EVERY * 3, state.store.ping()).await;
        match reachable {
            Ok(Ok(waited)) => {
                acquire.record(waited.as_secs_f64(), std::slice::from_ref(&system));
                ready.set(true, "the store answers");
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the store does not answer");
                ready.set(false, "the store does not answer");
            }
            Err(_) => ready.set(false, "the store did not answer within 3 s"),
        }
        let due = sampled.is_none_or(|at| at.elapsed() >= sample_every);
        if due && ready.is_ready() && roadie_telemetry::metrics_on() {
            sampled = Some(tokio::time::Instant::now());
            let store = &state.store;
            let taken = async {
                Ok::<_, roadie_store::StoreError>(Sample {
                    depth: store.job_depth().await?,
                    providers: store.provider_stats().await?,
                    usage: store.entry_usage().await?,
                    at: now_ms(),
                })
            };
            match taken.await {
                Ok(taken) => *sample.lock().unwrap_or_else(|e| e.into_inner()) = taken,
                Err(error) => tracing::warn!(%error, "cannot sample the store's figures"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROBE_EVERY.min(sample_every)) => {}
        }
    }
}
