//! The `roadie` command line, as clap derive types.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::proto::LibraryEventKind;

/// Shown under `roadie --help`; keep in step with [`Exit`](super::Exit).
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success; for get, a hit (fresh or stale); for watch, --count changes
     printed, Ctrl-C or a closed stdout
  1  miss: get found nothing usable, random found no entry, delete found no
     key; health: the server says it is not serving
  2  error: bad usage, no connection, or an error from the server (for watch,
     one it cannot resume after, such as a compacted --from revision)
  3  get found a negative entry (a cached \"not found\")
  4  not written: put kept a higher-confidence entry or its --if-revision did
     not match; delete's --if-revision did not match
  5  warm: an item was refused, a job failed, or Ctrl-C stopped the follow";

/// Help heading of the flags every subcommand takes.
const GLOBAL: &str = "Global options";

/// Read and write the Roadie cache from the command line.
#[derive(Debug, Parser)]
#[command(name = "roadie", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Server to talk to; "host:port" means http://host:port.
    #[arg(
        long,
        value_name = "URL",
        env = "ROADIE_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true,
        help_heading = GLOBAL
    )]
    pub server: String,

    /// Connect timeout, and the deadline of each request ("500ms", "1m").
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = humantime::parse_duration,
        global = true,
        help_heading = GLOBAL
    )]
    pub timeout: Duration,

    /// PEM CA certificates to trust for an https:// server, instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE", env = "ROADIE_CA", global = true, help_heading = GLOBAL)]
    pub ca: Option<PathBuf>,

    /// PEM client certificate chain, for a server that requires one (mTLS).
    #[arg(long, value_name = "FILE", env = "ROADIE_CLIENT_CERT", requires = "client_key", global = true, help_heading = GLOBAL)]
    pub client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", env = "ROADIE_CLIENT_KEY", requires = "client_cert", global = true, help_heading = GLOBAL)]
    pub client_key: Option<PathBuf>,

    /// Bearer token sent with every call; prefer the environment variable,
    /// which other users of the machine cannot read from the process list.
    #[arg(long, value_name = "TOKEN", env = "ROADIE_TOKEN", hide_env_values = true, global = true, help_heading = GLOBAL)]
    pub token: Option<String>,

    /// Machine output: one JSON object per result on stdout.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read one entry.
    #[command(after_help = EXIT_CODES_HELP)]
    Get(GetArgs),
    /// Write one entry.
    #[command(after_help = EXIT_CODES_HELP)]
    Put(PutArgs),
    /// Delete one entry.
    #[command(after_help = EXIT_CODES_HELP)]
    Delete(DeleteArgs),
    /// Delete every entry matching one selector.
    Invalidate(InvalidateArgs),
    /// List the entries matching a selector, in key order.
    Ls(super::list::ListArgs),
    /// Read a random fresh entry carrying a tag.
    #[command(after_help = EXIT_CODES_HELP)]
    Random(RandomArgs),
    /// Publish a library event; the server's rules turn it into invalidations.
    Event(EventArgs),
    /// Entries, bytes and answers by policy, and provider state.
    Stats,
    /// Whether the server answers and says SERVING (gRPC health); exits 1
    /// when it says NOT_SERVING. For container health checks.
    Health(HealthArgs),
    /// Read through the cache, fetching from the provider on a miss.
    #[command(after_help = EXIT_CODES_HELP)]
    Fetch(super::fetch::FetchArgs),
    /// Queue background fetches of every item of a file, then follow them
    /// to the end with a progress bar (exit 5 when any was refused or
    /// failed).
    Warm(super::warm::WarmArgs),
    /// Write, read, merge into and inspect library snapshots.
    Snapshot(super::snapshot::SnapshotArgs),
    /// Inspect and steer the fetch-job queue.
    Jobs(super::jobs::JobsArgs),
    /// Print changes as they happen, one line each, resuming across
    /// disconnects.
    #[command(after_help = EXIT_CODES_HELP)]
    Watch(super::watch::WatchArgs),
}

