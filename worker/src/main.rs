//! `roadie-worker`: parses flags, sets up logs, loads configuration, and
//! runs [`roadie_worker::run`] until SIGTERM or SIGINT.
//!
//! A signal is a soft stop: no new claims, in-flight jobs get
//! `worker.shutdown_grace` to finish, then the runner cancels them and hands
//! their leases back. Exit codes: 0 after a stop, 2 for bad configuration
//! (before anything is connected), 1 for anything else.
//!
//! `roadie-worker ready` asks a running worker's admin port whether it is
//! ready (exit 0) or not (exit 1), for container health checks.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use roadie_config::Settings;
use roadie_telemetry::admin::{self, Readiness};
use roadie_worker::RunError;
use tokio_util::sync::CancellationToken;

/// mimalloc, as in `roadie-server`: glibc's allocation and release took a
/// fifth of the server's CPU on a Put load (BENCHMARKS.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Roadie fetch worker: claims queued jobs, fetches from upstream
/// providers, writes the results into the cache.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML configuration file; `ROADIE__SECTION__KEY` variables override it.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Asks the worker running with this configuration whether it is ready
    /// (`GET /readyz` on `admin.listen`): exit 0 when it is, 1 when it says
    /// not ready or does not answer. For container health checks.
    Ready,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(args.config.as_deref(), std::env::vars())
        .unwrap_or_else(|error| config_exit(&error));
    if let Some(Command::Ready) = args.command {
        std::process::exit(ready(&settings).await);
    }
    let telemetry = roadie_telemetry::init("roadie-worker", &settings)
        .unwrap_or_else(|error| config_exit(&error));
    // Watch the signals before the first claim, so a stop is never missed.
    let stop = CancellationToken::new();
    watch_signals(stop.clone())?;
    let ready = Readiness::default();
    ready.observe();
    let admin_stop = CancellationToken::new();
    let admin = match settings.admin.listen {
        Some(addr) => {
            let listener = admin::bind(addr).await?;
            Some(admin::serve(
                listener,
                &telemetry,
                ready.clone(),
                admin_stop.clone(),
            ))
        }
        None => None,
    };
    let work = async {
        let ran = roadie_worker::run(&settings, |name| std::env::var(name).ok(), ready, stop).await;
        admin_stop.cancel();
        ran
    };
    let ran = match admin {
        Some(admin) => tokio::join!(work, admin).0,
        None => work.await,
    };
    // After the drain: the last jobs' spans go out too.
    telemetry.shutdown().await;
    match ran {
        Ok(_) => Ok(()),
        Err(RunError::Config(error)) => config_exit(&error),
        Err(error) => Err(error.into()),
    }
}

/// `roadie-worker ready`: the exit code of asking the admin port.
async fn ready(settings: &Settings) -> i32 {
    let Some(mut addr) = settings.admin.listen else {
        config_exit(&"admin.listen is not set, so this worker has no readiness endpoint to ask");
    };
    // A worker listening on every address answers on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}/readyz");
    let asked = async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        let response = client.get(&url).send().await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    };
    match asked.await {
        Ok((status, body)) => {
            println!("{}", body.trim_end());
            if status.is_success() { 0 } else { 1 }
        }
        Err(error) => {
            eprintln!("roadie-worker: {url} does not answer: {error}");
            1
        }
    }
}

/// Reports a configuration error naming the setting, and exits 2.
fn config_exit(error: &dyn std::fmt::Display) -> ! {
    eprintln!("roadie-worker: {error}");
    std::process::exit(2);
}

/// Cancels `stop` on the first SIGTERM or SIGINT. The handlers are installed
/// before this returns; later signals change nothing, the runner's grace
/// period already bounds the stop.
fn watch_signals(stop: CancellationToken) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "stop requested");
            stop.cancel();
        });
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("stop requested");
                stop.cancel();
            }
        });
    }
    Ok(())
}
