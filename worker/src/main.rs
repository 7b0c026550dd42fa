//! `roadie-worker`: parses flags, loads configuration, opens the store, runs
//! the claim loop (and the job retention) until SIGTERM or SIGINT.
//!
//! A signal is a soft stop: no new claims, in-flight jobs get
//! `worker.shutdown_grace` to finish, then the runner cancels them and hands
//! their leases back. Exit codes: 0 after a stop, 2 for bad configuration
//! (before anything is connected), 1 for anything else.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use roadie_config::{ConfigError, Settings};
use roadie_store::{Store, redact};
use roadie_worker::{
    fetcher::{BuildError, Fetcher},
    retention::Retention,
    runner::Worker,
    settings,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// A Roadie fetch worker: claims queued jobs, fetches from upstream
/// providers, writes the results into the cache.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML configuration file; `ROADIE__SECTION__KEY` variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not for log files and collectors.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();

    let settings = Settings::load(args.config.as_deref(), std::env::vars())
        .unwrap_or_else(|error| config_exit(&error));
    let providers = settings::providers(&settings, |name| std::env::var(name).ok())
        .unwrap_or_else(|error| config_exit(&error));
    let fetcher = match Fetcher::new(&settings.worker.user_agent) {
        Ok(fetcher) => fetcher,
        Err(error @ BuildError::UserAgent) => config_exit(&ConfigError {
            setting: "worker.user_agent".to_owned(),
            message: error.to_string(),
        }),
        Err(error) => return Err(error.into()),
    };

    // Watch the signals before the first claim, so a stop is never missed.
    let stop = CancellationToken::new();
    watch_signals(stop.clone())?;

    let store_settings = &settings.store;
    let store = Store::connect(&store_settings.options())
        .await
        .with_context(|| format!("cannot open the store at {}", redact(&store_settings.url)))?;

    let id = settings::worker_id(hostname().as_deref(), std::process::id(), rand::random());
    let options = settings::worker_options(&settings, &id);
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
    let report = Worker::new(store.clone(), fetcher, providers, options)
        .run(stop.clone())
        .await;
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
    Ok(())
}

/// Reports a configuration error naming the setting, and exits 2.
fn config_exit(error: &ConfigError) -> ! {
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

/// This machine's name, for the worker id; None when it cannot be read.
fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}
