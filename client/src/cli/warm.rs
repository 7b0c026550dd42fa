//! `roadie warm FILE`: bulk warming. Sends the file's items in BatchFetch
//! calls, then follows their jobs to the end with a progress bar (on a
//! terminal): done, negative, failed, the rate, and an estimate from the
//! providers' rate limits and backlogs.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use futures::future::join_all;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::{CliError, Exit, output::write_json};
use crate::{Client, ClientError, proto};

/// Jobs asked about at once, per provider, while following.
const FOLLOW_CHUNK: usize = 32;
/// How often the estimate asks the server for backlogs and rate limits.
const ESTIMATE_EVERY: Duration = Duration::from_secs(5);

/// Arguments of `roadie warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// One item per line: `PROVIDER PATH`, or a JSON object with
    /// "provider", "path" and optionally "tags", "policy" and "priority".
    /// Blank lines and lines starting with # are skipped; "-" reads stdin.
    pub file: PathBuf,
    /// Items per BatchFetch call (1 to the server's limits.max_batch_keys).
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Background priority of items that name none (2 or larger).
    #[arg(long, value_name = "N")]
    pub priority: Option<u32>,
    /// Policy of items that name none (default api_metadata).
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,
    /// Tag added to every item (repeatable).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Only queue the items; do not follow the jobs.
    #[arg(long)]
    pub no_wait: bool,
    /// How often to look at the jobs while following ("500ms", "2s").
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
}

/// A line of JSON in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonItem {
    provider: String,
    path: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    priority: u32,
}

/// One item and the line it came from.
#[derive(Debug)]
struct Item {
    line: usize,
    fetch: proto::BatchFetchItem,
}

/// The file's items, or the first line that is neither form.
fn parse(text: &str, args: &WarmArgs) -> Result<Vec<Item>, CliError> {
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let bad = |reason: String| CliError::Input { line, reason };
        let mut fetch = if trimmed.starts_with('{') {
            let json: JsonItem = serde_json::from_str(trimmed).map_err(|e| bad(e.to_string()))?;
            proto::BatchFetchItem {
                provider: json.provider,
                path: json.path,
                policy: json.policy,
                tags: json.tags,
                priority: json.priority,
            }
        } else {
            let (provider, path) = trimmed
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `PROVIDER PATH` or a JSON object".to_owned()))?;
            proto::BatchFetchItem {
                provider: provider.to_owned(),
                path: path.trim().to_owned(),
                ..Default::default()
            }
        };
        if fetch.policy.is_empty() {
            fetch.policy = args.policy.clone().unwrap_or_default();
        }
        fetch.tags.extend(args.tags.iter().cloned());
        items.push(Item { line, fetch });
    }
    Ok(items)
}

