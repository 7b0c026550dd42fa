//! The Roadie worker: the process that turns queued fetch jobs into cache
//! entries by asking upstream providers (MusicBrainz, Discogs, image CDNs, …)
//! over HTTP.
//!
//! Any number of `roadie-worker` processes (the README's "The API in
//! brief" tells the whole story) claim jobs from the shared store, obey each provider's rate limit
//! across the whole deployment, fetch, and write the results back. The
//! `roadie-worker` binary (`main.rs`) only reads flags and configuration and
//! wires these modules together.
//!
//! # Layout
//!
//! - [`fetcher`]: performs ONE upstream request for a job and classifies the
//!   outcome ([`fetcher::Outcome`]). It never retries, sleeps or touches the
//!   store: backoff, rate limits and write-back belong to the job queue that
//!   calls it. It is also the guard that keeps Roadie on the hosts providers
//!   declare: URLs outside a provider's base URL, redirects out of it and
//!   private or loopback addresses are refused ([`roadie_providers::Refusal`]).
//! - [`runner`]: the claim loop: leases, heartbeats, outcome → cache entry,
//!   retries with backoff, soft and hard stop.
//! - [`settings`]: the shared typed configuration turned into the runner's
//!   providers and options (secret headers read from the environment).
//! - [`retention`]: deletes finished jobs once `jobs.keep_*` has passed.
//! - [`run`]: the whole worker from loaded settings until a stop, which is
//!   all `main.rs` calls after parsing flags and setting up logs.

pub mod fetcher;
pub(crate) mod metrics;
pub mod retention;
pub mod runner;
pub mod settings;

use roadie_config::{ConfigError, Settings};
use roadie_store::{Store, StoreError, redact};
use roadie_telemetry::admin::Readiness;
use tokio_util::sync::CancellationToken;

use crate::{
    fetcher::{BuildError, Fetcher},
    retention::Retention,
    runner::{Report, Worker},
};

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting is unusable; the message names it (the binary exits 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be set up (TLS initialisation).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] BuildError),
    /// The store could not be opened.
    #[error("cannot open the store at {url}: {source}")]
    Store {
        /// The store URL, without its password.
        url: String,
        /// The cause.
        source: StoreError,
    },
}

/// Runs a worker on `settings` until `stop` is cancelled: builds its
/// providers (`env` looks up the variables named by `secret_headers`) and
/// HTTP client, opens the store, claims and runs jobs, purges finished ones,
/// and drains within `worker.shutdown_grace` once stopped. `ready` says
/// whether it can claim now.
pub async fn run(
    settings: &Settings,
    env: impl Fn(&str) -> Option<String>,
    ready: Readiness,
    stop: CancellationToken,
) -> Result<Report, RunError> {
    let providers = settings::providers(settings, env)?;
    let fetcher = match Fetcher::new(&settings.worker.user_agent) {
        Ok(fetcher) => fetcher,
        Err(error @ BuildError::UserAgent) => {
            return Err(ConfigError {
                setting: "worker.user_agent".to_owned(),
                message: error.to_string(),
            }
            .into());
        }
        Err(error) => return Err(RunError::Client(error)),
    };
    let store_settings = &settings.store;
    let store = Store::connect_retrying(&store_settings.options())
        .await
        .map_err(|source| RunError::Store {
            url: redact(&store_settings.url),
            source,
        })?;

    metrics::observe_pool(&store);
    let id = settings::worker_id(hostname().as_deref(), std::process::id(), rand::random());
    let options = settings::worker_options(settings, &id);
    let mut names: Vec<&str> = providers.keys().map(String::as_str).collect();
    names.sort_unstable();
    tracing::info!(
        worker = %id,
        store = %redact(&store_settings.url),
        concurrency = options.concurrency,
        providers = %names.join(","),
        "roadie-worker started"
    );

    let retention = tokio::spawn(
        Retention::new(
            store.clone(),
            settings.jobs.keep_completed,
            settings.jobs.keep_failed,
        )
        .run(stop.clone()),
    );
    // On a thread of the runtime, not the one that started it: the jobs a
    // claim spawns then start on the claiming thread, and a job's end wakes
    // the loop there, instead of every job and every end crossing between
    // the runtime's threads and the main one.
    let runner = tokio::spawn(
        Worker::new(store.clone(), fetcher, providers, options)
            .with_readiness(ready)
            .run(stop.clone()),
    );
    let report = match runner.await {
        Ok(report) => report,
        // A panic in the loop is the process's, as it was on the main thread.
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    };
    // The runner returns only after a stop; cancel anyway so retention never outlives it.
    stop.cancel();
    if let Err(error) = retention.await {
        tracing::warn!(%error, "the retention task failed");
    }
    store.close().await;
    tracing::info!(
        claimed = report.claimed,
        released = report.released,
        "roadie-worker stopped"
    );
    Ok(report)
}

/// This machine's name, for the worker id; None when it cannot be read.
fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}
