//! Queue throughput: no-op jobs from a full queue to the last completion.
//!
//! River's own `riverqueue bench -n N` inserts N jobs, starts its client
//! and times from "ready" to the last completion. Roadie's run does the
//! same: N jobs enqueued through the store, then `roadie-worker` processes
//! started, timed from the first job's request to the upstream (the first
//! worker at work) to the moment no job is left; the start-up before it
//! (the process, its store's connections, the first claim) is reported
//! beside the figure, as River's (its client's start) is outside it. A Roadie
//! job is never quite a no-op: each one is an HTTP GET of the loopback
//! upstream (answering at once) and a cache entry written with its change
//! row, in the transaction that completes the job.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use roadie_store::{Backend, JobNew, JobState, Store, now_ms};
use serde::Serialize;

use crate::{
    processes::{self, PROVIDER, Setup},
    upstream::Upstream,
};

/// What a queue run measured.
#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    /// e.g. `roadie (postgres), one worker process`.
    pub name: String,
    /// Jobs worked.
    pub jobs: u64,
    /// Seconds to enqueue them (Roadie: one job per call, 16 at a time).
    pub insert_seconds: Option<f64>,
    /// Seconds from the workers' start to the first job's request
    /// (Roadie), outside `work_seconds`.
    pub start_seconds: Option<f64>,
    /// Seconds from the first job's request (Roadie; River: its client
    /// ready) to the last completion.
    pub work_seconds: f64,
    /// Jobs completed per second.
    pub throughput: f64,
}

async fn enqueue(store: &Store, upstream: &Upstream, jobs: u64) -> anyhow::Result<()> {
    let base = upstream.base_url();
    let mut tasks = tokio::task::JoinSet::new();
    const LANES: u64 = 16;
    for lane in 0..LANES {
        let (store, base) = (store.clone(), base.clone());
        tasks.spawn(async move {
            let mut i = lane;
            while i < jobs {
                let job = JobNew {
                    provider: PROVIDER.to_owned(),
                    url: format!("{base}job/{i}"),
                    policy: "generic".to_owned(),
                    tags: Vec::new(),
                    priority: 2,
                    max_attempts: 5,
                    traceparent: None,
                    now: now_ms(),
                };
                store.job_enqueue(&job).await?;
                i += LANES;
            }
            anyhow::Ok(())
        });
    }
    for result in tasks.join_all().await {
        result?;
    }
    Ok(())
}

async fn unfinished(store: &Store) -> anyhow::Result<bool> {
    let backlog = store
        .provider_stats()
        .await?
        .iter()
        .any(|p| p.provider == PROVIDER && p.backlog > 0);
    let running = !store
        .job_list(Some(JobState::Running), Some(PROVIDER), u64::MAX, 1)
        .await?
        .is_empty();
    Ok(backlog || running)
}

/// Roadie: `jobs` jobs, then `workers` worker processes of `concurrency`
/// slots each, sharing `connections` database connections in all.
pub async fn roadie(
    backend: Backend,
    jobs: u64,
    workers: u32,
    concurrency: u32,
    connections: u32,
) -> anyhow::Result<QueueReport> {
    let db = processes::database(backend).await?;
    let store = db.store().await;
    let upstream = Upstream::start().await?;

    let started = Instant::now();
    enqueue(&store, &upstream, jobs).await?;
    let insert_seconds = started.elapsed().as_secs_f64();

    let mut setup = Setup::new(&db.url);
    setup.upstream = Some(upstream.addr);
    setup.worker_concurrency = concurrency;
    setup.max_connections = Some((connections / workers).max(1));
    let spawned = Instant::now();
    let mut running = Vec::new();
    for _ in 0..workers {
        running.push(processes::worker(&setup)?);
    }
    // Polled: the end is known to within a few milliseconds, over a run of
    // seconds. The table is read only once the upstream has seen every job
    // (its count is in memory: watching the queue through the database
    // would load the database the run measures), or every half second in
    // case a job ends without a request.
    let mut polls: u64 = 0;
    loop {
        polls += 1;
        if (upstream.requests() >= jobs || polls.is_multiple_of(250)) && !unfinished(&store).await?
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ended = Instant::now();
    let started = upstream
        .first_request()
        .context("the workers ended with no request to the upstream")?;
    let start_seconds = started.duration_since(spawned).as_secs_f64();
    let work_seconds = ended.duration_since(started).as_secs_f64();
    for worker in running {
        worker.stop().await;
    }

    let failed = store
        .job_list(Some(JobState::Failed), Some(PROVIDER), u64::MAX, 1)
        .await?;
    ensure!(failed.is_empty(), "a job failed: {:?}", failed.first());
    ensure!(
        upstream.requests() == jobs,
        "{} upstream requests for {jobs} jobs",
        upstream.requests()
    );
    store.close().await;
    db.finish().await;
    Ok(QueueReport {
        name: match workers {
            1 => format!("roadie ({}), one worker process", backend.name()),
            n => format!("roadie ({}), {n} worker processes", backend.name()),
        },
        jobs,
        insert_seconds: Some(insert_seconds),
        start_seconds: Some(start_seconds),
        work_seconds,
        throughput: jobs as f64 / work_seconds,
    })
}

/// River's Rust client, through its own `riverqueue bench` on a fresh
/// Postgres database: `-n jobs --max-workers W --max-connections C`.
pub async fn river(
    riverqueue: &Path,
    jobs: u64,
    max_workers: u32,
    connections: u32,
) -> anyhow::Result<QueueReport> {
    let db = processes::database(Backend::Postgres).await?;
    let run = |args: Vec<String>| {
        let riverqueue = riverqueue.to_owned();
        async move {
            let output = tokio::process::Command::new(&riverqueue)
                .args(&args)
                .output()
                .await
                .with_context(|| format!("run {}", riverqueue.display()))?;
            if !output.status.success() {
                bail!(
                    "riverqueue {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        }
    };
    let url = db.url.clone();
    run(vec![
        "migrate-up".into(),
        "--database-url".into(),
        url.clone(),
    ])
    .await?;
    let out = run(vec![
        "bench".into(),
        "--database-url".into(),
        url,
        "-n".into(),
        jobs.to_string(),
        "--max-workers".into(),
        max_workers.to_string(),
        "--max-connections".into(),
        connections.to_string(),
    ])
    .await?;
    db.finish().await;
    let throughput = river_throughput(&out)
        .with_context(|| format!("no 'overall job/sec' in riverqueue's output:\n{out}"))?;
    Ok(QueueReport {
        name: "river 0.5 (postgres)".to_owned(),
        jobs,
        insert_seconds: None,
        start_seconds: None,
        work_seconds: jobs as f64 / throughput,
        throughput,
    })
}

/// The figure of riverqueue's last line:
/// `bench: total jobs worked [ N ], …, overall job/sec [ X ], …`.
fn river_throughput(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains("overall job/sec"))?;
    let after = line.split("overall job/sec [").nth(1)?;
    after.split(']').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rivers_summary_line() {
        let out = "bench: jobs worked [ 5 ], inserted [ 0 ], job/sec [ 2.5 ] [2s]\n\
                   bench: total jobs worked [     100000 ], total jobs inserted [     100000 ], \
                   overall job/sec [     9312.4 ], p95 [ 1.2s ], running 10.7s\n";
        assert_eq!(river_throughput(out), Some(9312.4));
        assert_eq!(river_throughput("nothing"), None);
    }
}
