//! The load loops: closed (a fixed number of callers, each calling again as
//! soon as its call returns) and open (calls sent on a timetable at a given
//! rate, whatever the answers do), with latency in an HDR histogram.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;
// tokio's clock, so the unit tests below can run on paused time.
use tokio::{task::JoinSet, time::Instant};

/// The future of one call; `Err` carries what went wrong, for the report.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One call of a load, given the caller's slot (0 to concurrency - 1) and
/// the caller's sequence number. Every target is driven through this same
/// shape, so the harness costs every target the same.
pub type Call = Arc<dyn Fn(usize, u64) -> CallFuture + Send + Sync>;

/// How long and how hard to drive a call.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Callers (closed loop), or the most calls in flight (open loop).
    pub concurrency: usize,
    /// Calls before this has passed are made but not recorded.
    pub warmup: Duration,
    /// How long calls are recorded.
    pub duration: Duration,
    /// Calls per second for an open loop; `None`: closed loop.
    pub rate: Option<f64>,
}

/// What one load measured. Latencies are in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was driven, e.g. `roadie get hit (sqlite, hot tier on)`.
    pub name: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Callers, or the cap on calls in flight.
    pub concurrency: usize,
    /// The open loop's target rate.
    pub rate: Option<f64>,
    /// Calls due while recording (successful, failed, or never sent).
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// The first failure, to tell what went wrong.
    pub first_error: Option<String>,
    /// Seconds recorded.
    pub seconds: f64,
    /// Successful calls per second.
    pub throughput: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest call.
    pub max_us: u64,
    /// Open loop: how far the generator fell behind its timetable at worst
    /// (a figure past a millisecond or two means the generator, not the
    /// target, set the pace).
    pub behind_max_us: Option<u64>,
}

impl Report {
    /// True when calls were answered and none failed: a load whose calls
    /// all hung or failed has no latency to meet a target with.
    pub fn clean(&self) -> bool {
        self.throughput > 0.0 && self.errors == 0
    }

    /// Milliseconds, for tables.
    pub fn ms(us: u64) -> f64 {
        us as f64 / 1000.0
    }
}

/// Latencies from 1 µs to 100 s at three significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default)]
struct Errors {
    count: u64,
    first: Option<String>,
    // Calls never sent (no free slot): counted, but with no latency to record.
    unsent: u64,
}

