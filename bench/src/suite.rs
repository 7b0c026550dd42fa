//! Every comparison of BENCHMARKS.md in one run on one machine, through one
//! harness at one concurrency, printed as Markdown tables with ratios and
//! each target marked met or not, and written as JSON.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use roadie_proto::v1 as pb;
use roadie_store::{Backend, now_ms};
use serde::Serialize;

use crate::{
    ceiling::{self, Driver},
    etcd,
    load::{self, Call, Load, Report},
    processes::{self, PROVIDER, Process, Setup},
    queue::{self, QueueReport},
    targets,
    upstream::Upstream,
};

/// What to run, and how hard (the flags of `roadie-bench suite`).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Concurrent calls of every closed loop.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections (or Redis connections) they share.
    #[arg(long, default_value_t = 4)]
    pub channels: usize,
    /// Unrecorded calls before each measurement.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// How long each load is recorded.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Rounds of the read comparison; each target's median round is shown.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Size of every value read and written.
    #[arg(long, default_value_t = 1024)]
    pub value_bytes: usize,
    /// Keys the reads spread over.
    #[arg(long, default_value_t = 1000)]
    pub hot_keys: usize,
    /// Redis to compare with.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// River's `riverqueue` binary (crate riverqueue-cli 0.5); without it
    /// the River row is left out.
    #[arg(long, env = "RIVERQUEUE")]
    pub riverqueue: Option<PathBuf>,
    /// Jobs per queue run.
    #[arg(long, default_value_t = 20_000)]
    pub queue_jobs: u64,
    /// Entry counts of the scale runs.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub scale: Vec<u64>,
    /// Parts to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "reads,writes,scenarios,watchers,fetch,queue,scale"
    )]
    pub parts: Vec<Part>,
    /// Where results.json goes.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// A part of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Get hits against the empty tonic service and Redis GET.
    Reads,
    /// Put of new keys, Get hits, the mixed load and watch propagation,
    /// against etcd and the database's own upsert.
    Writes,
    /// Get miss, BatchGet, Put, mixed, on both backends.
    Scenarios,
    /// Put throughput with 0, 200 and 2 000 open Watch streams.
    Watchers,
    /// Fetch (wait) of a cold key against a plain GET.
    Fetch,
    /// No-op jobs, insert to completion, against River.
    Queue,
    /// Get p99 and server memory as entries grow.
    Scale,
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    loads: Vec<Report>,
    queue: Vec<QueueReport>,
    scale: Vec<ScaleRow>,
    targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
struct ScaleRow {
    entries: u64,
    hot_tier: bool,
    report: Report,
    server_rss_bytes: Option<u64>,
}

/// A target of the issue, and whether this run met it.
#[derive(Debug, Serialize)]
struct Target {
    what: String,
    measured: f64,
    goal: String,
    met: bool,
}

impl Results {
    fn target(&mut self, what: impl Into<String>, measured: f64, goal: &str, met: bool) {
        self.targets.push(Target {
            what: what.into(),
            measured,
            goal: goal.to_owned(),
            met,
        });
    }
}

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// Runs the parts `options` names, printing as it goes.
pub async fn run(options: &Options) -> anyhow::Result<Results> {
    let mut results = Results::default();
    let value = Bytes::from(vec![b'x'; options.value_bytes]);
    let keys = targets::hot_keys(options.hot_keys);
    let closed = Load {
        concurrency: options.concurrency,
        warmup: options.warmup,
        duration: options.duration,
        rate: None,
    };
    println!(
        "# roadie-bench: {} concurrent calls over {} connections, {} s recorded after {} s warm-up, {} B values",
        options.concurrency,
        options.channels,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
        options.value_bytes
    );
    for part in &options.parts {
        match part {
            Part::Reads => reads(options, &mut results, &keys, &value, closed).await?,
            Part::Writes => writes(options, &mut results, &keys, &value, closed).await?,
            Part::Scenarios => scenarios(options, &mut results, &keys, &value, closed).await?,
            Part::Watchers => watchers(options, &mut results, &value, closed).await?,
            Part::Fetch => fetch(options, &mut results).await?,
            Part::Queue => queue_part(options, &mut results).await?,
            Part::Scale => scale(options, &mut results, closed).await?,
        }
    }
    print_targets(&results);
    std::fs::create_dir_all(&options.out)?;
    let path = options.out.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?;
    println!("\nresults: {}", path.display());
    Ok(results)
}

