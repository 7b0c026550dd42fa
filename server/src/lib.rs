//! `roadie-server`: the gRPC front of Roadie.
//!
//! It serves `roadie.v1.Cache`, `roadie.v1.Jobs` and `roadie.v1.Snapshots`,
//! the standard health
//! service and server reflection (v1 and v1alpha), over one store shared
//! with every other server and worker. It holds no state that matters
//! beyond the process: counters since start and reads not yet flushed.
//!
//! # Layout
//! - [`config`]: the typed settings (the `roadie-config` crate).
//! - `validate`: request limits and quoting; `error`: the one mapping
//!   to `Status`; `convert`: every proto ↔ store conversion.
//! - `cache` (a file per RPC family), `jobs`, `snapshots`: the services.
//! - `events`: library events → invalidations.
//! - `feed`: the one tail of the change log; `fanout`: which watchers a
//!   change goes to; `watch`: one task per stream; the `hot` tier;
//!   `waiter`: waiting Fetches.
//! - [`maintenance`]: expiry clean-up, eviction, compaction, the WAL
//!   checkpoint, flushing the reads `access` noted; `budgets`: what this
//!   server's Puts added to each policy, which decides when a Put wakes
//!   eviction.
//! - `drain`: the shutdown drain; `transport`: accepting connections
//!   within the transport limits; `tls`: the certificate, reloaded;
//!   `auth`: tokens and roles.
//! - `rpc`: every call's span and duration; `metrics`: the instruments and
//!   the store probe behind readiness.
//! - [`App`]: opens the store and serves until a shutdown future resolves.

pub(crate) mod access;
pub(crate) mod auth;
pub(crate) mod budgets;
pub(crate) mod cache;
pub(crate) mod convert;
pub use auth::token_digest;
pub use roadie_config as config;
pub(crate) mod drain;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod fanout;
pub(crate) mod feed;
pub(crate) mod hot;
pub(crate) mod jobs;
pub mod maintenance;
pub(crate) mod metrics;
pub(crate) mod rpc;
pub(crate) mod snapshots;
pub(crate) mod state;
pub(crate) mod stats;
pub(crate) mod tls;
pub(crate) mod transport;
pub(crate) mod validate;
pub(crate) mod waiter;
pub(crate) mod watch;

use std::{future::Future, sync::Arc, time::SystemTime};

use roadie_proto::v1::{
    cache_server::CacheServer, jobs_server::JobsServer, snapshots_server::SnapshotsServer,
};
use roadie_store::{CHANGE_CHANNEL, JOB_CHANNEL, Store, StoreError};
use roadie_telemetry::admin::Readiness;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{
    auth::{AuthLayer, Tokens},
    budgets::Budgets,
    cache::CacheService,
    config::{Reflection, Settings},
    drain::{Drain, DrainLayer},
    feed::Feed,
    jobs::JobsService,
    maintenance::Maintenance,
    snapshots::SnapshotsService,
    state::AppState,
    stats::Stats,
    tls::Tls,
    transport::CallLimitsLayer,
    waiter::{JobWaiter, WorkSignal},
};

/// Room in a request for everything but the value (key, tags, metadata),
/// so the gRPC limit sits just above `limits.max_value_bytes` and a value a
/// little too large gets a clear INVALID_ARGUMENT instead of a transport error.
const ENVELOPE_BYTES: usize = 512 * 1024;

/// Why the server could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened or migrated.
    #[error("cannot open the store at {url}: {source}")]
    Store {
        /// The store URL, without password.
        url: String,
        /// The cause.
        source: StoreError,
    },
    /// The providers' settings are unusable (`Settings::validate` finds
    /// this at load; settings built in code may skip it).
    #[error("{0}")]
    Config(roadie_config::ConfigError),
    /// `server.tls`'s files or `auth.tokens`' files are unusable.
    #[error("{0}")]
    Guard(String),
    /// The start-up maintenance pass failed.
    #[error("start-up clean-up failed: {0}")]
    Startup(StoreError),
    /// Reflection could not be set up (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// An opened server, ready to serve.
