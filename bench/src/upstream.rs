//! A loopback HTTP upstream that answers every `GET /api/...` at once with a
//! small JSON body: the provider for fetch and queue benchmarks, so what is
//! measured is Roadie, not a remote API.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{Router, extract::Path, extract::State, routing};

/// A running upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
}

impl Upstream {
    /// Starts the upstream on a free loopback port; it runs until the
    /// process ends.
    pub async fn start() -> anyhow::Result<Upstream> {
        let requests = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route(
                "/api/{*path}",
                routing::get(
                    |State(requests): State<Arc<AtomicU64>>, Path(path): Path<String>| async move {
                        requests.fetch_add(1, Ordering::Relaxed);
                        (
                            [("content-type", "application/json")],
                            format!("{{\"path\":\"{path}\"}}"),
                        )
                    },
                ),
            )
            .with_state(requests.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Upstream { addr, requests })
    }

    /// `http://ADDR/api/`, the provider's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}