fn header(baseline: &str) {
    println!(
        "| load | calls/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | calls/s vs {baseline} |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
}

fn row(report: &Report, baseline: Option<&Report>) {
    let ratio = baseline.map_or("1.00".to_owned(), |b| {
        format!("{:.2}", report.throughput / b.throughput)
    });
    println!(
        "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
        report.name,
        report.throughput,
        Report::ms(report.p50_us),
        Report::ms(report.p99_us),
        Report::ms(report.p999_us),
        Report::ms(report.max_us),
        report.errors,
        ratio
    );
    if let Some(error) = &report.first_error {
        println!("| first error: {error} | | | | | | | |");
    }
    if let Some(behind) = report.behind_max_us {
        println!(
            "| (the generator was at most {:.3} ms behind its timetable) | | | | | | | |",
            Report::ms(behind)
        );
    }
}

/// Runs one load, prints its row against `baseline`, keeps its report.
async fn measure(
    results: &mut Results,
    name: String,
    call: Call,
    load: Load,
    baseline: Option<&Report>,
) -> Report {
    let report = load::run(name, call, load).await;
    row(&report, baseline);
    results.loads.push(report.clone());
    report
}

/// A `roadie-server` on a fresh database of `backend`, its hot keys written.
struct Roadie {
    server: Process,
    channels: Vec<tonic::transport::Channel>,
    /// What the server was started with, for workers beside it.
    setup: Setup,
    backend: Backend,
    db: roadie_store::testing::TestDb,
}

impl Roadie {
    /// On a fresh database, with `keys` written.
    async fn fresh(
        options: &Options,
        backend: Backend,
        configure: impl FnOnce(&mut Setup),
        keys: &[String],
        value: &Bytes,
    ) -> anyhow::Result<Roadie> {
        let db = processes::database(backend).await?;
        let mut setup = Setup::new(&db.url);
        configure(&mut setup);
        let server = processes::server(&setup).await?;
        let channels = targets::channels(&server.addr, options.channels).await?;
        targets::put_all(&channels, keys, value).await?;
        Ok(Roadie {
            server,
            channels,
            setup,
            backend,
            db,
        })
    }

    async fn stop(self) {
        self.server.stop().await;
        self.db.finish().await;
    }
}

fn hot_name(on: bool) -> &'static str {
    if on { "hot tier on" } else { "hot tier off" }
}

async fn redis_get(options: &Options, keys: &[String], value: &Bytes) -> anyhow::Result<Call> {
    let client = redis::Client::open(options.redis_url.as_str())?;
    let mut connections = Vec::new();
    for _ in 0..options.channels {
        connections.push(
            client
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("connect to Redis at {}", options.redis_url))?,
        );
    }
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("SET")
            .arg(redis_key(key))
            .arg(value.as_ref())
            .ignore();
    }
    pipe.query_async::<()>(&mut connections[0]).await?;
    let keys = Arc::new(keys.iter().map(|k| redis_key(k)).collect());
    Ok(targets::redis_get(connections, keys))
}

fn redis_key(key: &str) -> String {
    format!("roadie-bench:{key}")
}

/// Every load of `loads` once per round, `options.rounds` rounds, round by
/// round: a noisy moment of the shared machine lands on every target of a
/// round, not on one side of a ratio only. Each round's calls see sequence
/// numbers of their own, so a load of new keys writes new keys every round.
async fn in_rounds(
    options: &Options,
    part: &str,
    loads: &[(String, Call)],
    load: Load,
) -> Vec<Vec<Report>> {
    let mut rounds: Vec<Vec<Report>> = vec![Vec::new(); loads.len()];
    for round in 1..=options.rounds {
        eprintln!("{part}: round {round} of {}", options.rounds);
        for ((name, call), reports) in loads.iter().zip(&mut rounds) {
            let call = call.clone();
            let offset: Call = Arc::new(move |slot, seq| call(slot, seq + (round << 32)));
            reports.push(load::run(name.clone(), offset, load).await);
        }
    }
    rounds
}