/// Arguments of `roadie get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key to read.
    pub key: String,

    /// Also accept an entry this long past its expiry (answered as stale).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_stale: Option<Duration>,

    /// Treat entries below this confidence (0 to 100) as a miss.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_confidence: u32,

    /// Treat an entry with another fingerprint as a miss.
    #[arg(long, value_name = "F")]
    pub fingerprint: Option<String>,

    /// Policy to count a miss under in the server's stats.
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,

    /// Write the raw value to FILE instead of printing it; "-" writes it to
    /// stdout with nothing else, so the exit code is the only status.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Arguments of `roadie put`.
#[derive(Debug, Args)]
// clap would list the value group before KEY.
#[command(override_usage = "roadie put [OPTIONS] <KEY> <VALUE|--file <PATH>|--stdin>")]
#[command(group(
    ArgGroup::new("source")
        .required(true)
        .multiple(false)
        .args(["value", "file", "stdin"])
))]
pub struct PutArgs {
    /// The key to write.
    pub key: String,

    /// The value; "-" reads it from stdin.
    pub value: Option<String>,

    /// Read the value from this file.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// Read the value from stdin.
    #[arg(long)]
    pub stdin: bool,

    /// Policy to store the entry under (server default: "generic").
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,

    /// Media type of the value (server default: application/octet-stream).
    #[arg(long, value_name = "T")]
    pub media_type: Option<String>,

    /// A tag; repeat for several. Replaces the stored tags.
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,

    /// Confidence, 0 to 100.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub confidence: u32,

    /// Keep a stored entry with a higher confidence instead of overwriting it.
    #[arg(long)]
    pub keep_higher_confidence: bool,

    /// Fingerprint of the source the value was derived from.
    #[arg(long, value_name = "F")]
    pub fingerprint: Option<String>,

    /// A metadata pair; repeat for several.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,

    /// Lifetime, overriding the policy's TTL.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "no_expiry")]
    pub ttl: Option<Duration>,

    /// Never expire.
    #[arg(long)]
    pub no_expiry: bool,

    /// Write only if the stored revision is N (0: only if the key is absent).
    #[arg(long, value_name = "N")]
    pub if_revision: Option<u64>,

    /// Store a negative entry: a known "not found".
    #[arg(long)]
    pub negative: bool,
}

/// Arguments of `roadie delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The key to delete.
    pub key: String,

    /// Delete only if the stored revision is N.
    #[arg(long, value_name = "N")]
    pub if_revision: Option<u64>,
}

/// Arguments of `roadie invalidate`: exactly one selector.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct InvalidateArgs {
    /// Exactly this key.
    #[arg(long, value_name = "K")]
    pub key: Option<String>,

    /// Every key starting with this prefix.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,

    /// Every entry carrying this tag.
    #[arg(long, value_name = "T")]
    pub tag: Option<String>,

    /// Every entry under this policy.
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,

    /// Everything.
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `roadie random`.
#[derive(Debug, Args)]
pub struct RandomArgs {
    /// The tag the entry must carry, for example "artist:daft punk".
    pub tag: String,

    /// Only entries under this policy.
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,

    /// Only entries fetched by this provider.
    #[arg(long, value_name = "P")]
    pub provider: Option<String>,
}

/// Arguments of `roadie event`.
#[derive(Debug, Args)]
pub struct EventArgs {
    /// What happened.
    pub kind: LibraryEventKind,

    /// The track concerned (needed by the track-* and fingerprint-changed kinds).
    #[arg(long = "track", value_name = "ID")]
    pub track_id: Option<String>,

    /// The track's artist; for manual, the scope.
    #[arg(long, value_name = "A")]
    pub artist: Option<String>,

    /// The track's album; for manual, the scope (with --artist).
    #[arg(long, value_name = "A")]
    pub album: Option<String>,

    /// For track-modified: the artist before the change.
    #[arg(long, value_name = "A")]
    pub old_artist: Option<String>,

    /// For track-modified: the album before the change.
    #[arg(long, value_name = "A")]
    pub old_album: Option<String>,

    /// For fingerprint-changed: the new fingerprint.
    #[arg(long, value_name = "F")]
    pub fingerprint: Option<String>,
}

