//! The `roadie` command-line tool: argument types ([`Cli`]), the commands
//! ([`run`]) and their output.
//!
//! Results go to stdout, as text or (with `--json`) one JSON object per
//! result; errors go to stderr as one line, naming the field for an
//! INVALID_ARGUMENT. The exit code tells scripts what happened:
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0 | success; for `get`, a hit (fresh or stale); for `watch`, `--count` changes printed, Ctrl-C or a closed stdout |
//! | 1 | miss: `get` found nothing usable, `random` found no entry, `delete` found no key, `fetch` answered with a job still under way, `jobs show` found no job |
//! | 2 | error: bad usage (clap's own exit code), no connection, or an error from the server (for `watch`, one it cannot resume after, such as a `--from` revision the server no longer holds) |
//! | 3 | `get` or `fetch` found a negative entry (a cached "not found") |
//! | 4 | not written: `put` kept a higher-confidence entry or its `--if-revision` did not match; `delete`'s `--if-revision` did not match |

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::error::ClientError;
use crate::proto::{self, LookupStatus, PutOutcome, invalidate_request::Selector};
use crate::{Client, ConnectOptions};
use tonic_health::pb::health_check_response::ServingStatus;

mod args;
mod fetch;
mod jobs;
mod list;
mod output;
mod snapshot;
mod warm;
mod watch;

pub use args::{
    Cli, Command, DeleteArgs, EventArgs, GetArgs, HealthArgs, InvalidateArgs, PutArgs, RandomArgs,
};
pub use fetch::FetchArgs;
pub use jobs::{JobsArgs, JobsCommand};
use output::{EntryJson, LookupJson, RandomJson, StatsJson, ValueSink, write_json};
pub use watch::WatchArgs;

/// The exit code of one `roadie` run; see the table in the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: success, or a fresh or stale hit.
    Success,
    /// 1: nothing found.
    Miss,
    /// 2: usage, connection or server error.
    Error,
    /// 3: a negative entry.
    Negative,
    /// 4: a conditional write or delete did not happen.
    NotWritten,
    /// 5: warm: an item was refused, a job failed, or the follow stopped
    /// before the end.
    Incomplete,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Miss => 1,
            Exit::Error => 2,
            Exit::Negative => 3,
            Exit::NotWritten => 4,
            Exit::Incomplete => 5,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// Why a command failed (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Connecting or the RPC failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The value could not be read.
    #[error("cannot read {what}: {source}")]
    Read {
        /// The file, or "stdin".
        what: String,
        /// The IO error.
        source: io::Error,
    },
    /// The value could not be written to `--output`.
    #[error("cannot write {path}: {source}")]
    WriteFile {
        /// The file.
        path: String,
        /// The IO error.
        source: io::Error,
    },
    /// A line of an input file is neither form it may take.
    #[error("line {line}: {reason}")]
    Input {
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// `warm` cannot follow the jobs it queued.
    #[error(
        "the jobs are queued, but following them needs the admin role ({provider}: {reason}); \
         use --no-wait, or a token with the admin role"
    )]
    Follow {
        /// A provider whose jobs could not be read.
        provider: String,
        /// The server's refusal.
        reason: String,
    },
    /// An argument clap accepted but the request cannot carry.
    #[error("invalid {flag}: {reason}")]
    Argument {
        /// The flag, for example "--ttl".
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// `watch` asked for changes the server's change log no longer holds.
    #[error(
        "revision {after} is no longer in the change log (the oldest retained \
         revision is {oldest}): resync, then resume with `roadie watch --from REV` \
         where REV is the revision your copy reflects"
    )]
    Compacted {
        /// The revision the watch asked to continue after.
        after: u64,
        /// The oldest revision the server still retains.
        oldest: u64,
    },
    /// The server answered something the API never sends.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// Stdout could not be written, for example a closed pipe.
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