/// The run of median throughput; `None` when there was no run.
fn median_of<T: Clone>(runs: &[T], throughput: impl Fn(&T) -> f64) -> Option<T> {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| throughput(a).total_cmp(&throughput(b)));
    sorted.get(sorted.len() / 2).cloned()
}

/// Every round's throughput, for the tables.
fn every_round<T>(runs: &[T], throughput: impl Fn(&T) -> f64) -> String {
    let every: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.0}", throughput(r)))
        .collect();
    every.join(", ")
}

/// A load's round of median throughput.
fn median(reports: &[Report]) -> Report {
    median_of(reports, |r| r.throughput).expect("a load has at least one round")
}

fn median_header(versus: &str) {
    println!(
        "| load | calls/s | calls/s, every round | p50 ms | p99 ms | p99.9 ms | max ms | errors | vs {versus} |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
}

/// A load's median round, its throughput in every round, errors of all.
fn median_row(reports: &[Report], median: &Report, versus: &str) {
    println!(
        "| {} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {versus} |",
        median.name,
        median.throughput,
        every_round(reports, |r| r.throughput),
        Report::ms(median.p50_us),
        Report::ms(median.p99_us),
        Report::ms(median.p999_us),
        Report::ms(median.max_us),
        reports.iter().map(|r| r.errors).sum::<u64>(),
    );
    if let Some(error) = reports.iter().find_map(|r| r.first_error.as_ref()) {
        println!("| first error: {error} | | | | | | | | |");
    }
}

/// Every read target runs `options.rounds` times, round by round (empty
/// service, Redis, each Roadie), all of them up at once; the table holds
/// each target's median round, so a noisy moment of the shared machine
/// does not land on one side of a ratio only.
async fn reads(
    options: &Options,
    results: &mut Results,
    keys: &Arc<Vec<String>>,
    value: &Bytes,
    closed: Load,
) -> anyhow::Result<()> {
    let empty = processes::empty_server(options.value_bytes).await?;
    let channels = targets::channels(&empty.addr, options.channels).await?;
    let mut loads: Vec<(String, Call)> = vec![
        (
            "empty tonic service, Get".into(),
            targets::get(channels, keys.clone(), pb::LookupStatus::Hit),
        ),
        (
            "redis GET (redis crate)".into(),
            redis_get(options, keys, value).await?,
        ),
    ];
    let mut roadies = Vec::new();
    for backend in BACKENDS {
        for hot in [true, false] {
            let roadie = Roadie::fresh(options, backend, |s| s.hot_tier = hot, keys, value).await?;
            let call = targets::get(roadie.channels.clone(), keys.clone(), pb::LookupStatus::Hit);
            loads.push((
                format!("roadie Get hit ({}, {})", backend.name(), hot_name(hot)),
                call,
            ));
            roadies.push((backend, hot, roadie));
        }
    }
    let rounds = in_rounds(options, "reads", &loads, closed).await;
    println!(
        "\n## Get hits: the stack's limit, Redis, Roadie (median of {} rounds)\n",
        options.rounds
    );
    median_header("empty tonic");
    let mut medians: Vec<Report> = Vec::new();
    for reports in &rounds {
        let median = median(reports);
        let ratio = medians
            .first()
            .map_or(1.0, |limit| median.throughput / limit.throughput);
        median_row(reports, &median, &format!("{ratio:.2}"));
        medians.push(median);
    }
    results.loads.extend(rounds.into_iter().flatten());
    let (limit, redis) = (medians[0].clone(), medians[1].clone());

    println!("\nOpen loop at half of each hot-tier server's median throughput:\n");
    header("empty tonic");
    for ((backend, hot, roadie), median) in roadies.iter().zip(&medians[2..]) {
        if *hot {
            let name = &median.name;
            results.target(
                format!("{name} / empty tonic service"),
                median.throughput / limit.throughput,
                ">= 0.9",
                median.throughput >= 0.9 * limit.throughput,
            );
            results.target(
                format!("{name} / redis GET"),
                median.throughput / redis.throughput,
                ">= 0.5",
                median.throughput >= 0.5 * redis.throughput,
            );
            let rate = median.throughput / 2.0;
            let open = Load {
                rate: Some(rate),
                concurrency: 10_000,
                ..closed
            };
            let call = targets::get(roadie.channels.clone(), keys.clone(), pb::LookupStatus::Hit);
            let name = format!(
                "roadie Get hit ({}, {}), open loop at {rate:.0}/s",
                backend.name(),
                hot_name(*hot)
            );
            let report = measure(results, name.clone(), call, open, Some(&limit)).await;
            results.target(
                format!("{name}: p99 ms"),
                Report::ms(report.p99_us),
                "< 1",
                report.p99_us < 1000 && report.clean(),
            );
        }
    }
    for (_, _, roadie) in roadies {
        roadie.stop().await;
    }
    empty.stop().await;
    Ok(())
}

/// The write path against its ceilings, in rounds (see [`in_rounds`]):
/// etcd (Put of new keys, Range hits), each backend's Roadie (Put of new
/// keys, Get hits, 9 Get hits to 1 Put) and the database's own upsert of
/// the same value through the native driver and `sqlx::Any`. Then, one
/// caller at a time, how long a write takes to reach a watching client,
/// etcd and Roadie.
async fn writes(
    options: &Options,
    results: &mut Results,
    keys: &Arc<Vec<String>>,
    value: &Bytes,
    closed: Load,
) -> anyhow::Result<()> {
    let etcd_server = processes::etcd().await?;
    let etcd_channels = targets::channels(&etcd_server.addr, options.channels).await?;
    etcd::put_all(&etcd_channels, keys, value).await?;
    // Each load beside the etcd load it is read against: etcd's Put for
    // writes, etcd's Range for reads (and the mix, which is mostly reads).
    const ETCD_PUT: usize = 0;
    const ETCD_RANGE: usize = 1;
    let mut loads: Vec<(String, Call)> = vec![
        (
            "etcd Put of a new key".into(),
            etcd::put(etcd_channels.clone(), value.clone()),
        ),
        (
            "etcd Range hit".into(),
            etcd::get(etcd_channels.clone(), keys.clone()),
        ),
    ];
    let mut versus = vec![ETCD_PUT, ETCD_RANGE];
    /// Where each backend's loads are in `loads`.
    struct Placed {
        backend: Backend,
        put: usize,
        get: usize,
        mixed: usize,
        native: usize,
        any: usize,
    }
    let mut placed = Vec::new();
    let mut roadies = Vec::new();
    let mut databases = Vec::new();
    for backend in BACKENDS {
        let roadie = Roadie::fresh(options, backend, |_| {}, keys, value).await?;
        let ch = &roadie.channels;
        let name = |what: &str| format!("roadie {what} ({})", backend.name());
        let mut add = |name: String, call: Call, reference: usize| {
            loads.push((name, call));
            versus.push(reference);
            loads.len() - 1
        };
        let put = add(
            name("Put of a new key"),
            targets::put(ch.clone(), value.clone()),
            ETCD_PUT,
        );
        let get = add(
            name("Get hit"),
            targets::get(ch.clone(), keys.clone(), pb::LookupStatus::Hit),
            ETCD_RANGE,
        );
        let mixed = add(
            name("mixed: 9 Get hits to 1 Put"),
            targets::mixed(ch.clone(), keys.clone(), value.clone()),
            ETCD_RANGE,
        );
        let db = processes::database(backend).await?;
        let mut upsert = async |driver: Driver| -> anyhow::Result<usize> {
            let call =
                ceiling::upsert(backend, &db.url, driver, options.concurrency, value.clone())
                    .await?;
            let name = format!("{} upsert of a new key, {}", backend.name(), driver.name());
            Ok(add(name, call, ETCD_PUT))
        };
        let native = upsert(Driver::Native).await?;
        let any = upsert(Driver::Any).await?;
        placed.push(Placed {
            backend,
            put,
            get,
            mixed,
            native,
            any,
        });
        roadies.push(roadie);
        databases.push(db);
    }
    let rounds = in_rounds(options, "writes", &loads, closed).await;
    let medians: Vec<Report> = rounds.iter().map(|r| median(r)).collect();
    println!(
        "\n## Writes: Roadie against etcd and the database's own upsert (median of {} rounds)\n",
        options.rounds
    );
    median_header("its reference");
    for ((reports, median), &reference) in rounds.iter().zip(&medians).zip(&versus) {
        let against = &medians[reference];
        let what = if reference == ETCD_PUT {
            "Put"
        } else {
            "Range"
        };
        let ratio = median.throughput / against.throughput;
        median_row(reports, median, &format!("{ratio:.2}x etcd {what}"));
    }
    println!();
    let etcd_put = &medians[ETCD_PUT];
    for at in &placed {
        let b = at.backend.name();
        let (put, get, mixed) = (&medians[at.put], &medians[at.get], &medians[at.mixed]);
        let (native, any) = (&medians[at.native], &medians[at.any]);
        let ratio = put.throughput / etcd_put.throughput;
        results.target(
            format!("Put calls/s / etcd Put ({b})"),
            ratio,
            ">= 1.0",
            ratio >= 1.0,
        );
        results.target(
            format!("Put p99 ms at {} callers ({b})", options.concurrency),
            Report::ms(put.p99_us),
            "< 20",
            put.p99_us < 20_000 && put.clean(),
        );
        let ratio = mixed.throughput / get.throughput;
        results.target(
            format!("mixed 9 Get : 1 Put calls/s / Get hits alone ({b})"),
            ratio,
            ">= 0.7",
            ratio >= 0.7,
        );
        let ratio = put.throughput / native.throughput;
        results.target(
            format!("Put calls/s / the database's own upsert ({b})"),
            ratio,
            "reported",
            true,
        );
        println!(
            "{b}: Put is {:.2}x the database's own upsert; sqlx::Any runs the upsert at {:.2}x the native driver",
            ratio,
            any.throughput / native.throughput
        );
    }
    results.loads.extend(rounds.into_iter().flatten());

    println!("\n## Propagation: a Put until a watcher of its prefix has it, one caller\n");
    header("etcd");
    let serial = Load {
        concurrency: 1,
        ..closed
    };
    let seen = targets::Propagation::default();
    let watch = etcd::watch(etcd_channels[0].clone(), "bench/seen/", seen.clone()).await?;
    let call = etcd::put_seen(etcd_channels.clone(), "bench/seen/".into(), seen);
    let etcd_seen = measure(results, "etcd Put to watcher".into(), call, serial, None).await;
    watch.abort();
    for roadie in &roadies {
        let seen = targets::Propagation::default();
        let watch = targets::watch(roadie.channels[0].clone(), "bench:seen:", seen.clone()).await?;
        let call = targets::put_seen(roadie.channels.clone(), "bench:seen:".into(), seen);
        let name = format!("roadie Put to watcher ({})", roadie.backend.name());
        measure(results, name, call, serial, Some(&etcd_seen)).await;
        watch.abort();
    }
    for roadie in roadies {
        roadie.stop().await;
    }
    for db in databases {
        db.finish().await;
    }
    etcd_server.stop().await;
    Ok(())
}

async fn scenarios(
    options: &Options,
    results: &mut Results,
    keys: &Arc<Vec<String>>,
    value: &Bytes,
    closed: Load,
) -> anyhow::Result<()> {
    for backend in BACKENDS {
        println!("\n## Scenarios on {} (hot tier on)\n", backend.name());
        header("Get hit");
        let roadie = Roadie::fresh(options, backend, |_| {}, keys, value).await?;
        let ch = &roadie.channels;
        let name = |what: &str| format!("roadie {what} ({})", backend.name());
        let call = targets::get(ch.clone(), keys.clone(), pb::LookupStatus::Hit);
        let hit = measure(results, name("Get hit"), call, closed, None).await;
        let loads: [(String, Call); 4] = [
            (name("Get miss"), targets::get_miss(ch.clone())),
            (
                name("BatchGet of 16 hits"),
                targets::batch_get(ch.clone(), keys.clone(), 16),
            ),
            (
                name("Put of a new key"),
                targets::put(ch.clone(), value.clone()),
            ),
            (
                name("mixed: 9 Get hits to 1 Put"),
                targets::mixed(ch.clone(), keys.clone(), value.clone()),
            ),
        ];
        for (name, call) in loads {
            measure(results, name, call, closed, Some(&hit)).await;
        }
        roadie.stop().await;
    }
    Ok(())
}

/// Open watches per load of the watcher comparison.
const WATCHER_COUNTS: [usize; 3] = [0, 200, 2000];

/// Put throughput while watchers are open on the same server: watchers
/// whose filter the writes never match (each watches a prefix of its own,
/// the common case of a client following its own keys), and watchers of
/// everything (every write goes to every one of them).
async fn watchers(
    options: &Options,
    results: &mut Results,
    value: &Bytes,
    closed: Load,
) -> anyhow::Result<()> {
    for backend in BACKENDS {
        println!("\n## Put with watchers open on {}\n", backend.name());
        println!(
            "| load | calls/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | calls/s vs no watchers | changes delivered/s |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        let roadie = Roadie::fresh(
            options,
            backend,
            |s| s.max_watches_per_client = Some(10_000),
            &[],
            value,
        )
        .await?;
        let mut none: Option<Report> = None;
        for everything in [false, true] {
            for count in WATCHER_COUNTS {
                if everything && count == 0 {
                    continue;
                }
                let open =
                    targets::Watchers::open(&roadie.server.addr, count, |i| pb::WatchRequest {
                        key_prefix: if everything {
                            String::new()
                        } else {
                            format!("bench:watch:{i}/")
                        },
                        ..Default::default()
                    })
                    .await?;
                let which = if everything {
                    "of everything"
                } else {
                    "of other keys"
                };
                let name = format!("roadie Put, {count} watchers {which} ({})", backend.name());
                let call = targets::put(roadie.channels.clone(), value.clone());
                let before = open.changes();
                let started = std::time::Instant::now();
                let report = load::run(name, call, closed).await;
                let delivered = (open.changes() - before) as f64 / started.elapsed().as_secs_f64();
                drop(open);
                let ratio = none
                    .as_ref()
                    .map_or(1.0, |n| report.throughput / n.throughput);
                println!(
                    "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {ratio:.2} | {delivered:.0} |",
                    report.name,
                    report.throughput,
                    Report::ms(report.p50_us),
                    Report::ms(report.p99_us),
                    Report::ms(report.p999_us),
                    Report::ms(report.max_us),
                    report.errors,
                );
                if let Some(error) = &report.first_error {
                    println!("| first error: {error} | | | | | | | | |");
                }
                if count == 2000 && !everything {
                    results.target(
                        format!(
                            "Put calls/s with 2000 watchers of other keys / none ({})",
                            backend.name()
                        ),
                        ratio,
                        ">= 0.8",
                        ratio >= 0.8,
                    );
                }
                if count == 0 {
                    none = Some(report.clone());
                }
                results.loads.push(report);
            }
        }
        roadie.stop().await;
    }
    Ok(())
}

/// One caller at a time, so the figure is the latency a fetch adds; the
/// plain GET and the Fetch in rounds (see [`in_rounds`]).
async fn fetch(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    let upstream = Upstream::start().await?;
    let serial = Load {
        concurrency: 1,
        warmup: options.warmup,
        duration: options.duration,
        rate: None,
    };
    for backend in BACKENDS {
        let roadie = Roadie::fresh(
            options,
            backend,
            |s| s.upstream = Some(upstream.addr),
            &[],
            &Bytes::new(),
        )
        .await?;
        let worker = processes::worker(&roadie.setup)?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        let loads: Vec<(String, Call)> = vec![
            (
                "reqwest GET of the upstream".into(),
                targets::http_get(
                    http,
                    upstream.base_url(),
                    format!("plain-{}", backend.name()),
                ),
            ),
            (
                format!("roadie Fetch (wait), cold key ({})", backend.name()),
                targets::fetch_cold(
                    roadie.channels.clone(),
                    PROVIDER.to_owned(),
                    format!("fetch-{}", backend.name()),
                ),
            ),
        ];
        let rounds = in_rounds(options, "fetch", &loads, serial).await;
        println!(
            "\n## Fetch (wait) of a cold key against a plain GET, {}, one caller (median of {} rounds)\n",
            backend.name(),
            options.rounds
        );
        median_header("plain GET");
        let (plain, report) = (median(&rounds[0]), median(&rounds[1]));
        median_row(&rounds[0], &plain, "1.00");
        median_row(
            &rounds[1],
            &report,
            &format!("{:.2}", report.throughput / plain.throughput),
        );
        let overhead = Report::ms(report.p50_us.saturating_sub(plain.p50_us));
        let goal = match backend {
            Backend::Sqlite => 5.0,
            Backend::Postgres => 2.0,
        };
        println!("\nFetch overhead over the plain GET, p50: {overhead:.3} ms");
        let clean = rounds[1].iter().all(Report::clean);
        results.target(
            format!(
                "Fetch (wait) overhead over a plain GET, p50 ms ({})",
                backend.name()
            ),
            overhead,
            &format!("< {goal}"),
            overhead < goal && clean,
        );
        results.loads.extend(rounds.into_iter().flatten());
        worker.stop().await;
        roadie.stop().await;
    }
    Ok(())
}

/// River and Roadie on each backend in rounds, round by round; each
/// target's median round.
async fn queue_part(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    let mut rivers = Vec::new();
    // 128 workers and 8 connections in each: one worker process of 128
    // slots, River's own shape (one process), which the targets read; and
    // two of 64, whose finishes take the revision counter in turn.
    let shapes = [
        (Backend::Postgres, 1, 128),
        (Backend::Postgres, 2, 64),
        (Backend::Sqlite, 1, 128),
        (Backend::Sqlite, 2, 64),
    ];
    let mut roadies: Vec<Vec<QueueReport>> = vec![Vec::new(); shapes.len()];
    for round in 1..=options.rounds {
        eprintln!("queue: round {round} of {}", options.rounds);
        if let Some(riverqueue) = &options.riverqueue {
            rivers.push(queue::river(riverqueue, options.queue_jobs, 128, 8).await?);
        }
        for (&(backend, workers, slots), runs) in shapes.iter().zip(&mut roadies) {
            runs.push(queue::roadie(backend, options.queue_jobs, workers, slots, 8).await?);
        }
    }
    println!(
        "\n## Queue: {} no-op jobs, insert to completion, 128 workers, 8 connections (median of {} rounds)\n",
        options.queue_jobs, options.rounds
    );
    println!(
        "| queue | jobs | enqueue s | work s | jobs/s | jobs/s, every round | vs river | start s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |");
    let river = median_of(&rivers, |r| r.throughput);
    match &river {
        Some(river) => queue_row(river, &rivers, None),
        None => println!("| river: not run (no --riverqueue binary) | | | | | | | |"),
    }
    for (&(backend, workers, _), runs) in shapes.iter().zip(&roadies) {
        let Some(roadie) = median_of(runs, |r| r.throughput) else {
            continue;
        };
        queue_row(&roadie, runs, river.as_ref());
        if let (Some(river), 1) = (&river, workers) {
            let ratio = roadie.throughput / river.throughput;
            let (goal, min) = match backend {
                Backend::Postgres => (">= 1.0", 1.0),
                Backend::Sqlite => (">= 0.5", 0.5),
            };
            results.target(
                format!("queue jobs/s, {} / river (postgres)", roadie.name),
                ratio,
                goal,
                ratio >= min,
            );
        }
    }
    results.queue.extend(rivers);
    results.queue.extend(roadies.into_iter().flatten());
    Ok(())
}

fn queue_row(report: &QueueReport, runs: &[QueueReport], river: Option<&QueueReport>) {
    let seconds = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.2}"));
    println!(
        "| {} | {} | {} | {:.2} | {:.0} | {} | {} | {} |",
        report.name,
        report.jobs,
        seconds(report.insert_seconds),
        report.work_seconds,
        report.throughput,
        every_round(runs, |r| r.throughput),
        river.map_or("1.00".to_owned(), |r| format!(
            "{:.2}",
            report.throughput / r.throughput
        )),
        seconds(report.start_seconds),
    );
}

