//! `roadie ls [PREFIX]`: the entries matching a selector, in key order,
//! every page of them (or `--limit`).

use std::io::Write;

use clap::{Args, ValueEnum};

use super::{
    CliError, Exit,
    output::{EntryJson, ValueSink, entry_status_label, write_json},
};
use crate::{Client, proto};

/// Arguments of `roadie ls`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Only entries carrying this tag.
    #[arg(long, value_name = "T")]
    pub tag: Option<String>,
    /// Only entries under this policy.
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,
    /// Only entries fetched by this provider.
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Only entries in this state now.
    #[arg(long)]
    pub status: Option<StatusArg>,
    /// Stop after this many entries.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Entries asked for per call (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub page_size: u32,
    /// Include the values (with --json).
    #[arg(long)]
    pub values: bool,
}

/// An entry state for `--status`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    /// Within its TTL.
    Fresh,
    /// Past its TTL.
    Stale,
    /// A cached "not found" or "failed".
    Negative,
}

/// Runs `roadie ls`: exit 0, whether or not anything matched. With `--json`,
/// one object: `entries`, and the `revision` to watch from (`roadie watch
/// --from REV`) to follow on without a gap.
pub async fn run(
    client: &Client,
    args: ListArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let status = match args.status {
        None => proto::EntryStatus::Unspecified,
        Some(StatusArg::Fresh) => proto::EntryStatus::Fresh,
        Some(StatusArg::Stale) => proto::EntryStatus::Stale,
        Some(StatusArg::Negative) => proto::EntryStatus::Negative,
    };
    let with_values = args.values && json;
    let mut request = proto::ListEntriesRequest {
        key_prefix: args.prefix.unwrap_or_default(),
        tag: args.tag.unwrap_or_default(),
        policy: args.policy.unwrap_or_default(),
        provider: args.provider.unwrap_or_default(),
        status: status as i32,
        page_size: args.page_size,
        page_token: String::new(),
        without_values: !with_values,
    };
    let limit = args.limit.unwrap_or(u64::MAX);
    let sink = if with_values {
        ValueSink::Inline
    } else {
        ValueSink::Omitted
    };
    let mut listed = 0_u64;
    let mut entries = Vec::new();
    let mut revision;
    if !json {
        writeln!(
            out,
            "{:<8}  {:<9}  {:<16}  {:<9}  KEY",
            "STATUS", "REVISION", "POLICY", "TAGS"
        )?;
    }
    loop {
        let page = client.list_entries(request.clone()).await?;
        revision = page.revision;
        for entry in &page.entries {
            if listed == limit {
                break;
            }
            listed += 1;
            if json {
                entries.push(EntryJson::new(entry, sink));
            } else {
                writeln!(
                    out,
                    "{:<8}  {:<9}  {:<16}  {:<9}  {}",
                    entry_status_label(entry.status()),
                    entry.revision,
                    entry.policy,
                    entry.tags.len(),
                    entry.key
                )?;
            }
        }
        if listed == limit || page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    if json {
        write_json(
            out,
            &serde_json::json!({ "entries": entries, "revision": revision }),
        )?;
    } else {
        writeln!(
            out,
            "{listed} {} at revision {revision} (roadie watch --from {revision} follows on)",
            super::entries_word(listed)
        )?;
    }
    Ok(Exit::Success)
}