/// Runs one parsed command line: connects, sends the request, prints the
/// answer to `stdout` (or an error to `stderr`) and says how to exit.
/// `stdin` is read only for `put --stdin` or `put KEY -`; `watch` also logs
/// its reconnects to `stderr`.
pub async fn run(
    cli: Cli,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Exit {
    match execute(cli, stdin, stdout, stderr).await {
        Ok(exit) => exit,
        Err(error) => {
            // Nothing better to do if stderr itself is gone.
            let _ = writeln!(stderr, "roadie: {error}");
            Exit::Error
        }
    }
}

async fn execute(
    cli: Cli,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, CliError> {
    let json = cli.json;
    // Read a put's value before connecting, so a bad path fails without
    // waiting on the network.
    let put_value = match &cli.command {
        Command::Put(put) => Some(read_value(put, stdin)?),
        _ => None,
    };
    let mut options = ConnectOptions::new(cli.timeout);
    let read_file = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| CliError::Read {
            what: path.display().to_string(),
            source,
        })
    };
    options.ca = cli.ca.as_deref().map(read_file).transpose()?;
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        options.identity = Some((read_file(cert)?, read_file(key)?));
    }
    let mut client = Client::connect_with(cli.server, &options)
        .await?
        .with_request_timeout(cli.timeout);
    if let Some(token) = &cli.token {
        client = client.with_token(token.trim())?;
    }
    let exit = match cli.command {
        Command::Get(args) => get(&client, args, json, out).await?,
        Command::Put(args) => {
            let value = put_value.unwrap_or_default();
            put(&client, args, value, json, out).await?
        }
        Command::Delete(args) => delete(&client, args, json, out).await?,
        Command::Invalidate(args) => invalidate(&client, args, json, out).await?,
        Command::Random(args) => random(&client, args, json, out).await?,
        Command::Ls(args) => list::run(&client, args, json, out).await?,
        Command::Event(args) => event(&client, args, json, out).await?,
        Command::Stats => stats(&client, json, out).await?,
        Command::Health(args) => health(&client, args, json, out).await?,
        Command::Jobs(args) => jobs::run(&client, args, json, out).await?,
        Command::Fetch(args) => fetch::run(&client, args, json, out).await?,
        Command::Warm(args) => warm::run(&client, args, stdin, json, out, err).await?,
        Command::Snapshot(args) => snapshot::run(&client, args, stdin, json, out).await?,
        // Flushed line by line already, and a reader that went away (`| head`)
        // is how a watch may end: a final flush would only fail on it.
        Command::Watch(args) => return watch::run(&client, args, json, out, err).await,
    };
    out.flush()?;
    Ok(exit)
}

async fn get(
    client: &Client,
    args: GetArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let request = proto::GetRequest {
        key: args.key,
        max_stale: args
            .max_stale
            .map(|d| proto_duration("--max-stale", d))
            .transpose()?,
        min_confidence: args.min_confidence,
        fingerprint: args.fingerprint.unwrap_or_default(),
        policy: args.policy.unwrap_or_default(),
    };
    let response = client.get(request).await?;
    let status = response.status();
    let exit = match status {
        LookupStatus::Hit | LookupStatus::Stale => Exit::Success,
        LookupStatus::Miss => Exit::Miss,
        LookupStatus::Negative => Exit::Negative,
        LookupStatus::Unspecified => {
            return Err(CliError::Protocol("lookup status not set".to_owned()));
        }
    };
    let entry = match (status, response.entry) {
        (LookupStatus::Miss, _) => None,
        (_, Some(entry)) => Some(entry),
        (_, None) => {
            return Err(CliError::Protocol(format!(
                "{} without an entry",
                output::lookup_label(status)
            )));
        }
    };

    let output = args.output.as_deref();
    if output == Some(Path::new("-")) {
        if let Some(entry) = &entry {
            out.write_all(&entry.value)?;
        }
        return Ok(exit);
    }
    let output_name = output.map(|path| path.display().to_string());
    if let (Some(path), Some(entry)) = (output, &entry) {
        std::fs::write(path, &entry.value).map_err(|source| CliError::WriteFile {
            path: path.display().to_string(),
            source,
        })?;
    }
    let sink = match &output_name {
        Some(path) => ValueSink::File(path),
        None => ValueSink::Inline,
    };

    if json {
        let answer = LookupJson {
            status: output::lookup_label(status),
            entry: entry.as_ref().map(|entry| EntryJson::new(entry, sink)),
        };
        write_json(out, &answer)?;
    } else {
        writeln!(out, "status: {}", output::lookup_label(status))?;
        if let Some(entry) = &entry {
            output::write_entry(out, entry, sink)?;
        }
    }
    Ok(exit)
}

