//! `roadie-bench`: `suite` runs every comparison; `load` drives one
//! scenario against a running server; `empty-server` is the stack's limit.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};
use roadie_bench::{
    load::{self, Load},
    suite, targets,
};
use roadie_proto::v1 as pb;

/// Roadie's load generator and side-by-side benchmarks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every comparison of BENCHMARKS.md, in one run.
    Suite(suite::Options),
    /// One scenario against a running roadie-server (or the empty service).
    Load {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// What to call.
        #[arg(long, value_enum, default_value = "get-hit")]
        scenario: Scenario,
        /// Concurrent calls (closed loop) or most in flight (open loop).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Connections they share.
        #[arg(long, default_value_t = 4)]
        channels: usize,
        /// Calls per second: an open loop; without it, a closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// Unrecorded time first.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Recorded time.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Keys written first and read (get-hit, batch-get, mixed).
        #[arg(long, default_value_t = 1000)]
        keys: usize,
        /// Bytes of every value written.
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
        /// Provider for fetch-cold (its upstream must answer `item/...`).
        #[arg(long, default_value = "bench")]
        provider: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The empty tonic service: `roadie.v1.Cache/Get` answering one fixed entry.
    EmptyServer {
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:50061")]
        listen: SocketAddr,
        /// Bytes of the entry's value.
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Scenario {
    GetHit,
    GetMiss,
    BatchGet,
    Put,
    FetchCold,
    Mixed,
    /// `Put` of new keys against etcd's gRPC API (`--addr` an etcd client URL's host:port).
    EtcdPut,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Suite(options) => {
            suite::run(&options).await?;
        }
        Command::Load {
            addr,
            scenario,
            concurrency,
            channels,
            rate,
            warmup,
            duration,
            keys,
            value_bytes,
            provider,
            json,
        } => {
            let ch = targets::channels(&addr, channels).await?;
            let value = bytes::Bytes::from(vec![b'x'; value_bytes]);
            let keys = targets::hot_keys(keys);
            let run = std::process::id().to_string();
            let call = match scenario {
                Scenario::GetHit => {
                    targets::put_all(&ch, &keys, &value).await?;
                    targets::get(ch, keys, pb::LookupStatus::Hit)
                }
                Scenario::GetMiss => targets::get_miss(ch),
                Scenario::BatchGet => {
                    targets::put_all(&ch, &keys, &value).await?;
                    targets::batch_get(ch, keys, 16)
                }
                Scenario::Put => targets::put(ch, value),
                Scenario::FetchCold => targets::fetch_cold(ch, provider, run),
                Scenario::Mixed => {
                    targets::put_all(&ch, &keys, &value).await?;
                    targets::mixed(ch, keys, value)
                }
                Scenario::EtcdPut => roadie_bench::etcd::put(ch, value),
            };
            let load = Load {
                concurrency,
                warmup,
                duration,
                rate,
            };
            let report = load::run(format!("{scenario:?} against {addr}"), call, load).await;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{}: {:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, {} errors{}",
                    report.name,
                    report.throughput,
                    load::Report::ms(report.p50_us),
                    load::Report::ms(report.p99_us),
                    load::Report::ms(report.p999_us),
                    load::Report::ms(report.max_us),
                    report.errors,
                    report
                        .first_error
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                );
            }
        }
        Command::EmptyServer {
            listen,
            value_bytes,
        } => roadie_bench::empty::serve(listen, value_bytes).await?,
    }
    Ok(())
}
