//! `roadie-server`: parses flags, loads configuration, binds, serves.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use roadie_server::{App, config::Settings};
use tokio_util::sync::CancellationToken;

/// mimalloc, not glibc's malloc: allocation and release took a fifth of
/// the server's CPU on a Put load (BENCHMARKS.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Roadie gRPC server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML configuration file; `ROADIE__SECTION__KEY` variables override it.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Apply the store's pending migrations and exit (for a Kubernetes Job
    /// or an init container, with `store.migrate = "off"` on the servers
    /// and workers).
    Migrate,
    /// Write a consistent copy of a SQLite store to PATH (a new file) while
    /// servers and workers keep using it; Postgres stores are backed up with
    /// `pg_dump`.
    Backup {
        /// Where the copy goes; must not exist yet.
        path: PathBuf,
    },
    /// Read a token on stdin and print its SHA-256 digest, the
    /// `token_sha256` of an `[[auth.tokens]]` entry.
    HashToken,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::HashToken) = args.command {
        let mut token = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)
            .context("cannot read the token on stdin")?;
        if token.trim().is_empty() {
            config_exit(&"hash-token: no token on stdin");
        }
        println!("{}", roadie_server::token_digest(&token));
        return Ok(());
    }
    let settings = match Settings::load(args.config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => config_exit(&error),
    };
    if args.print_config {
        println!("{}", toml_of(&settings.redacted())?);
        return Ok(());
    }
    let telemetry = roadie_telemetry::init("roadie-server", &settings)
        .unwrap_or_else(|error| config_exit(&error));
    let done = match &args.command {
        Some(Command::Migrate) => migrate(&settings).await,
        Some(Command::Backup { path }) => backup(&settings, path).await,
        Some(Command::HashToken) => Ok(()),
        None => {
            settings
                .check_exposure()
                .unwrap_or_else(|error| config_exit(&error));
            run(settings, &telemetry).await
        }
    };
    // After the drain (or the command): the last spans go out too.
    telemetry.shutdown().await;
    done
}

/// `roadie-server migrate`.
async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let mut options = settings.store.options();
    options.migrate = true;
    let store = open_store(&options).await?;
    tracing::info!(store = %roadie_store::redact(&options.url), "the store's schema is up to date");
    store.close().await;
    Ok(())
}

/// `roadie-server backup PATH`.
async fn backup(settings: &Settings, path: &std::path::Path) -> anyhow::Result<()> {
    let store = open_store(&settings.store.options()).await?;
    let revision = store.revision_current().await?;
    store
        .backup_to(path)
        .await
        .with_context(|| format!("cannot back up to {}", path.display()))?;
    tracing::info!(path = %path.display(), revision_at_least = revision, "backup written");
    store.close().await;
    Ok(())
}

/// Opens the store for a one-off command, retried while it is unreachable.
async fn open_store(options: &roadie_store::StoreOptions) -> anyhow::Result<roadie_store::Store> {
    roadie_store::Store::connect_retrying(options)
        .await
        .with_context(|| {
            format!(
                "cannot open the store at {}",
                roadie_store::redact(&options.url)
            )
        })
}

/// Opens, binds (the gRPC port and the admin port if set) and serves until
/// a signal, then drains.
async fn run(settings: Settings, telemetry: &roadie_telemetry::Telemetry) -> anyhow::Result<()> {
    let listen = settings.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
    let ready = roadie_telemetry::admin::Readiness::default();
    let stop_admin = CancellationToken::new();
    let admin = match settings.admin.listen {
        Some(addr) => {
            let listener = roadie_telemetry::admin::bind(addr).await?;
            Some(roadie_telemetry::admin::serve(
                listener,
                telemetry,
                ready.clone(),
                stop_admin.clone(),
            ))
        }
        None => None,
    };
    // Both ports are bound first: until the store is reached, health and
    // /readyz say not ready.
    let admin = admin.map(tokio::spawn);
    let (app, listener) = App::open_on(settings, listener, ready).await?;
    let serve = app.serve(listener, shutdown_signal());
    let served = serve.await;
    stop_admin.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    served?;
    Ok(())
}

/// Reports a configuration error naming the setting, and exits 2.
fn config_exit(error: &dyn std::fmt::Display) -> ! {
    eprintln!("roadie-server: {error}");
    std::process::exit(2);
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
