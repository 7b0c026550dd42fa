//! How answers are shown: plain text for people, one JSON object per result
//! for scripts. Everything here writes to a `Write` so it is tested without a
//! terminal.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;

use crate::proto::{
    self, EntryStatus, LookupStatus, PolicyStats, ProviderStats, PutOutcome, StatsResponse,
};

/// Where the value of an entry went, when not printed with it.
#[derive(Clone, Copy, Debug)]
pub enum ValueSink<'a> {
    /// Printed (text) or summarised (binary) with the entry.
    Inline,
    /// Written to this file.
    File(&'a str),
    /// Not asked for (a listing without values).
    Omitted,
}

/// Writes one JSON object and a newline.
pub fn write_json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// Lower-case name of a lookup status, as shown and as in JSON.
pub fn lookup_label(status: LookupStatus) -> &'static str {
    match status {
        LookupStatus::Unspecified => "unspecified",
        LookupStatus::Miss => "miss",
        LookupStatus::Hit => "hit",
        LookupStatus::Stale => "stale",
        LookupStatus::Negative => "negative",
    }
}

/// The lowercase name of an entry status.
pub fn entry_status_label(status: EntryStatus) -> &'static str {
    match status {
        EntryStatus::Unspecified => "unspecified",
        EntryStatus::Fresh => "fresh",
        EntryStatus::Stale => "stale",
        EntryStatus::Negative => "negative",
    }
}

/// Lower-case name of a put outcome.
pub fn put_outcome_label(outcome: PutOutcome) -> &'static str {
    match outcome {
        PutOutcome::Unspecified => "unspecified",
        PutOutcome::Written => "written",
        PutOutcome::KeptHigherConfidence => "kept_higher_confidence",
        PutOutcome::RevisionMismatch => "revision_mismatch",
    }
}

/// RFC 3339, in UTC. prost's own formatting covers every representable
/// timestamp, unlike humantime's, which fails outside years 1970 to 9999.
fn timestamp_text(timestamp: &prost_types::Timestamp) -> String {
    timestamp.to_string()
}

/// As [`timestamp_text`], to the second, for people.
fn timestamp_seconds_text(timestamp: &prost_types::Timestamp) -> String {
    prost_types::Timestamp {
        seconds: timestamp.seconds,
        nanos: 0,
    }
    .to_string()
}

/// "1s 250ms" for people; sub-millisecond noise is dropped.
fn duration_text(duration: &prost_types::Duration) -> String {
    match Duration::try_from(*duration) {
        Ok(duration) => {
            let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            if millis == 0 {
                "0s".to_owned()
            } else {
                humantime::format_duration(Duration::from_millis(millis)).to_string()
            }
        }
        Err(_) => duration.to_string(),
    }
}

/// "512 B", "1.5 KiB", "8.0 MiB".
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Display only; the JSON output carries the exact count.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An entry as JSON: the proto's fields, with the value as text when it is
/// UTF-8 and as base64 under `value_base64` otherwise.
#[derive(Debug, Serialize)]
pub struct EntryJson {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_file: Option<String>,
    /// Absent when the value was not asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    value_bytes: Option<usize>,
    media_type: String,
    policy: String,
    tags: Vec<String>,
    confidence: u32,
    fingerprint: String,
    metadata: BTreeMap<String, String>,
    status: &'static str,
    created_at: Option<String>,
    updated_at: Option<String>,
    /// `null` means the entry never expires.
    expires_at: Option<String>,
    revision: u64,
    provenance: Option<ProvenanceJson>,
}

#[derive(Debug, Serialize)]
struct ProvenanceJson {
    provider: String,
    upstream_status: u32,
    etag: String,
    last_modified: String,
}