#[derive(Debug, Clone)]
pub struct App {
    state: Arc<AppState>,
    tls: Option<Arc<Tls>>,
    tokens: Arc<Tokens>,
}

/// The server's one LISTEN connection (Postgres; nothing on SQLite), until
/// `cancel` fires: finished jobs to the waiting Fetches, other processes'
/// commits to the change feed's tail.
async fn listen(store: Store, waiter: JobWaiter, feed: Arc<Feed>, cancel: CancellationToken) {
    store
        .listen(
            &[JOB_CHANNEL, CHANGE_CHANNEL],
            cancel,
            |channel, payload| match channel {
                JOB_CHANNEL => waiter.heard(payload),
                CHANGE_CHANNEL => feed.notified(payload),
                _ => {}
            },
        )
        .await;
}

impl App {
    /// Opens (and migrates) the store and cleans expired entries.
    pub async fn open(settings: Settings) -> Result<App, ServerError> {
        let tls = Tls::load(&settings.server.tls).map_err(ServerError::Guard)?;
        App::open_with(settings, Readiness::default(), tls).await
    }

    /// [`App::open`], reporting readiness through `ready`, with the TLS
    /// files already read.
    async fn open_with(
        settings: Settings,
        ready: Readiness,
        tls: Option<Arc<Tls>>,
    ) -> Result<App, ServerError> {
        let tokens =
            Tokens::load(&settings.auth, settings.server.reflection).map_err(ServerError::Guard)?;
        let options = settings.store.options();
        let store =
            Store::connect_retrying(&options)
                .await
                .map_err(|source| ServerError::Store {
                    url: roadie_store::redact(&options.url),
                    source,
                })?;
        let background = CancellationToken::new();
        let waiter = JobWaiter::new(store.backend());
        let work = Arc::new(WorkSignal::default());
        tokio::spawn(work.clone().run(store.clone(), background.clone()));
        let revision = store
            .revision_current()
            .await
            .map_err(ServerError::Startup)?;
        let feed = Arc::new(Feed::new(&settings, revision, metrics::watch_lag()));
        tokio::spawn(
            feed.clone()
                .run(store.clone(), settings.clone(), background.clone()),
        );
        tokio::spawn(listen(
            store.clone(),
            waiter.clone(),
            feed.clone(),
            background.clone(),
        ));
        let state = Arc::new(AppState {
            feed,
            stopping: CancellationToken::new(),
            providers: roadie_providers::from_settings(&settings).map_err(ServerError::Config)?,
            checked_hosts: Default::default(),
            waiter,
            work,
            background,
            stats: Stats::new(settings.policies.keys()),
            budgets: Budgets::new(&settings.policies),
            settings,
            store,
            access: Default::default(),
            started_at: SystemTime::now(),
            ready,
        });
        let app = App {
            state,
            tls,
            tokens: Arc::new(tokens),
        };
        let report = app
            .maintenance()
            .run_once()
            .await
            .map_err(ServerError::Startup)?;
        tracing::info!(
            expired = report.expired,
            evicted = report.evicted,
            compacted = report.compacted,
            "start-up clean-up done"
        );
        Ok(app)
    }

