//! The processes a comparison runs: `roadie-server` and `roadie-worker`
//! from the same build as this binary, the empty service (this binary's
//! `empty-server`), each with its own configuration file, killed on drop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use roadie_proto::v1::{self as pb, cache_client::CacheClient};
use roadie_store::{Backend, testing::TestDb};

/// The provider every benchmark fetches from.
pub const PROVIDER: &str = "bench";

/// What a `roadie-server` or `roadie-worker` of a comparison is set to.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `store.url`.
    pub store_url: String,
    /// The loopback upstream behind provider [`PROVIDER`], if any.
    pub upstream: Option<SocketAddr>,
    /// `hot_tier.enabled`.
    pub hot_tier: bool,
    /// `worker.concurrency`.
    pub worker_concurrency: u32,
    /// `store.max_connections`, when not the default.
    pub max_connections: Option<u32>,
    /// `policies.generic.max_bytes`, when not the default (30 MiB).
    pub generic_max_bytes: Option<u64>,
    /// `watch.max_per_client`, when not the default.
    pub max_watches_per_client: Option<u32>,
}

impl Setup {
    /// A setup on `store_url`, hot tier on, no upstream.
    pub fn new(store_url: impl Into<String>) -> Setup {
        Setup {
            store_url: store_url.into(),
            upstream: None,
            hot_tier: true,
            worker_concurrency: 64,
            max_connections: None,
            generic_max_bytes: None,
            max_watches_per_client: None,
        }
    }

    fn toml(&self, listen: SocketAddr) -> String {
        let connections = self
            .max_connections
            .map(|n| format!("max_connections = {n}\n"))
            .unwrap_or_default();
        let mut toml = format!(
            "[server]\nlisten = \"{listen}\"\n\n\
             [store]\nurl = \"{}\"\n{connections}\n\
             [hot_tier]\nenabled = {}\n\n\
             [worker]\nconcurrency = {}\n",
            self.store_url, self.hot_tier, self.worker_concurrency
        );
        if let Some(watches) = self.max_watches_per_client {
            toml.push_str(&format!("\n[watch]\nmax_per_client = {watches}\n"));
        }
        if let Some(bytes) = self.generic_max_bytes {
            toml.push_str(&format!("\n[policies.generic]\nmax_bytes = {bytes}\n"));
        }
        if let Some(upstream) = self.upstream {
            // Limited only nominally: the figures are Roadie's, not a quota's.
            toml.push_str(&format!(
                "\n[providers.{PROVIDER}]\nbase_url = \"http://{upstream}/api/\"\n\
                 rate_per_second = 1000000.0\nburst = 100000000\nallow_private = true\n"
            ));
        }
        toml
    }
}

/// A fresh, migrated database of `backend` (migrated here, before any
/// process starts on it, as a deployment would be); Postgres must answer.
pub async fn database(backend: Backend) -> anyhow::Result<TestDb> {
    let db = TestDb::new(backend).await.context(
        "Postgres is unreachable at ROADIE_TEST_POSTGRES_URL (default 127.0.0.1:5432); \
         the Postgres comparisons need it",
    )?;
    db.store().await.close().await;
    Ok(db)
}

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: tokio::process::Child,
    /// Where it serves gRPC, if it does.
    pub addr: String,
    // The configuration file lives as long as the process.
    _dir: tempfile::TempDir,
}

impl Process {
    /// Resident memory, from `/proc` (Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Stops the process with SIGKILL and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A binary of this build: beside this executable (`target/release/`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("where is roadie-bench")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found beside roadie-bench: build it too (cargo build --release -p {name})",
            path.display()
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn spawn(
    program: &Path,
    args: &[&str],
    dir: tempfile::TempDir,
    addr: String,
) -> anyhow::Result<Process> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    Ok(Process {
        child,
        addr,
        _dir: dir,
    })
}

fn config_file(setup: &Setup, listen: SocketAddr) -> anyhow::Result<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("roadie.toml");
    std::fs::write(&path, setup.toml(listen))?;
    Ok((dir, path.display().to_string()))
}

/// Starts `roadie-server` and waits until it answers.
pub async fn server(setup: &Setup) -> anyhow::Result<Process> {
    let listen = free_port()?;
    let (dir, config) = config_file(setup, listen)?;
    let process = spawn(
        &binary("roadie-server")?,
        &["--config", &config],
        dir,
        listen.to_string(),
    )?;
    wait_serving(&process.addr, |mut stub| async move {
        stub.stats(pb::StatsRequest::default()).await.is_ok()
    })
    .await?;
    Ok(process)
}

/// Starts a `roadie-worker` (it answers nothing; it claims).
pub fn worker(setup: &Setup) -> anyhow::Result<Process> {
    let (dir, config) = config_file(setup, free_port()?)?;
    spawn(
        &binary("roadie-worker")?,
        &["--config", &config],
        dir,
        String::new(),
    )
}

/// Starts this binary's empty service, answering `Get` with a value of
/// `value_bytes`.
pub async fn empty_server(value_bytes: usize) -> anyhow::Result<Process> {
    let listen = free_port()?;
    let me = std::env::current_exe()?;
    let process = spawn(
        &me,
        &[
            "empty-server",
            "--listen",
            &listen.to_string(),
            "--value-bytes",
            &value_bytes.to_string(),
        ],
        tempfile::tempdir()?,
        listen.to_string(),
    )?;
    wait_serving(&process.addr, |mut stub| async move {
        stub.get(pb::GetRequest::default()).await.is_ok()
    })
    .await?;
    Ok(process)
}

/// Starts a single-node etcd (Debian's `etcd-server`, `etcd` on the PATH)
/// on a fresh data directory of its own and loopback ports, and waits until
/// it answers a `Range`.
pub async fn etcd() -> anyhow::Result<Process> {
    let (client, peer) = (free_port()?, free_port()?);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data").display().to_string();
    let (client_url, peer_url) = (format!("http://{client}"), format!("http://{peer}"));
    let process = spawn(
        Path::new("etcd"),
        &[
            "--name",
            "bench",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("bench={peer_url}"),
            "--logger",
            "zap",
            "--log-level",
            "error",
        ],
        dir,
        client.to_string(),
    )
    .context("etcd (Debian's etcd-server) is needed for the write comparison")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channels) = crate::targets::channels(&process.addr, 1).await {
            let probe = crate::etcd::get(
                channels,
                std::sync::Arc::new(vec!["bench/probe".to_owned()]),
            );
            // Serving: the probe key is absent, and etcd says so.
            if let Err(error) = probe(0, 0).await
                && error.starts_with("etcd has no")
            {
                return Ok(process);
            }
        }
        if Instant::now() > deadline {
            bail!("etcd does not answer on {} after a minute", process.addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_serving<F, Fut>(addr: &str, answers: F) -> anyhow::Result<()>
where
    F: Fn(CacheClient<tonic::transport::Channel>) -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(stub) = CacheClient::connect(format!("http://{addr}")).await
            && answers(stub).await
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing answers on {addr} after a minute");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