/// The value of a put, from exactly one of the sources clap allowed.
/// The text of an input file, or of stdin for "-".
fn read_text(path: &std::path::Path, stdin: &mut dyn Read) -> Result<String, CliError> {
    let mut text = String::new();
    let result = if path.as_os_str() == "-" {
        stdin.read_to_string(&mut text).map(drop)
    } else {
        std::fs::read_to_string(path).map(|read| text = read)
    };
    result.map_err(|source| CliError::Read {
        what: if path.as_os_str() == "-" {
            "stdin".to_owned()
        } else {
            path.display().to_string()
        },
        source,
    })?;
    Ok(text)
}

fn read_value(args: &PutArgs, stdin: &mut dyn Read) -> Result<Vec<u8>, CliError> {
    if let Some(path) = &args.file {
        return std::fs::read(path).map_err(|source| CliError::Read {
            what: path.display().to_string(),
            source,
        });
    }
    match args.value.as_deref() {
        Some("-") | None => {
            let mut value = Vec::new();
            stdin
                .read_to_end(&mut value)
                .map_err(|source| CliError::Read {
                    what: "stdin".to_owned(),
                    source,
                })?;
            Ok(value)
        }
        Some(value) => Ok(value.as_bytes().to_vec()),
    }
}

async fn put(
    client: &Client,
    args: PutArgs,
    value: Vec<u8>,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let request = proto::PutRequest {
        key: args.key,
        value: value.into(),
        media_type: args.media_type.unwrap_or_default(),
        policy: args.policy.unwrap_or_default(),
        tags: args.tags,
        confidence: args.confidence,
        keep_higher_confidence: args.keep_higher_confidence,
        fingerprint: args.fingerprint.unwrap_or_default(),
        metadata: args.metadata.into_iter().collect(),
        ttl: args.ttl.map(|d| proto_duration("--ttl", d)).transpose()?,
        no_expiry: args.no_expiry,
        if_revision: args.if_revision,
        negative: args.negative,
    };
    let response = client.put(request).await?;
    let outcome = response.outcome();
    let exit = match outcome {
        PutOutcome::Written => Exit::Success,
        PutOutcome::KeptHigherConfidence | PutOutcome::RevisionMismatch => Exit::NotWritten,
        PutOutcome::Unspecified => {
            return Err(CliError::Protocol("put outcome not set".to_owned()));
        }
    };
    if json {
        write_json(
            out,
            &serde_json::json!({
                "outcome": output::put_outcome_label(outcome),
                "revision": response.revision,
                "stored_confidence": response.stored_confidence,
            }),
        )?;
    } else {
        match outcome {
            PutOutcome::KeptHigherConfidence => writeln!(
                out,
                "not written: the stored entry has confidence {} (revision {})",
                response.stored_confidence, response.revision
            )?,
            PutOutcome::RevisionMismatch if response.revision == 0 => {
                writeln!(out, "not written: revision mismatch (the key is absent)")?;
            }
            PutOutcome::RevisionMismatch => writeln!(
                out,
                "not written: revision mismatch (stored revision {})",
                response.revision
            )?,
            _ => writeln!(out, "written (revision {})", response.revision)?,
        }
    }
    Ok(exit)
}