    /// [`App::open`], while `listener` already answers: health checks get
    /// NOT_SERVING (overall and per service) until the store is reached, so
    /// a server started before its database is alive, just not ready. Gives
    /// the listener back for [`App::serve`]. `ready` (not ready meanwhile)
    /// becomes the app's readiness, for an admin port started before.
    pub async fn open_on(
        settings: Settings,
        listener: TcpListener,
        ready: Readiness,
    ) -> Result<(App, TcpListener), ServerError> {
        let tls = Tls::load(&settings.server.tls).map_err(ServerError::Guard)?;
        let limits = transport::Limits::new(&settings.server.transport);
        let (mut health, health_service) = health_reporter().await;
        let stop_accepting = CancellationToken::new();
        let (give_back, listener_back) = tokio::sync::oneshot::channel();
        let incoming = transport::incoming(
            listener,
            stop_accepting.clone(),
            Arc::new(Drain::default()),
            tls.clone(),
            limits,
            Some(give_back),
        );
        let goaway = CancellationToken::new();
        let health_only = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, goaway.clone().cancelled_owned()),
        );
        let opened = App::open_with(settings, ready, tls).await;
        stop_accepting.cancel();
        let listener = listener_back.await.map_err(|_| {
            ServerError::Startup(StoreError::Config(
                "the listener was lost while the store opened".to_owned(),
            ))
        })?;
        // Its connections are told to go (GOAWAY: clients reconnect, to the
        // full server), and its statuses are dropped, which ends every health
        // Watch held on it, so no client waits on this server's NOT_SERVING
        // or sends a call it cannot answer.
        goaway.cancel();
        for service in [
            "",
            CACHE_SERVICE,
            JOBS_SERVICE,
            SNAPSHOTS_SERVICE,
            LIVENESS_SERVICE,
        ] {
            health.clear_service_status(service).await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), health_only).await;
        Ok((opened?, listener))
    }

    /// The store this server uses.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The TLS reloads applied since start, ticking after each (a changed
    /// file or SIGHUP); `None` without TLS.
    pub fn tls_reloads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.tls.as_ref().map(|tls| tls.reloads())
    }

    /// The upkeep tasks, for running a pass on demand.
    pub fn maintenance(&self) -> Maintenance {
        Maintenance::new(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then drains (see
    /// `drain`) for at most `server.shutdown_grace`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let settings = &self.state.settings;
        let message_limit = settings.limits.max_value_bytes + ENVELOPE_BYTES;
        let grace = settings.server.shutdown_grace;

        // Health follows readiness: NOT_SERVING until the store answers,
        // while it does not, and from the start of the drain.
        let (health, health_service) = health_reporter().await;
        let probing = CancellationToken::new();
        let sample = Arc::default();
        metrics::observe(&self.state, &sample);
        metrics::observe_budgets(settings);
        self.state.ready.observe();
        tokio::spawn(metrics::probe(
            self.state.clone(),
            sample,
            self.state.ready.clone(),
            probing.clone(),
        ));
        let mirror = {
            let (health, mut ready) = (health.clone(), self.state.ready.subscribe());
            let probing = probing.clone();
            tokio::spawn(async move {
                loop {
                    let now = *ready.borrow_and_update();
                    set_health(&health, now).await;
                    tokio::select! {
                        () = probing.cancelled() => return,
                        changed = ready.changed() => if changed.is_err() { return },
                    }
                }
            })
        };
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(roadie_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflecting = settings.server.reflection != Reflection::Off;
        let reflection_v1 = reflecting.then(|| reflection().build_v1()).transpose()?;
        let reflection_v1alpha = reflecting
            .then(|| reflection().build_v1alpha())
            .transpose()?;

        let cache = CacheServer::new(CacheService::new(self.state.clone()))
            .max_decoding_message_size(message_limit)
            .max_encoding_message_size(usize::MAX);
        let jobs = JobsServer::new(JobsService::new(self.state.clone()));
        let snapshots = SnapshotsServer::new(SnapshotsService::new(self.state.clone()))
            .max_decoding_message_size(message_limit)
            .max_encoding_message_size(usize::MAX);

        let cancel = self.state.background.clone();
        let maintenance = tokio::spawn(self.maintenance().run(cancel.clone()));
        if let Some(tls) = &self.tls {
            tokio::spawn(tls.clone().run(cancel.clone()));
        }

        let local = listener.local_addr().ok();
        tracing::info!(
            addr = ?local,
            backend = self.state.store.backend().name(),
            tls = self.tls.is_some(),
            client_certificates = settings.server.tls.client_ca.is_some(),
            tokens = self.tokens.enabled(),
            "roadie-server listening"
        );

        let drain = Arc::new(Drain::default());
        // The listener closes when the drain starts; the connections are told
        // to go (GOAWAY) only once it is over.
        let closing = CancellationToken::new();
        let goaway = CancellationToken::new();
        let transport = &settings.server.transport;
        let limits = transport::Limits::new(transport);
        let incoming = transport::incoming(
            listener,
            closing.clone(),
            drain.clone(),
            self.tls.clone(),
            limits.clone(),
            None,
        );
        let serve = tonic::transport::Server::builder()
            .max_concurrent_streams(transport.max_concurrent_streams)
            .http2_max_header_list_size(transport.max_header_bytes)
            // One span per call (continuing the caller's trace) and its
            // duration; without telemetry, only the transport's span, at
            // debug level.
            .trace_fn(rpc::log_span)
            .layer(CallLimitsLayer(limits))
            .layer(tower::util::option_layer(
                rpc::measured().then(rpc::CallLayer::new),
            ))
            .layer(DrainLayer(drain.clone()))
            .layer(AuthLayer(self.tokens.clone()))
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(cache)
            .add_service(jobs)
            .add_service(snapshots)
            .serve_with_incoming_shutdown(incoming, goaway.clone().cancelled_owned());
        let mut serving = tokio::spawn(serve);

        shutdown.await;
        let deadline = tokio::time::Instant::now() + grace;
        drain.start();
        closing.cancel();
        // Watch streams and waiting Fetches end now, telling their clients
        // where to resume.
        self.state.stopping.cancel();
        probing.cancel();
        let _ = mirror.await;
        self.state.ready.set(false, "draining");
        set_health(&health, false).await;
        tracing::info!(
            ?grace,
            in_flight = drain.in_flight(),
            "shutting down: listener closed, new calls refused, draining in-flight ones"
        );
        if tokio::time::timeout_at(deadline, drain.finished())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                in_flight = drain.in_flight(),
                "grace period over: dropping the calls still in flight"
            );
        }
        goaway.cancel();
        let result = match tokio::time::timeout_at(deadline, &mut serving).await {
            Ok(Ok(result)) => result.map_err(ServerError::from),
            Ok(Err(error)) => {
                tracing::warn!(%error, "the transport task ended abnormally");
                Ok(())
            }
            Err(_) => {
                tracing::warn!(
                    "connections still open at the end of the grace period: closing them"
                );
                serving.abort();
                Ok(())
            }
        };
        // Sockets still lingering are let go before the process can exit.
        let _ = tokio::time::timeout(
            drain::LINGER + std::time::Duration::from_millis(100),
            drain.connections_released(),
        )
        .await;
        cancel.cancel();
        if let Err(error) = maintenance.await {
            tracing::warn!(%error, "maintenance task ended abnormally");
        }
        self.state.store.close().await;
        tracing::info!("roadie-server stopped");
        result
    }
}

/// The services' names in the health service.
const CACHE_SERVICE: &str = <CacheServer<CacheService> as tonic::server::NamedService>::NAME;
const JOBS_SERVICE: &str = <JobsServer<JobsService> as tonic::server::NamedService>::NAME;
const SNAPSHOTS_SERVICE: &str =
    <SnapshotsServer<SnapshotsService> as tonic::server::NamedService>::NAME;

/// The health service's name for "this process answers": SERVING from the
/// first moment the port answers to the last, whatever the store does, for
/// liveness probes (a store outage makes the server unready, and restarting
/// it would not bring the store back).
pub const LIVENESS_SERVICE: &str = "liveness";

/// A health service saying NOT_SERVING overall and per service, and
/// SERVING for [`LIVENESS_SERVICE`].
async fn health_reporter() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (health, service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    health
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    (health, service)
}

/// Sets the overall status (`""`) and each service's.
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in ["", CACHE_SERVICE, JOBS_SERVICE, SNAPSHOTS_SERVICE] {
        health.set_service_status(service, status).await;
    }
}
