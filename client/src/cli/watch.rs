//! `roadie watch`: print changes as they happen, one line each.
//!
//! The watch resumes by itself across disconnects and server restarts (each
//! reconnect is logged to stderr) and runs until `--count` changes were
//! printed, Ctrl-C, a closed stdout, or an error that retrying cannot fix.

use std::io::{self, Write};

use clap::Args;
use serde::Serialize;

use super::{
    CliError, Exit,
    output::{EntryJson, ValueSink, write_json},
};
use crate::error::ClientError;
use crate::proto::{self, ChangeKind};
use crate::{Client, WatchEvent};

/// Arguments of `roadie watch`. Filters combine with AND; a repeated filter
/// matches any of its values.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only keys starting with this prefix.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Only entries carrying this tag (repeatable).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Only entries under this policy (repeatable).
    #[arg(long = "policy", value_name = "P")]
    pub policies: Vec<String>,
    /// Only entries fetched by this provider (repeatable).
    #[arg(long = "provider", value_name = "P")]
    pub providers: Vec<String>,
    /// Only this kind of change (repeatable, or comma-separated).
    #[arg(long = "kind", value_name = "KIND", value_delimiter = ',')]
    pub kinds: Vec<ChangeKind>,
    /// Print the changes after this revision instead of those from now on;
    /// the last revision a previous watch printed resumes it.
    #[arg(long = "from", value_name = "REV")]
    pub from: Option<u64>,
    /// Include the entry's value with put and fetch changes.
    #[arg(long)]
    pub values: bool,
    /// Also print the server's progress messages (the revision up to which
    /// everything matching was printed).
    #[arg(long)]
    pub progress: bool,
    /// Exit (with 0) after printing this many changes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// The request `args` describe.
fn request(args: &WatchArgs) -> proto::WatchRequest {
    proto::WatchRequest {
        key_prefix: args.prefix.clone().unwrap_or_default(),
        tags: args.tags.clone(),
        policies: args.policies.clone(),
        providers: args.providers.clone(),
        kinds: args.kinds.iter().map(|kind| *kind as i32).collect(),
        after_revision: args.from,
        include_values: args.values,
    }
}

/// Runs `roadie watch`: exit 0 after `--count` changes, on Ctrl-C or when
/// stdout is closed; 2 on an error that ends the watch.
pub async fn run(
    client: &Client,
    args: WatchArgs,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mut watch = client.watch(request(&args));
    // Resolves on Ctrl-C only: if the handler cannot be installed, the watch
    // runs until killed, as it would without one.
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    let mut printed = 0;
    loop {
        let event = tokio::select! {
            () = &mut interrupted => return Ok(Exit::Success),
            event = watch.next() => event,
        };
        let written = match event {
            None => return Ok(Exit::Success),
            Some(Err(ClientError::Compacted { after, oldest })) => {
                return Err(CliError::Compacted { after, oldest });
            }
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(WatchEvent::Change(change))) => {
                printed += 1;
                write_change(out, &change, json)
            }
            Some(Ok(WatchEvent::Progress(revision))) if args.progress => {
                write_progress(out, revision, json)
            }
            Some(Ok(WatchEvent::Progress(_))) => Ok(()),
            Some(Ok(WatchEvent::Reconnecting {
                after,
                delay,
                cause,
            })) => {
                let at = after.map_or_else(
                    || "before it started".to_owned(),
                    |after| format!("after revision {after}"),
                );
                // A lost log line is no reason to stop watching.
                let _ = writeln!(
                    err,
                    "roadie: watch interrupted {at} ({cause}); reconnecting in {}",
                    humantime::format_duration(round_to_millis(delay))
                );
                Ok(())
            }
        };
        match written.and_then(|()| out.flush()) {
            Ok(()) => {}
            // `roadie watch | head -n 3`: the reader has all it wanted.
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(Exit::Success),
            Err(error) => return Err(error.into()),
        }
        if args.count.is_some_and(|count| printed >= count) {
            return Ok(Exit::Success);
        }
    }
}

fn round_to_millis(delay: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
}

/// Lower-case name of a change kind, as typed with `--kind`.
fn kind_label(kind: i32) -> &'static str {
    match ChangeKind::try_from(kind) {
        Ok(ChangeKind::Put) => "put",
        Ok(ChangeKind::Delete) => "delete",
        Ok(ChangeKind::Invalidate) => "invalidate",
        Ok(ChangeKind::Expire) => "expire",
        Ok(ChangeKind::Evict) => "evict",
        Ok(ChangeKind::Fetch) => "fetch",
        Ok(ChangeKind::Negative) => "negative",
        Ok(ChangeKind::Snapshot) => "snapshot",
        Ok(ChangeKind::Unspecified) | Err(_) => "unknown",
    }
}

/// One change as JSON.
#[derive(Debug, Serialize)]
struct ChangeJson<'a> {
    event: &'static str,
    revision: u64,
    kind: &'static str,
    key: &'a str,
    policy: &'a str,
    tags: &'a [String],
    provider: Option<&'a str>,
    at: Option<String>,
    entry: Option<EntryJson>,
}