async fn delete(
    client: &Client,
    args: DeleteArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let conditional = args.if_revision.is_some();
    let response = client
        .delete(proto::DeleteRequest {
            key: args.key,
            if_revision: args.if_revision,
        })
        .await?;
    // Not deleted and nothing stored (revision 0) is a miss even with
    // --if-revision: there was nothing for the condition to protect.
    let (exit, result) = if response.deleted {
        (Exit::Success, "deleted")
    } else if conditional && response.revision != 0 {
        (Exit::NotWritten, "revision_mismatch")
    } else {
        (Exit::Miss, "absent")
    };
    if json {
        write_json(
            out,
            &serde_json::json!({
                "result": result,
                "deleted": response.deleted,
                "revision": response.revision,
            }),
        )?;
    } else {
        match exit {
            Exit::Success => writeln!(out, "deleted (revision {})", response.revision)?,
            Exit::NotWritten => writeln!(
                out,
                "not deleted: revision mismatch (stored revision {})",
                response.revision
            )?,
            _ => writeln!(out, "not found")?,
        }
    }
    Ok(exit)
}

async fn invalidate(
    client: &Client,
    args: InvalidateArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let response = client
        .invalidate(proto::InvalidateRequest {
            selector: Some(selector(args)),
        })
        .await?;
    if json {
        write_json(
            out,
            &serde_json::json!({ "count": response.count, "revision": response.revision }),
        )?;
    } else {
        writeln!(
            out,
            "invalidated {} {} (revision {})",
            response.count,
            entries_word(response.count),
            response.revision
        )?;
    }
    Ok(Exit::Success)
}

/// The one selector clap's group let through; `--all` is the fallback
/// because it is the only one without a value.
fn selector(args: InvalidateArgs) -> Selector {
    if let Some(key) = args.key {
        Selector::Key(key)
    } else if let Some(prefix) = args.prefix {
        Selector::KeyPrefix(prefix)
    } else if let Some(tag) = args.tag {
        Selector::Tag(tag)
    } else if let Some(policy) = args.policy {
        Selector::Policy(policy)
    } else {
        Selector::All(true)
    }
}

async fn random(
    client: &Client,
    args: RandomArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let tag = args.tag.clone();
    let response = client
        .get_random(proto::GetRandomRequest {
            tag: args.tag,
            policy: args.policy.unwrap_or_default(),
            provider: args.provider.unwrap_or_default(),
        })
        .await?;
    let exit = if response.entry.is_some() {
        Exit::Success
    } else {
        Exit::Miss
    };
    if json {
        let answer = RandomJson {
            entry: response
                .entry
                .as_ref()
                .map(|entry| EntryJson::new(entry, ValueSink::Inline)),
        };
        write_json(out, &answer)?;
    } else {
        match &response.entry {
            Some(entry) => output::write_entry(out, entry, ValueSink::Inline)?,
            None => writeln!(out, "no entry with tag {tag:?}")?,
        }
    }
    Ok(exit)
}

async fn event(
    client: &Client,
    args: EventArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let response = client
        .publish_event(proto::PublishEventRequest {
            kind: args.kind as i32,
            track_id: args.track_id.unwrap_or_default(),
            artist: args.artist.unwrap_or_default(),
            album: args.album.unwrap_or_default(),
            old_artist: args.old_artist.unwrap_or_default(),
            old_album: args.old_album.unwrap_or_default(),
            fingerprint: args.fingerprint.unwrap_or_default(),
        })
        .await?;
    if json {
        let applied: Vec<_> = response
            .applied
            .iter()
            .map(|rule| {
                serde_json::json!({ "policy": rule.policy, "tag": rule.tag, "count": rule.count })
            })
            .collect();
        write_json(
            out,
            &serde_json::json!({
                "count": response.count,
                "revision": response.revision,
                "applied": applied,
            }),
        )?;
    } else {
        writeln!(
            out,
            "invalidated {} {} (revision {})",
            response.count,
            entries_word(response.count),
            response.revision
        )?;
        for rule in &response.applied {
            let scope = if rule.tag.is_empty() {
                "whole policy"
            } else {
                rule.tag.as_str()
            };
            writeln!(out, "  {} [{}]: {}", rule.policy, scope, rule.count)?;
        }
    }
    Ok(Exit::Success)
}

async fn stats(client: &Client, json: bool, out: &mut dyn Write) -> Result<Exit, CliError> {
    let response = client.stats(proto::StatsRequest {}).await?;
    if json {
        write_json(out, &StatsJson::new(&response))?;
    } else {
        output::write_stats(out, &response)?;
    }
    Ok(Exit::Success)
}

