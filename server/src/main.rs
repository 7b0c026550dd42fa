//! `roadie-server`: parses flags, loads configuration, binds, serves.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use roadie_server::{App, config::Settings};
use tracing_subscriber::EnvFilter;

/// The Roadie gRPC server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML configuration file; `ROADIE__SECTION__KEY` variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
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

    let settings = match Settings::load(args.config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("roadie-server: {error}");
            std::process::exit(2);
        }
    };
    if args.print_config {
        println!("{}", toml_of(&settings.redacted())?);
        return Ok(());
    }
    let listen = settings.server.listen;
    let app = App::open(settings).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
    app.serve(listener, shutdown_signal()).await?;
    Ok(())
}

fn toml_of(settings: &Settings) -> anyhow::Result<String> {
    Ok(toml::to_string_pretty(settings)?)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; stopping on SIGINT only");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
