//! The `roadie` command-line tool. Everything but parsing and wiring the
//! process's standard streams lives in [`roadie_client::cli`], which also
//! documents the commands and the exit codes scripts rely on.

use std::io;
use std::process::ExitCode;

use clap::Parser;
use roadie_client::cli::{self, Cli};

// One request per run: a single-threaded runtime is all it needs.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Usage errors exit 2 from here, matching the tool's own error code.
    let cli = Cli::parse();
    let exit = cli::run(
        cli,
        &mut io::stdin().lock(),
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )
    .await;
    exit.into()
}