async fn health(
    client: &Client,
    args: HealthArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let status = client.health(&args.service).await?;
    let name = status.as_str_name();
    if json {
        write_json(
            out,
            &serde_json::json!({ "service": args.service, "status": name }),
        )?;
    } else {
        writeln!(out, "{name}")?;
    }
    Ok(match status {
        ServingStatus::Serving => Exit::Success,
        _ => Exit::Miss,
    })
}

fn entries_word(count: u64) -> &'static str {
    if count == 1 { "entry" } else { "entries" }
}

/// A protobuf duration; only durations past about 292 billion years fail.
fn proto_duration(
    flag: &'static str,
    duration: Duration,
) -> Result<prost_types::Duration, CliError> {
    prost_types::Duration::try_from(duration).map_err(|error| CliError::Argument {
        flag,
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_args(value: Option<&str>, file: Option<&str>) -> PutArgs {
        let mut args = vec!["roadie", "put", "k"];
        match (value, file) {
            (Some(value), _) => args.push(value),
            (None, Some(file)) => args.extend(["--file", file]),
            (None, None) => args.push("--stdin"),
        }
        let cli = <Cli as clap::Parser>::try_parse_from(args).expect("parses");
        match cli.command {
            Command::Put(put) => put,
            other => panic!("expected put, got {other:?}"),
        }
    }

    #[test]
    fn exit_codes_are_stable() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Miss.code(), 1);
        assert_eq!(Exit::Error.code(), 2);
        assert_eq!(Exit::Negative.code(), 3);
        assert_eq!(Exit::NotWritten.code(), 4);
    }

    #[test]
    fn value_comes_from_argument_or_stdin() {
        let mut stdin: &[u8] = b"from stdin";
        let value = read_value(&put_args(Some("inline"), None), &mut stdin).expect("reads");
        assert_eq!(value, b"inline");
        let value = read_value(&put_args(Some("-"), None), &mut stdin).expect("reads");
        assert_eq!(value, b"from stdin");
        let mut stdin: &[u8] = b"\xff\x00";
        let value = read_value(&put_args(None, None), &mut stdin).expect("reads");
        assert_eq!(value, b"\xff\x00");
    }

    #[test]
    fn missing_file_names_the_path() {
        let mut stdin: &[u8] = b"";
        let error = read_value(
            &put_args(None, Some("/nonexistent/roadie-value")),
            &mut stdin,
        )
        .expect_err("no such file");
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/roadie-value: "),
            "{error}"
        );
    }

    #[test]
    fn invalidate_selector_follows_the_flag() {
        let parse = |args: &[&str]| {
            let cli =
                <Cli as clap::Parser>::try_parse_from(["roadie", "invalidate"].iter().chain(args))
                    .expect("parses");
            match cli.command {
                Command::Invalidate(args) => selector(args),
                other => panic!("expected invalidate, got {other:?}"),
            }
        };
        assert_eq!(parse(&["--key", "k"]), Selector::Key("k".to_owned()));
        assert_eq!(
            parse(&["--prefix", "p"]),
            Selector::KeyPrefix("p".to_owned())
        );
        assert_eq!(parse(&["--tag", "t"]), Selector::Tag("t".to_owned()));
        assert_eq!(parse(&["--policy", "x"]), Selector::Policy("x".to_owned()));
        assert_eq!(parse(&["--all"]), Selector::All(true));
    }

    #[tokio::test]
    async fn bad_endpoint_is_an_error_on_stderr() {
        let cli = <Cli as clap::Parser>::try_parse_from([
            "roadie",
            "--server",
            "http://bad host:1",
            "stats",
        ])
        .expect("parses");
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let exit = run(cli, &mut io::empty(), &mut stdout, &mut stderr).await;
        assert_eq!(exit, Exit::Error);
        assert!(stdout.is_empty());
        let stderr = String::from_utf8(stderr).expect("utf-8");
        assert!(
            stderr.starts_with("roadie: cannot connect to http://bad host:1: invalid endpoint"),
            "{stderr}"
        );
    }
}
