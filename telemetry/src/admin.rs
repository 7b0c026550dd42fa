//! The admin HTTP port (`admin.listen`, off by default): `/metrics` in
//! Prometheus text format for operators without a collector, `/livez`
//! (the process answers) and `/readyz` (it can do its work now: 200 or
//! 503, from the process's own [`Readiness`]).

use std::net::SocketAddr;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

/// Whether the process can do its work now, set by the process and read
/// by `/readyz` (and, on the server, the gRPC health service).
#[derive(Debug, Clone)]
pub struct Readiness(watch::Sender<bool>);

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness(watch::Sender::new(false))
    }
}

impl Readiness {
    /// Sets readiness; logs when it changes (at info: whoever found a
    /// problem has warned of it already, and a drain is no problem).
    pub fn set(&self, ready: bool, why: &str) {
        let changed = self.0.send_if_modified(|now| {
            let changed = *now != ready;
            *now = ready;
            changed
        });
        if changed {
            tracing::info!(ready, why, "readiness changed");
        }
    }

    /// Ready now?
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Registers `roadie.ready` (1 while ready, else 0) on the global meter.
    pub fn observe(&self) {
        let ready = self.0.subscribe();
        opentelemetry::global::meter("roadie")
            .u64_observable_gauge("roadie.ready")
            .with_description("1 while the process can do its work (what /readyz says)")
            .with_callback(move |o| o.observe(u64::from(*ready.borrow()), &[]))
            .build();
    }

    /// Every change, for whoever mirrors it (the health service).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

#[derive(Clone)]
struct Admin {
    registry: Option<prometheus::Registry>,
    ready: Readiness,
}

/// Binds `addr` (an error names `admin.listen`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!("cannot listen on {addr} (admin.listen): {error}"),
        )
    })
}

/// Serves the admin routes on `listener` until `stop` fires.
pub fn serve(
    listener: TcpListener,
    telemetry: &crate::Telemetry,
    ready: Readiness,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let admin = Admin {
        registry: telemetry.registry.clone(),
        ready,
    };
    run(listener, admin, stop)
}

async fn run(listener: TcpListener, admin: Admin, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(admin);
    tracing::info!(addr = ?listener.local_addr().ok(), "admin port listening");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "the admin port stopped");
    }
}

async fn metrics(
    State(admin): State<Admin>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let text = admin
        .registry
        .as_ref()
        .map(crate::prometheus_text)
        .unwrap_or_default();
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    if admin.ready.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