/// Writes entries `from..to` straight into the SQLite table in one
/// statement: a million entries through `Put` would take longer than the
/// whole suite. The entries are what reads see (revision 0, no change rows,
/// no tags, never expiring).
async fn seed(url: &str, from: u64, to: u64) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    sqlx::query(include_str!("seed_entries.sql"))
        .bind(i64::try_from(from)?)
        .bind(i64::try_from(to)?)
        .bind(now_ms())
        .bind(i64::try_from(SCALE_VALUE_BYTES)?)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Get hits spread over every entry, as the entry count grows (SQLite).
async fn scale(options: &Options, results: &mut Results, closed: Load) -> anyhow::Result<()> {
    println!(
        "\n## Scale: Get hits spread over every entry (sqlite, {} B values)\n",
        SCALE_VALUE_BYTES
    );
    println!(
        "| entries | hot tier | calls/s | p50 ms | p99 ms | p99.9 ms | server RSS MiB | p99 vs smallest |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let db = processes::database(Backend::Sqlite).await?;
    let mut seeded = 0;
    let mut smallest: [Option<u64>; 2] = [None, None];
    for &entries in &options.scale {
        let started = std::time::Instant::now();
        seed(&db.url, seeded, entries).await?;
        eprintln!(
            "seeded {} entries in {:.1} s",
            entries - seeded,
            started.elapsed().as_secs_f64()
        );
        seeded = entries;
        let keys: Arc<Vec<String>> =
            Arc::new((0..entries).map(|i| format!("bench:scale:{i}")).collect());
        for (h, hot) in [true, false].into_iter().enumerate() {
            let mut setup = Setup::new(&db.url);
            setup.hot_tier = hot;
            // Room for every entry: no eviction at start.
            setup.generic_max_bytes = Some(entries * 2 * SCALE_VALUE_BYTES as u64 + (1 << 30));
            let server = processes::server(&setup).await?;
            let channels = targets::channels(&server.addr, options.channels).await?;
            let call = targets::get(channels, keys.clone(), pb::LookupStatus::Hit);
            let name = format!(
                "roadie Get hit, {entries} entries (sqlite, {})",
                hot_name(hot)
            );
            let report = load::run(name, call, closed).await;
            let rss = server.rss_bytes();
            server.stop().await;
            let base = *smallest[h].get_or_insert(report.p99_us);
            let ratio = report.p99_us as f64 / base as f64;
            println!(
                "| {entries} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {ratio:.2} |",
                if hot { "on" } else { "off" },
                report.throughput,
                Report::ms(report.p50_us),
                Report::ms(report.p99_us),
                Report::ms(report.p999_us),
                rss.map_or("-".to_owned(), |b| format!("{:.0}", b as f64 / 1048576.0)),
            );
            if let Some(error) = &report.first_error {
                println!("| first error: {error} | | | | | | | |");
            }
            if Some(&entries) == options.scale.last() && options.scale.len() > 1 {
                results.target(
                    format!(
                        "Get p99 at {entries} entries / at {} ({})",
                        options.scale[0],
                        hot_name(hot)
                    ),
                    ratio,
                    "<= 1.5",
                    ratio <= 1.5,
                );
            }
            results.scale.push(ScaleRow {
                entries,
                hot_tier: hot,
                report,
                server_rss_bytes: rss,
            });
        }
    }
    db.finish().await;
    Ok(())
}

/// Values of the scale runs: small, so a million entries is a realistic
/// metadata cache rather than a test of the disk.
const SCALE_VALUE_BYTES: usize = 256;

fn print_targets(results: &Results) {
    if results.targets.is_empty() {
        return;
    }
    println!("\n## Targets\n");
    println!("| target | measured | goal | met |");
    println!("| --- | ---: | --- | --- |");
    for t in &results.targets {
        println!(
            "| {} | {:.3} | {} | {} |",
            t.what,
            t.measured,
            t.goal,
            if t.met { "yes" } else { "**no**" }
        );
    }
}
