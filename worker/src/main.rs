//! `roadie-worker`: parses flags, sets up logs, loads configuration, and
//! runs [`roadie_worker::run`] until SIGTERM or SIGINT.
//!
//! A signal is a soft stop: no new claims, in-flight jobs get
//! `worker.shutdown_grace` to finish, then the runner cancels them and hands
//! their leases back. Exit codes: 0 after a stop, 2 for bad configuration
//! (before anything is connected), 1 for anything else.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use roadie_config::{ConfigError, Settings};
use roadie_worker::RunError;
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
    // Watch the signals before the first claim, so a stop is never missed.
    let stop = CancellationToken::new();
    watch_signals(stop.clone())?;
    match roadie_worker::run(&settings, |name| std::env::var(name).ok(), stop).await {
        Ok(_) => Ok(()),
        Err(RunError::Config(error)) => config_exit(&error),
        Err(error) => Err(error.into()),
    }
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
