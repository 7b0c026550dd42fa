//! `roadie fetch PROVIDER PATH`: read through the cache, fetching on a miss.

use std::{io::Write, time::Duration};

use clap::Args;

use super::{
    CliError, Exit,
    output::{self, EntryJson, ValueSink, write_json},
};
use crate::{Client, proto};

/// Arguments of `roadie fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// A configured provider, for example "musicbrainz".
    pub provider: String,
    /// A path under the provider's base URL, or a full URL under it.
    pub path: String,
    /// Queue the fetch and return the job at once instead of waiting.
    #[arg(long)]
    pub background: bool,
    /// Background priority, 2 or larger.
    #[arg(long, value_name = "N")]
    pub priority: Option<u32>,
    /// Policy to store the result under (default api_metadata).
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,
    /// Tag to store with the result (repeatable).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Accept an entry this long past its expiry (refreshed in the background).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_stale: Option<Duration>,
}

/// Runs `roadie fetch`: exit 0 with an entry (fresh or stale), 1 when the
/// answer is a job still under way, 3 for a negative entry.
pub async fn run(
    client: &Client,
    args: FetchArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let mode = if args.background {
        proto::FetchMode::Background
    } else {
        proto::FetchMode::Wait
    };
    let response = client
        .fetch(proto::FetchRequest {
            provider: args.provider,
            path: args.path,
            mode: mode as i32,
            priority: args.priority.unwrap_or_default(),
            policy: args.policy.unwrap_or_default(),
            tags: args.tags,
            max_stale: args
                .max_stale
                .map(|d| super::proto_duration("--max-stale", d))
                .transpose()?,
        })
        .await?;
    let status = response.status();
    let exit = match status {
        proto::LookupStatus::Hit | proto::LookupStatus::Stale => Exit::Success,
        proto::LookupStatus::Negative => Exit::Negative,
        proto::LookupStatus::Miss | proto::LookupStatus::Unspecified => Exit::Miss,
    };
    if json {
        write_json(
            out,
            &serde_json::json!({
                "status": output::lookup_label(status),
                "entry": response.entry.as_ref().map(|e| EntryJson::new(e, ValueSink::Inline)),
                "job": response.job.as_ref().map(|j| serde_json::json!({ "id": j.id, "state": j.state, "url": j.url, "priority": j.priority })),
                "job_shared": response.job_shared,
            }),
        )?;
    } else {
        writeln!(out, "status: {}", output::lookup_label(status))?;
        if let Some(job) = &response.job {
            let shared = if response.job_shared {
                ", shared with other callers"
            } else {
                ""
            };
            writeln!(
                out,
                "job: {} ({}{shared}); see `roadie jobs show {}`",
                job.id, job.url, job.id
            )?;
        }
        if let Some(entry) = &response.entry {
            output::write_entry(out, entry, ValueSink::Inline)?;
        }
    }
    Ok(exit)
}
