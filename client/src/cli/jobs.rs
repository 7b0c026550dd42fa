//! `roadie jobs list|show|cancel|retry`: the job queue from the command line.

use std::io::Write;

use clap::{Args, Subcommand};

use super::{CliError, Exit, output::write_json};
use crate::{Client, ClientError, proto};

/// Arguments of `roadie jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// What to do with the queue.
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// The `roadie jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<proto::JobState>,
        /// Only jobs for this provider.
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
        /// Jobs per page (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page (its "next page" token).
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
    },
    /// Show one job. Exit 1 when there is no such job.
    Show {
        /// The job's id.
        id: u64,
    },
    /// Cancel an available or running job.
    Cancel {
        /// The job's id.
        id: u64,
    },
    /// Make a failed or cancelled job available again.
    Retry {
        /// The job's id.
        id: u64,
    },
}

/// Runs one `roadie jobs` command.
pub async fn run(
    client: &Client,
    args: JobsArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let job = match args.command {
        JobsCommand::List {
            state,
            provider,
            limit,
            page_token,
        } => {
            let response = client
                .list_jobs(proto::ListJobsRequest {
                    state: state.unwrap_or(proto::JobState::Unspecified) as i32,
                    provider: provider.unwrap_or_default(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?;
            if json {
                let jobs: Vec<_> = response.jobs.iter().map(job_json).collect();
                write_json(
                    out,
                    &serde_json::json!({ "jobs": jobs, "next_page_token": response.next_page_token }),
                )?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<10}  {:>3}  {:>7}  {:<14}  URL",
                    "ID", "STATE", "PRI", "ATTEMPT", "PROVIDER"
                )?;
                for job in &response.jobs {
                    writeln!(
                        out,
                        "{:>8}  {:<10}  {:>3}  {:>3}/{:<3}  {:<14}  {}",
                        job.id,
                        state_label(job.state),
                        job.priority,
                        job.attempt,
                        job.max_attempts,
                        job.provider,
                        job.url
                    )?;
                }
                if !response.next_page_token.is_empty() {
                    writeln!(out, "more: --page-token {}", response.next_page_token)?;
                }
            }
            return Ok(Exit::Success);
        }
        JobsCommand::Show { id } => match client.get_job(proto::GetJobRequest { id }).await {
            Ok(response) => response.job,
            Err(ClientError::NotFound(message)) => {
                if json {
                    write_json(out, &serde_json::json!({ "job": null }))?;
                } else {
                    writeln!(out, "{message}")?;
                }
                return Ok(Exit::Miss);
            }
            Err(error) => return Err(error.into()),
        },
        JobsCommand::Cancel { id } => client.cancel_job(proto::CancelJobRequest { id }).await?.job,
        JobsCommand::Retry { id } => client.retry_job(proto::RetryJobRequest { id }).await?.job,
    };
    let job = job.ok_or_else(|| CliError::Protocol("answer without a job".to_owned()))?;
    if json {
        write_json(out, &serde_json::json!({ "job": job_json(&job) }))?;
    } else {
        write_job(out, &job)?;
    }
    Ok(Exit::Success)
}

fn state_label(state: i32) -> &'static str {
    match proto::JobState::try_from(state) {
        Ok(proto::JobState::Available) => "available",
        Ok(proto::JobState::Running) => "running",
        Ok(proto::JobState::Completed) => "completed",
        Ok(proto::JobState::Failed) => "failed",
        Ok(proto::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// A timestamp as RFC 3339 with milliseconds; `None` when unset or before 1970.
pub(super) fn time(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
    Some(humantime::format_rfc3339_millis(at).to_string())
}

fn job_json(job: &proto::Job) -> serde_json::Value {
    serde_json::json!({
        "id": job.id,
        "provider": job.provider,
        "url": job.url,
        "policy": job.policy,
        "priority": job.priority,
        "state": state_label(job.state),
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "run_after": time(job.run_after.as_ref()),
        "lease_expires_at": time(job.lease_expires_at.as_ref()),
        "lease_holder": job.lease_holder,
        "last_error": job.last_error,
        "created_at": time(job.created_at.as_ref()),
        "updated_at": time(job.updated_at.as_ref()),
        "finished_at": time(job.finished_at.as_ref()),
        "traceparent": job.traceparent,
    })
}

fn write_job(out: &mut dyn Write, job: &proto::Job) -> std::io::Result<()> {
    writeln!(out, "job {} ({})", job.id, state_label(job.state))?;
    writeln!(out, "url: {}", job.url)?;
    writeln!(
        out,
        "provider: {}  policy: {}  priority: {}",
        job.provider, job.policy, job.priority
    )?;
    writeln!(out, "attempt: {}/{}", job.attempt, job.max_attempts)?;
    for (label, value) in [
        ("created", time(job.created_at.as_ref())),
        ("run after", time(job.run_after.as_ref())),
        ("lease until", time(job.lease_expires_at.as_ref())),
        ("finished", time(job.finished_at.as_ref())),
    ] {
        if let Some(value) = value {
            writeln!(out, "{label}: {value}")?;
        }
    }
    if !job.lease_holder.is_empty() {
        writeln!(out, "held by: {}", job.lease_holder)?;
    }
    if !job.last_error.is_empty() {
        writeln!(out, "last error: {}", job.last_error)?;
    }
    Ok(())
}