/// Parses "key=value", splitting at the first '=' so values may contain '='.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("roadie").chain(args.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_have_defaults_and_go_anywhere() {
        let cli = parse(&["get", "k"]).expect("parses");
        assert_eq!(cli.timeout, Duration::from_secs(10));
        assert!(!cli.json);
        let cli = parse(&[
            "get",
            "k",
            "--json",
            "--timeout",
            "250ms",
            "--server",
            "h:1",
        ])
        .expect("parses");
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_millis(250));
        assert_eq!(cli.server, "h:1");
    }

    #[test]
    fn put_takes_exactly_one_value_source() {
        let missing = parse(&["put", "k"]).expect_err("no source");
        assert_eq!(missing.kind(), ErrorKind::MissingRequiredArgument);
        let two = parse(&["put", "k", "v", "--stdin"]).expect_err("two sources");
        assert_eq!(two.kind(), ErrorKind::ArgumentConflict);
        let two = parse(&["put", "k", "--file", "f", "--stdin"]).expect_err("two sources");
        assert_eq!(two.kind(), ErrorKind::ArgumentConflict);
        for ok in [
            &["put", "k", "v"][..],
            &["put", "k", "-"],
            &["put", "k", "--file", "f"],
            &["put", "k", "--stdin"],
        ] {
            parse(ok).expect("one source");
        }
    }

    #[test]
    fn put_parses_repeated_tags_and_metadata() {
        let cli = parse(&[
            "put",
            "k",
            "v",
            "--tag",
            "a",
            "--tag",
            "b",
            "--meta",
            "x=1=2",
            "--meta",
            "y=",
            "--ttl",
            "1h",
            "--if-revision",
            "0",
        ])
        .expect("parses");
        let Command::Put(put) = cli.command else {
            panic!("expected put");
        };
        assert_eq!(put.tags, ["a", "b"]);
        assert_eq!(
            put.metadata,
            [
                ("x".to_owned(), "1=2".to_owned()),
                ("y".to_owned(), String::new())
            ]
        );
        assert_eq!(put.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(put.if_revision, Some(0));
    }

    #[test]
    fn put_rejects_bad_metadata_and_ttl_with_no_expiry() {
        let bad = parse(&["put", "k", "v", "--meta", "novalue"]).expect_err("bad meta");
        assert_eq!(bad.kind(), ErrorKind::ValueValidation);
        let bad = parse(&["put", "k", "v", "--meta", "=v"]).expect_err("empty key");
        assert_eq!(bad.kind(), ErrorKind::ValueValidation);
        let both = parse(&["put", "k", "v", "--ttl", "1h", "--no-expiry"]).expect_err("conflict");
        assert_eq!(both.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn invalidate_takes_exactly_one_selector() {
        let none = parse(&["invalidate"]).expect_err("no selector");
        assert_eq!(none.kind(), ErrorKind::MissingRequiredArgument);
        let two = parse(&["invalidate", "--all", "--tag", "t"]).expect_err("two selectors");
        assert_eq!(two.kind(), ErrorKind::ArgumentConflict);
        parse(&["invalidate", "--prefix", "p"]).expect("one selector");
    }

    #[test]
    fn event_kinds_use_kebab_case() {
        let cli = parse(&[
            "event",
            "fingerprint-changed",
            "--track",
            "t1",
            "--fingerprint",
            "f",
        ])
        .expect("parses");
        let Command::Event(event) = cli.command else {
            panic!("expected event");
        };
        assert_eq!(event.kind, LibraryEventKind::FingerprintChanged);
        assert_eq!(event.track_id.as_deref(), Some("t1"));
        let manual = parse(&["event", "manual"]).expect("parses");
        let Command::Event(event) = manual.command else {
            panic!("expected event");
        };
        assert_eq!(event.kind, LibraryEventKind::ManualInvalidation);
        assert!(parse(&["event", "track_added"]).is_err());
        assert!(parse(&["event", "unspecified"]).is_err());
    }

    #[test]
    fn usage_errors_exit_with_two() {
        let error = parse(&["get"]).expect_err("missing key");
        assert_eq!(error.exit_code(), 2);
    }
}

/// `roadie health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service to ask about ("roadie.v1.Cache", "roadie.v1.Jobs"); the
    /// server as a whole by default.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub service: String,
}