impl EntryJson {
    /// The JSON view of `entry`; the value is left out when it went to a file.
    pub fn new(entry: &proto::Entry, sink: ValueSink<'_>) -> EntryJson {
        let (value, value_base64, value_file) = match sink {
            ValueSink::File(path) => (None, None, Some(path.to_owned())),
            ValueSink::Omitted => (None, None, None),
            ValueSink::Inline => match std::str::from_utf8(&entry.value) {
                Ok(text) => (Some(text.to_owned()), None, None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&entry.value)),
                    None,
                ),
            },
        };
        EntryJson {
            key: entry.key.clone(),
            value,
            value_base64,
            value_file,
            value_bytes: (!matches!(sink, ValueSink::Omitted)).then_some(entry.value.len()),
            media_type: entry.media_type.clone(),
            policy: entry.policy.clone(),
            tags: entry.tags.clone(),
            confidence: entry.confidence,
            fingerprint: entry.fingerprint.clone(),
            metadata: entry
                .metadata
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            status: entry_status_label(entry.status()),
            created_at: entry.created_at.as_ref().map(timestamp_text),
            updated_at: entry.updated_at.as_ref().map(timestamp_text),
            expires_at: entry.expires_at.as_ref().map(timestamp_text),
            revision: entry.revision,
            provenance: entry.provenance.as_ref().map(|p| ProvenanceJson {
                provider: p.provider.clone(),
                upstream_status: p.upstream_status,
                etag: p.etag.clone(),
                last_modified: p.last_modified.clone(),
            }),
        }
    }
}

/// The answer of `get` as JSON.
#[derive(Debug, Serialize)]
pub struct LookupJson {
    /// The lookup status.
    pub status: &'static str,
    /// The entry, absent on a miss.
    pub entry: Option<EntryJson>,
}

/// The answer of `random` as JSON.
#[derive(Debug, Serialize)]
pub struct RandomJson {
    /// The entry, `null` when none carries the tag.
    pub entry: Option<EntryJson>,
}

/// Writes an entry for people: metadata lines, a blank line, then the value
/// (when it is text and was not sent elsewhere).
pub fn write_entry(
    out: &mut dyn Write,
    entry: &proto::Entry,
    sink: ValueSink<'_>,
) -> io::Result<()> {
    writeln!(out, "key: {}", entry.key)?;
    writeln!(out, "policy: {}", entry.policy)?;
    writeln!(out, "media type: {}", entry.media_type)?;
    writeln!(out, "confidence: {}", entry.confidence)?;
    writeln!(out, "tags: {}", entry.tags.join(", "))?;
    writeln!(out, "revision: {}", entry.revision)?;
    match &entry.expires_at {
        Some(expires_at) => writeln!(out, "expires: {}", timestamp_seconds_text(expires_at))?,
        None => writeln!(out, "expires: never")?,
    }
    if !entry.fingerprint.is_empty() {
        writeln!(out, "fingerprint: {}", entry.fingerprint)?;
    }
    if let Some(provenance) = &entry.provenance
        && !provenance.provider.is_empty()
    {
        writeln!(
            out,
            "provider: {} (upstream status {})",
            provenance.provider, provenance.upstream_status
        )?;
    }
    if !entry.metadata.is_empty() {
        let metadata: BTreeMap<_, _> = entry.metadata.iter().collect();
        let pairs: Vec<String> = metadata
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        writeln!(out, "metadata: {}", pairs.join(", "))?;
    }
    writeln!(out)?;
    let len = entry.value.len();
    match sink {
        ValueSink::File(path) => writeln!(out, "<{len} bytes written to {path}>"),
        ValueSink::Omitted => Ok(()),
        ValueSink::Inline if len == 0 => writeln!(out, "<empty>"),
        ValueSink::Inline => match std::str::from_utf8(&entry.value) {
            Ok(text) => {
                out.write_all(text.as_bytes())?;
                if text.ends_with('\n') {
                    Ok(())
                } else {
                    writeln!(out)
                }
            }
            Err(_) => writeln!(out, "<{len} bytes, binary>"),
        },
    }
}