/// What became of the items.
#[derive(Debug, Default, Serialize)]
struct Tally {
    items: u64,
    /// Answered from the cache (fresh or negative): nothing to fetch.
    cached: u64,
    /// Given a job, new or shared.
    queued: u64,
    /// Of `queued`, sharing a job queued before.
    shared: u64,
    refused: u64,
    done: u64,
    negative: u64,
    failed: u64,
    /// Queued and not finished when `warm` stopped looking.
    pending: u64,
    seconds: f64,
    interrupted: bool,
    refusals: Vec<Refusal>,
    failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
struct Refusal {
    line: usize,
    code: String,
    field: String,
    message: String,
}

#[derive(Debug, Serialize)]
struct Failure {
    line: usize,
    job: u64,
    state: &'static str,
    error: String,
}

/// A queued item being followed.
#[derive(Debug, Clone)]
struct Pending {
    line: usize,
    job: u64,
    url: String,
}

/// Runs `roadie warm`: exit 0 when every item ended cached, done or
/// negative (or, with --no-wait, was queued); 5 when an item was refused,
/// a job failed or was cancelled, or the follow was interrupted (Ctrl-C).
pub async fn run(
    client: &Client,
    args: WarmArgs,
    stdin: &mut dyn Read,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, CliError> {
    let started = Instant::now();
    let text = super::read_text(&args.file, stdin)?;
    let items = parse(&text, &args)?;
    let mut tally = Tally {
        items: items.len() as u64,
        ..Tally::default()
    };
    // By provider, oldest job first: each provider's jobs are claimed in
    // that order (within a priority), so the first unfinished one bounds
    // what needs asking.
    let mut pending: BTreeMap<String, VecDeque<Pending>> = BTreeMap::new();
    for batch in items.chunks(args.batch as usize) {
        let response = client
            .batch_fetch(proto::BatchFetchRequest {
                items: batch.iter().map(|item| item.fetch.clone()).collect(),
                priority: args.priority.unwrap_or_default(),
            })
            .await?;
        if response.results.len() != batch.len() {
            return Err(CliError::Protocol(format!(
                "{} results for {} items",
                response.results.len(),
                batch.len()
            )));
        }
        for (item, result) in batch.iter().zip(response.results) {
            if let Some(error) = result.error {
                let refusal = Refusal {
                    line: item.line,
                    code: format!("{:?}", tonic::Code::from(error.code)),
                    field: error.field,
                    message: error.message,
                };
                writeln!(err, "line {}: refused: {}", refusal.line, refusal.message)?;
                tally.refused += 1;
                tally.refusals.push(refusal);
            } else if let Some(job) = result.job {
                tally.queued += 1;
                tally.shared += u64::from(result.job_shared);
                pending
                    .entry(job.provider.clone())
                    .or_default()
                    .push_back(Pending {
                        line: item.line,
                        job: job.id,
                        url: job.url,
                    });
            } else {
                tally.cached += 1;
            }
        }
    }
    for queue in pending.values_mut() {
        queue.make_contiguous().sort_by_key(|p| p.job);
    }
    if !args.no_wait {
        follow(client, &args, &mut pending, &mut tally).await?;
    }
    tally.pending = pending.values().map(|queue| queue.len() as u64).sum();
    tally.seconds = started.elapsed().as_secs_f64();
    if tally.interrupted && tally.pending > 0 {
        writeln!(
            err,
            "interrupted: {} queued jobs stay queued. Run the same `roadie warm` again to \
             follow them (it shares their jobs and queues nothing twice), or see them with \
             `roadie jobs list --state available`.",
            tally.pending
        )?;
    }
    if json {
        write_json(out, &tally)?;
    } else {
        writeln!(
            out,
            "{} items: {} cached, {} queued ({} shared), {} refused; {} done, {} negative, \
             {} failed, {} pending ({:.1} s)",
            tally.items,
            tally.cached,
            tally.queued,
            tally.shared,
            tally.refused,
            tally.done,
            tally.negative,
            tally.failed,
            tally.pending,
            tally.seconds
        )?;
        for failure in &tally.failures {
            writeln!(
                out,
                "line {}: job {} {}: {}",
                failure.line, failure.job, failure.state, failure.error
            )?;
        }
    }
    let complete = tally.refused == 0
        && tally.failed == 0
        && !tally.interrupted
        && (args.no_wait || tally.pending == 0);
    Ok(if complete {
        Exit::Success
    } else {
        Exit::Incomplete
    })
}

/// Follows the pending jobs until none is left or Ctrl-C.
async fn follow(
    client: &Client,
    args: &WarmArgs,
    pending: &mut BTreeMap<String, VecDeque<Pending>>,
    tally: &mut Tally,
) -> Result<(), CliError> {
    let bar = ProgressBar::with_draw_target(Some(tally.queued), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} {bar:30} {pos}/{len} jobs, {per_sec} · {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    let mut estimate = String::from("estimating");
    let mut estimated_at: Option<Instant> = None;
    loop {
        for (provider, queue) in pending.iter_mut() {
            settle_finished(client, provider, queue, tally).await?;
        }
        pending.retain(|_, queue| !queue.is_empty());
        bar.set_position(tally.done + tally.negative + tally.failed);
        if pending.is_empty() {
            break;
        }
        if estimated_at.is_none_or(|at| at.elapsed() >= ESTIMATE_EVERY) {
            estimate = estimate_left(client, pending).await;
            estimated_at = Some(Instant::now());
        }
        bar.set_message(format!(
            "done {} · negative {} · failed {} · queued {} · {estimate}",
            tally.done,
            tally.negative,
            tally.failed,
            pending.values().map(VecDeque::len).sum::<usize>()
        ));
        tokio::select! {
            () = &mut interrupted => {
                tally.interrupted = true;
                break;
            }
            () = tokio::time::sleep(args.poll) => {}
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Asks after the oldest jobs of one provider, a chunk at a time, until a
/// chunk holds an unfinished one; removes and counts the finished.
async fn settle_finished(
    client: &Client,
    provider: &str,
    queue: &mut VecDeque<Pending>,
    tally: &mut Tally,
) -> Result<(), CliError> {
    loop {
        // Taken off the front; the unfinished go back there, in order.
        let chunk: Vec<Pending> = queue.drain(..FOLLOW_CHUNK.min(queue.len())).collect();
        if chunk.is_empty() {
            return Ok(());
        }
        let answers = join_all(
            chunk
                .iter()
                .map(|p| client.get_job(proto::GetJobRequest { id: p.job })),
        )
        .await;
        let mut finished = HashSet::new();
        let mut completed = Vec::new();
        let mut all_finished = true;
        for (p, answer) in chunk.iter().zip(answers) {
            let job = match answer {
                Ok(answer) => answer.job,
                Err(ClientError::NotFound(_)) => None,
                Err(ClientError::PermissionDenied(message)) => {
                    return Err(CliError::Follow {
                        provider: provider.to_owned(),
                        reason: message,
                    });
                }
                Err(error) => return Err(error.into()),
            };
            let state = job
                .as_ref()
                .map_or(proto::JobState::Unspecified, proto::Job::state);
            match state {
                proto::JobState::Available | proto::JobState::Running => {
                    all_finished = false;
                    continue;
                }
                proto::JobState::Completed => completed.push(p.url.clone()),
                proto::JobState::Failed | proto::JobState::Cancelled => {
                    tally.failed += 1;
                    tally.failures.push(Failure {
                        line: p.line,
                        job: p.job,
                        state: if state == proto::JobState::Failed {
                            "failed"
                        } else {
                            "cancelled"
                        },
                        error: job.map(|j| j.last_error).unwrap_or_default(),
                    });
                }
                proto::JobState::Unspecified => {
                    tally.failed += 1;
                    tally.failures.push(Failure {
                        line: p.line,
                        job: p.job,
                        state: "gone",
                        error: "the job no longer exists (purged after its retention)".to_owned(),
                    });
                }
            }
            finished.insert(p.job);
        }
        if !completed.is_empty() {
            // A completed job stored an entry or a negative one: which, the
            // cache says.
            let read = client
                .batch_get(proto::BatchGetRequest {
                    keys: completed,
                    ..Default::default()
                })
                .await?;
            for result in read.results {
                if result.status() == proto::LookupStatus::Negative {
                    tally.negative += 1;
                } else {
                    tally.done += 1;
                }
            }
        }
        for p in chunk.into_iter().rev() {
            if !finished.contains(&p.job) {
                queue.push_front(p);
            }
        }
        if !all_finished {
            return Ok(());
        }
    }
}

/// Time left by the providers' own limits: for each provider with jobs
/// pending, its backlog (every queued job, others' too) over its rate,
/// after any pause it is under; the slowest provider decides.
async fn estimate_left(client: &Client, pending: &BTreeMap<String, VecDeque<Pending>>) -> String {
    let Ok(stats) = client.stats(proto::StatsRequest {}).await else {
        return "no estimate (Stats failed)".to_owned();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let mut left: f64 = 0.0;
    for provider in stats
        .providers
        .iter()
        .filter(|p| pending.contains_key(&p.provider))
    {
        if provider.rate_per_second <= 0.0 {
            continue;
        }
        let paused = provider.next_request_at.as_ref().map_or(0.0, |at| {
            (at.seconds as f64 + f64::from(at.nanos) / 1e9 - now).max(0.0)
        });
        left = left.max(paused + provider.backlog as f64 / provider.rate_per_second);
    }
    format!(
        "~{} left by the rate limits",
        humantime::format_duration(Duration::from_secs(left.ceil() as u64))
    )
}