impl Errors {
    fn add(&mut self, error: String) {
        self.count += 1;
        self.first.get_or_insert(error);
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        self.unsent += other.unsent;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Drives `call` as `load` says and reports what it measured.
pub async fn run(name: impl Into<String>, call: Call, load: Load) -> Report {
    match load.rate {
        None => closed(name.into(), call, load).await,
        Some(rate) => open(name.into(), call, load, rate).await,
    }
}

async fn closed(name: String, call: Call, load: Load) -> Report {
    let from = Instant::now() + load.warmup;
    let until = from + load.duration;
    let mut callers = JoinSet::new();
    for slot in 0..load.concurrency {
        let call = call.clone();
        callers.spawn(async move {
            let mut latencies = histogram();
            let mut errors = Errors::default();
            let mut seq = 0;
            loop {
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                let result = call(slot, seq).await;
                seq += 1;
                if sent >= from {
                    latencies.saturating_record(micros(sent.elapsed()));
                    if let Err(error) = result {
                        errors.add(error);
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = histogram();
    let mut errors = Errors::default();
    for (caller, caller_errors) in callers.join_all().await {
        latencies
            .add(caller)
            .expect("histograms of the same bounds");
        errors.merge(caller_errors);
    }
    report(name, "closed", load, latencies, errors, None)
}

/// Calls go out on a timetable of `rate` per second; each is its own task,
/// so a slow answer never delays the next call. Latency runs from when the
/// call was sent; how far the sender fell behind the timetable is reported
/// beside it. A call due while `load.concurrency` are in flight is counted
/// as an error rather than queued (the target cannot keep up).
async fn open(name: String, call: Call, load: Load, rate: f64) -> Report {
    let start = Instant::now();
    let from = start + load.warmup;
    let until = from + load.duration;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let recorded = Arc::new(Mutex::new((histogram(), Errors::default())));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(load.concurrency));
    let mut behind_max = Duration::ZERO;
    let mut calls = JoinSet::new();
    let mut seq = 0u64;
    loop {
        let due = start + interval.mul_f64(seq as f64);
        if due >= until {
            break;
        }
        // A call already due goes at once: no timer for a moment that has passed.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let sent = Instant::now();
        if due >= from {
            behind_max = behind_max.max(sent.saturating_duration_since(due));
        }
        let permit = in_flight.clone().try_acquire_owned();
        let recorded = recorded.clone();
        let Ok(permit) = permit else {
            if due >= from {
                let mut recorded = recorded.lock().expect("not poisoned");
                recorded.1.unsent += 1;
                recorded.1.add(format!(
                    "{} calls in flight: target fell behind",
                    load.concurrency
                ));
            }
            seq += 1;
            continue;
        };
        let future = call(0, seq);
        calls.spawn(async move {
            let result = future.await;
            let latency = micros(sent.elapsed());
            drop(permit);
            if due >= from {
                let mut recorded = recorded.lock().expect("not poisoned");
                recorded.0.saturating_record(latency);
                if let Err(error) = result {
                    recorded.1.add(error);
                }
            }
        });
        // Reap finished tasks so the set stays as small as what is in flight.
        while calls.try_join_next().is_some() {}
        seq += 1;
    }
    while calls.join_next().await.is_some() {}
    let (latencies, errors) = std::mem::replace(
        &mut *recorded.lock().expect("not poisoned"),
        (histogram(), Errors::default()),
    );
    report(
        name,
        "open",
        load,
        latencies,
        errors,
        Some(micros(behind_max)),
    )
}

fn report(
    name: String,
    mode: &'static str,
    load: Load,
    latencies: Histogram<u64>,
    errors: Errors,
    behind_max_us: Option<u64>,
) -> Report {
    let seconds = load.duration.as_secs_f64();
    let calls = latencies.len() + errors.unsent;
    Report {
        name,
        mode,
        concurrency: load.concurrency,
        rate: load.rate,
        calls,
        errors: errors.count,
        first_error: errors.first,
        seconds,
        throughput: calls.saturating_sub(errors.count) as f64 / seconds,
        p50_us: latencies.value_at_quantile(0.50),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
        max_us: latencies.max(),
        behind_max_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(latency: Duration) -> Call {
        Arc::new(move |_, seq| {
            Box::pin(async move {
                tokio::time::sleep(latency).await;
                if seq % 10 == 9 {
                    Err("every tenth call fails".to_owned())
                } else {
                    Ok(())
                }
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_loop_counts_calls_latency_and_errors() {
        let load = Load {
            concurrency: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_secs(1),
            rate: None,
        };
        let report = run("sleep", sleeper(Duration::from_millis(10)), load).await;
        // 4 callers, 10 ms a call, 1 s recorded: 100 calls each.
        assert_eq!(report.calls, 400);
        assert_eq!(report.errors, 40);
        assert_eq!(
            report.first_error.as_deref(),
            Some("every tenth call fails")
        );
        assert!((report.throughput - 360.0).abs() < 1e-9, "{report:?}");
        assert!(
            (10_000..10_100).contains(&report.p50_us),
            "{}",
            report.p50_us
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_keeps_its_rate_and_caps_what_is_in_flight() {
        let load = Load {
            concurrency: 1000,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
            rate: Some(100.0),
        };
        // Slower than the interval: a closed loop of one would make 20 calls.
        let report = run("slow", sleeper(Duration::from_millis(50)), load).await;
        assert_eq!(report.calls, 200);
        assert_eq!(report.errors, 20);

        let tight = Load {
            concurrency: 2,
            ..load
        };
        let report = run("slow", sleeper(Duration::from_millis(50)), tight).await;
        assert_eq!(report.calls, 200, "every due call is counted");
        // Two slots of 50 ms calls take at most 80 of the 200; the rest find no slot.
        assert!(report.errors >= 120, "most found no free slot: {report:?}");
        assert!(
            report.p50_us >= 50_000,
            "unsent calls have no latency: {report:?}"
        );
        assert!(
            report
                .first_error
                .as_deref()
                .is_some_and(|e| e.contains("in flight")),
            "{report:?}"
        );
    }
}