/// Writes the answer of `stats` for people: a header line, then a table per
/// policy and, when there are any, a table per provider.
pub fn write_stats(out: &mut dyn Write, stats: &StatsResponse) -> io::Result<()> {
    let started = stats
        .started_at
        .as_ref()
        .map_or_else(|| "-".to_owned(), timestamp_seconds_text);
    writeln!(
        out,
        "backend: {}  revision: {}  started: {}",
        stats.backend, stats.revision, started
    )?;
    writeln!(
        out,
        "change stream: tail at revision {}, {} watchers",
        stats.tail_revision, stats.watchers
    )?;
    match &stats.hot_tier {
        Some(hot) => writeln!(
            out,
            "hot tier: {} keys, {} of {}; {} hits, {} misses, {} bypassed",
            hot.entries,
            bytes_text(hot.bytes),
            bytes_text(hot.max_bytes),
            hot.hits,
            hot.misses,
            hot.bypassed
        )?,
        None => writeln!(out, "hot tier: off")?,
    }
    if let Some(wal) = &stats.wal {
        writeln!(
            out,
            "write-ahead log: {} (cut back to {} at each checkpoint)",
            bytes_text(wal.bytes),
            bytes_text(wal.limit_bytes)
        )?;
    }
    writeln!(out)?;
    let rows = stats.policies.iter().map(policy_row).collect();
    write_table(
        out,
        &[
            "POLICY", "ENTRIES", "BYTES", "WRITTEN", "BUDGET", "HITS", "MISSES", "STALE",
            "NEGATIVE", "EVICTED",
        ],
        rows,
    )?;
    if !stats.providers.is_empty() {
        writeln!(out)?;
        let rows = stats.providers.iter().map(provider_row).collect();
        write_table(
            out,
            &[
                "PROVIDER",
                "RATE/S",
                "BACKLOG",
                "NEXT REQUEST",
                "TOTAL WAIT",
            ],
            rows,
        )?;
    }
    Ok(())
}

fn policy_row(policy: &PolicyStats) -> Vec<String> {
    vec![
        policy.policy.clone(),
        policy.entries.to_string(),
        bytes_text(policy.bytes),
        bytes_text(policy.raw_bytes),
        bytes_text(policy.budget_bytes),
        policy.hits.to_string(),
        policy.misses.to_string(),
        policy.stale.to_string(),
        policy.negative.to_string(),
        policy.evicted.to_string(),
    ]
}

fn provider_row(provider: &ProviderStats) -> Vec<String> {
    vec![
        provider.provider.clone(),
        format!("{:.2}", provider.rate_per_second),
        provider.backlog.to_string(),
        provider
            .next_request_at
            .as_ref()
            .map_or_else(|| "-".to_owned(), timestamp_seconds_text),
        provider
            .total_wait
            .as_ref()
            .map_or_else(|| "0s".to_owned(), duration_text),
    ]
}

