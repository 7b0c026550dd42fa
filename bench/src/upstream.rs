//! A loopback HTTP upstream that answers every `GET /api/...` at once with a
//! small JSON body: the provider for fetch and queue benchmarks, so what is
//! measured is Roadie, not a remote API.

use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{Router, extract::Path, extract::State, routing};

/// A running upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Seen>,
}

/// What the upstream has answered.
#[derive(Debug, Default)]
struct Seen {
    requests: AtomicU64,
    first: OnceLock<Instant>,
}

impl Upstream {
    /// Starts the upstream on a free loopback port; it runs until the
    /// process ends.
    pub async fn start() -> anyhow::Result<Upstream> {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route(
                "/api/{*path}",
                routing::get(
                    |State(seen): State<Arc<Seen>>, Path(path): Path<String>| async move {
                        seen.first.get_or_init(Instant::now);
                        seen.requests.fetch_add(1, Ordering::Relaxed);
                        (
                            [("content-type", "application/json")],
                            format!("{{\"path\":\"{path}\"}}"),
                        )
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Upstream { addr, seen })
    }

    /// `http://ADDR/api/`, the provider's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::Relaxed)
    }

    /// When the first request arrived, if one has.
    pub fn first_request(&self) -> Option<Instant> {
        self.seen.first.get().copied()
    }
}