/// Writes one change on one line: `42 put artist:x policy=generic tags=a,b
/// provider=musicbrainz`, then, with `--values`, the value.
fn write_change(out: &mut dyn Write, change: &proto::Change, json: bool) -> io::Result<()> {
    if json {
        return write_json(
            out,
            &ChangeJson {
                event: "change",
                revision: change.revision,
                kind: kind_label(change.kind),
                key: &change.key,
                policy: &change.policy,
                tags: &change.tags,
                provider: Some(change.provider.as_str()).filter(|p| !p.is_empty()),
                at: change.at.as_ref().map(ToString::to_string),
                entry: change
                    .entry
                    .as_ref()
                    .map(|entry| EntryJson::new(entry, ValueSink::Inline)),
            },
        );
    }
    let mut line = format!(
        "{} {} {} policy={}",
        change.revision,
        kind_label(change.kind),
        word(&change.key),
        word(&change.policy)
    );
    if !change.tags.is_empty() {
        let tags: Vec<String> = change.tags.iter().map(|tag| word(tag)).collect();
        line.push_str(&format!(" tags={}", tags.join(",")));
    }
    if !change.provider.is_empty() {
        line.push_str(&format!(" provider={}", word(&change.provider)));
    }
    if let Some(entry) = &change.entry {
        match std::str::from_utf8(&entry.value) {
            Ok(text) => line.push_str(&format!(" value={}", quoted(text))),
            Err(_) => line.push_str(&format!(" value=<{} bytes, binary>", entry.value.len())),
        }
    }
    writeln!(out, "{line}")
}

fn write_progress(out: &mut dyn Write, revision: u64, json: bool) -> io::Result<()> {
    if json {
        write_json(
            out,
            &serde_json::json!({ "event": "progress", "revision": revision }),
        )
    } else {
        writeln!(out, "progress {revision}")
    }
}

/// `text` as is when it reads as one word, quoted otherwise, so that a key
/// with spaces (or a line break) cannot be mistaken for the next field or
/// line.
fn word(text: &str) -> String {
    let plain = !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == ',');
    if plain { text.to_owned() } else { quoted(text) }
}

/// `text` as a JSON string: quoted, with escapes.
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> WatchArgs {
        let cli =
            <Cli as clap::Parser>::try_parse_from(["roadie", "watch"].iter().chain(args.iter()))
                .expect("parses");
        match cli.command {
            Command::Watch(watch) => watch,
            other => panic!("expected watch, got {other:?}"),
        }
    }

    fn shown(change: &proto::Change, json: bool) -> String {
        let mut out = Vec::new();
        write_change(&mut out, change, json).expect("writes to a Vec");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn filters_become_the_request() {
        let args = parse(&[
            "--prefix",
            "artist:",
            "--tag",
            "a",
            "--tag",
            "b",
            "--policy",
            "generic",
            "--provider",
            "musicbrainz",
            "--kind",
            "put,delete",
            "--kind",
            "negative",
            "--from",
            "42",
            "--values",
        ]);
        let request = request(&args);
        assert_eq!(request.key_prefix, "artist:");
        assert_eq!(request.tags, ["a", "b"]);
        assert_eq!(request.policies, ["generic"]);
        assert_eq!(request.providers, ["musicbrainz"]);
        assert_eq!(
            request.kinds,
            [
                ChangeKind::Put as i32,
                ChangeKind::Delete as i32,
                ChangeKind::Negative as i32
            ]
        );
        assert_eq!(request.after_revision, Some(42));
        assert!(request.include_values);

        let request = super::request(&parse(&[]));
        assert_eq!(request, proto::WatchRequest::default());
    }

    #[test]
    fn count_must_be_positive_and_kinds_known() {
        let zero = <Cli as clap::Parser>::try_parse_from(["roadie", "watch", "--count", "0"]);
        assert!(zero.is_err());
        let unknown = <Cli as clap::Parser>::try_parse_from(["roadie", "watch", "--kind", "poke"]);
        assert!(unknown.is_err());
        assert_eq!(parse(&["--count", "3"]).count, Some(3));
    }

    #[test]
    fn change_is_one_line_of_text_or_json() {
        let mut change = proto::Change {
            revision: 42,
            kind: ChangeKind::Put as i32,
            key: "artist:x".to_owned(),
            policy: "generic".to_owned(),
            tags: vec!["a".to_owned(), "b".to_owned()],
            provider: "musicbrainz".to_owned(),
            at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            entry: None,
        };
        assert_eq!(
            shown(&change, false),
            "42 put artist:x policy=generic tags=a,b provider=musicbrainz\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&shown(&change, true)).expect("one JSON object");
        assert_eq!(json["event"], "change");
        assert_eq!(json["revision"], 42);
        assert_eq!(json["kind"], "put");
        assert_eq!(json["key"], "artist:x");
        assert_eq!(json["tags"][1], "b");
        assert_eq!(json["provider"], "musicbrainz");
        assert_eq!(json["at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["entry"], serde_json::Value::Null);

        change.key = "artist:daft punk\n".to_owned();
        change.tags.clear();
        change.provider.clear();
        change.kind = ChangeKind::Delete as i32;
        assert_eq!(
            shown(&change, false),
            "42 delete \"artist:daft punk\\n\" policy=generic\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&shown(&change, true)).expect("one JSON object");
        assert_eq!(json["provider"], serde_json::Value::Null);
    }

    #[test]
    fn values_are_shown_quoted_or_summarised() {
        let mut change = proto::Change {
            revision: 7,
            kind: ChangeKind::Fetch as i32,
            key: "k".to_owned(),
            policy: "p".to_owned(),
            entry: Some(proto::Entry {
                key: "k".to_owned(),
                value: b"{\"a\": 1}".to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            shown(&change, false),
            "7 fetch k policy=p value=\"{\\\"a\\\": 1}\"\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&shown(&change, true)).expect("one JSON object");
        assert_eq!(json["entry"]["value"], "{\"a\": 1}");
        if let Some(entry) = &mut change.entry {
            entry.value = vec![0xff, 0x00].into();
        }
        assert_eq!(
            shown(&change, false),
            "7 fetch k policy=p value=<2 bytes, binary>\n"
        );
    }

    #[test]
    fn unknown_kinds_are_named_unknown() {
        assert_eq!(kind_label(99), "unknown");
        assert_eq!(kind_label(ChangeKind::Evict as i32), "evict");
    }
}