/// A table with the first column left-aligned and the others right-aligned.
fn write_table(out: &mut dyn Write, headers: &[&str], rows: Vec<Vec<String>>) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(&rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if column == 0 {
                line.push_str(&format!("{cell:<width$}"));
            } else {
                line.push_str(&format!("  {cell:>width$}"));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// The answer of `stats` as JSON.
#[derive(Debug, Serialize)]
pub struct StatsJson {
    backend: String,
    revision: u64,
    started_at: Option<String>,
    tail_revision: u64,
    watchers: u64,
    hot_tier: Option<HotTierJson>,
    wal: Option<WalJson>,
    policies: Vec<PolicyJson>,
    providers: Vec<ProviderJson>,
}

#[derive(Debug, Serialize)]
struct HotTierJson {
    entries: u64,
    bytes: u64,
    max_bytes: u64,
    hits: u64,
    misses: u64,
    bypassed: u64,
}

#[derive(Debug, Serialize)]
struct WalJson {
    bytes: u64,
    limit_bytes: u64,
}

#[derive(Debug, Serialize)]
struct PolicyJson {
    policy: String,
    entries: u64,
    /// As stored (compressed values at their compressed size).
    bytes: u64,
    /// As written, before compression.
    raw_bytes: u64,
    budget_bytes: u64,
    hits: u64,
    misses: u64,
    stale: u64,
    negative: u64,
    evicted: u64,
}

#[derive(Debug, Serialize)]
struct ProviderJson {
    provider: String,
    rate_per_second: f64,
    backlog: u64,
    next_request_at: Option<String>,
    total_wait_seconds: f64,
}

impl StatsJson {
    /// The JSON view of a Stats answer.
    pub fn new(stats: &StatsResponse) -> StatsJson {
        StatsJson {
            backend: stats.backend.clone(),
            revision: stats.revision,
            started_at: stats.started_at.as_ref().map(timestamp_text),
            tail_revision: stats.tail_revision,
            watchers: stats.watchers,
            wal: stats.wal.as_ref().map(|w| WalJson {
                bytes: w.bytes,
                limit_bytes: w.limit_bytes,
            }),
            hot_tier: stats.hot_tier.as_ref().map(|h| HotTierJson {
                entries: h.entries,
                bytes: h.bytes,
                max_bytes: h.max_bytes,
                hits: h.hits,
                misses: h.misses,
                bypassed: h.bypassed,
            }),
            policies: stats
                .policies
                .iter()
                .map(|p| PolicyJson {
                    policy: p.policy.clone(),
                    entries: p.entries,
                    bytes: p.bytes,
                    raw_bytes: p.raw_bytes,
                    budget_bytes: p.budget_bytes,
                    hits: p.hits,
                    misses: p.misses,
                    stale: p.stale,
                    negative: p.negative,
                    evicted: p.evicted,
                })
                .collect(),
            providers: stats
                .providers
                .iter()
                .map(|p| ProviderJson {
                    provider: p.provider.clone(),
                    rate_per_second: p.rate_per_second,
                    backlog: p.backlog,
                    next_request_at: p.next_request_at.as_ref().map(timestamp_text),
                    total_wait_seconds: p.total_wait.as_ref().map_or(0.0, duration_seconds),
                })
                .collect(),
        }
    }
}

fn duration_seconds(duration: &prost_types::Duration) -> f64 {
    // Display precision is plenty: f64 holds whole seconds exactly up to 2^53.
    #[allow(clippy::cast_precision_loss)]
    let seconds = duration.seconds as f64;
    seconds + f64::from(duration.nanos) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &[u8]) -> proto::Entry {
        proto::Entry {
            key: "artist:daft punk".to_owned(),
            value: value.to_vec().into(),
            media_type: "application/json".to_owned(),
            policy: "api_metadata".to_owned(),
            tags: vec!["artist:daft punk".to_owned(), "kind:bio".to_owned()],
            confidence: 80,
            metadata: [("source".to_owned(), "test".to_owned())]
                .into_iter()
                .collect(),
            status: EntryStatus::Fresh as i32,
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            revision: 12,
            ..Default::default()
        }
    }

    fn text(render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        render(&mut out).expect("writes to a Vec");
        String::from_utf8(out).expect("utf-8 output")
    }

    #[test]
    fn text_entry_shows_metadata_then_value() {
        let shown = text(|out| write_entry(out, &entry(b"{\"a\":1}"), ValueSink::Inline));
        assert_eq!(
            shown,
            "key: artist:daft punk\n\
             policy: api_metadata\n\
             media type: application/json\n\
             confidence: 80\n\
             tags: artist:daft punk, kind:bio\n\
             revision: 12\n\
             expires: 2023-11-14T22:13:20Z\n\
             metadata: source=test\n\
             \n\
             {\"a\":1}\n"
        );
    }

    #[test]
    fn binary_entry_is_summarised_or_sent_to_file() {
        let shown = text(|out| write_entry(out, &entry(&[0xff, 0x00, 0xfe]), ValueSink::Inline));
        assert!(shown.ends_with("\n<3 bytes, binary>\n"), "{shown}");
        let shown = text(|out| write_entry(out, &entry(&[0xff]), ValueSink::File("img.jpg")));
        assert!(
            shown.ends_with("\n<1 bytes written to img.jpg>\n"),
            "{shown}"
        );
        let mut never = entry(b"");
        never.expires_at = None;
        let shown = text(|out| write_entry(out, &never, ValueSink::Inline));
        assert!(shown.contains("expires: never\n"), "{shown}");
        assert!(shown.ends_with("\n<empty>\n"), "{shown}");
    }

    #[test]
    fn json_entry_carries_text_or_base64() {
        let json = serde_json::to_value(EntryJson::new(&entry(b"hello"), ValueSink::Inline))
            .expect("serialises");
        assert_eq!(json["value"], "hello");
        assert!(json.get("value_base64").is_none());
        assert_eq!(json["value_bytes"], 5);
        assert_eq!(json["status"], "fresh");
        assert_eq!(json["expires_at"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(json["metadata"]["source"], "test");
        assert_eq!(json["created_at"], serde_json::Value::Null);

        let json = serde_json::to_value(EntryJson::new(&entry(&[0xff, 0xfe]), ValueSink::Inline))
            .expect("serialises");
        assert!(json.get("value").is_none());
        assert_eq!(json["value_base64"], "//4=");

        let json = serde_json::to_value(EntryJson::new(&entry(b"x"), ValueSink::File("out")))
            .expect("serialises");
        assert!(json.get("value").is_none());
        assert!(json.get("value_base64").is_none());
        assert_eq!(json["value_file"], "out");
    }

    #[test]
    fn stats_table_aligns_columns() {
        let stats = StatsResponse {
            policies: vec![
                PolicyStats {
                    policy: "generic".to_owned(),
                    entries: 3,
                    bytes: 1536,
                    raw_bytes: 6144,
                    budget_bytes: 64 * 1024 * 1024,
                    hits: 10,
                    misses: 2,
                    ..Default::default()
                },
                PolicyStats {
                    policy: "image".to_owned(),
                    entries: 12345,
                    ..Default::default()
                },
            ],
            providers: vec![ProviderStats {
                provider: "musicbrainz".to_owned(),
                rate_per_second: 1.0,
                backlog: 4,
                next_request_at: None,
                total_wait: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 250_000_001,
                }),
            }],
            revision: 42,
            started_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            backend: "sqlite".to_owned(),
            tail_revision: 41,
            watchers: 2,
            hot_tier: Some(proto::HotTierStats {
                entries: 7,
                bytes: 2048,
                max_bytes: 1 << 20,
                hits: 5,
                misses: 7,
                bypassed: 0,
            }),
            wal: Some(proto::WalStats {
                bytes: 3 << 20,
                limit_bytes: 64 << 20,
            }),
        };
        let shown = text(|out| write_stats(out, &stats));
        assert_eq!(
            shown,
            "backend: sqlite  revision: 42  started: 1970-01-01T00:00:00Z\n\
             change stream: tail at revision 41, 2 watchers\n\
             hot tier: 7 keys, 2.0 KiB of 1.0 MiB; 5 hits, 7 misses, 0 bypassed\n\
             write-ahead log: 3.0 MiB (cut back to 64.0 MiB at each checkpoint)\n\
             \n\
             POLICY   ENTRIES    BYTES  WRITTEN    BUDGET  HITS  MISSES  STALE  NEGATIVE  EVICTED\n\
             generic        3  1.5 KiB  6.0 KiB  64.0 MiB    10       2      0         0        0\n\
             image      12345      0 B      0 B       0 B     0       0      0         0        0\n\
             \n\
             PROVIDER     RATE/S  BACKLOG  NEXT REQUEST  TOTAL WAIT\n\
             musicbrainz    1.00        4             -    1s 250ms\n"
        );
        let json = serde_json::to_value(StatsJson::new(&stats)).expect("serialises");
        assert_eq!(json["policies"][0]["bytes"], 1536);
        assert_eq!(json["policies"][0]["raw_bytes"], 6144);
        assert_eq!(json["providers"][0]["backlog"], 4);
        assert_eq!(json["started_at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["hot_tier"]["hits"], 5);
        assert_eq!(json["watchers"], 2);
        assert_eq!(json["wal"]["limit_bytes"], 64 << 20);
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes_text(0), "0 B");
        assert_eq!(bytes_text(1023), "1023 B");
        assert_eq!(bytes_text(1024), "1.0 KiB");
        assert_eq!(bytes_text(8 * 1024 * 1024), "8.0 MiB");
        assert_eq!(bytes_text(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn extreme_timestamps_do_not_panic() {
        let far = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(!timestamp_text(&far).is_empty());
        let before = prost_types::Timestamp {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(timestamp_seconds_text(&before), "1969-12-31T23:59:59Z");
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(duration_text(&negative), "-1s");
    }
}
