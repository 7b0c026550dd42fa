//! The worker's OpenTelemetry instruments (no-ops without a meter
//! provider): how long attempts take and how they end, and every upstream
//! request by provider and status code. What only the store knows (queue
//! depth, rate-limit waits, paused providers) the servers report.

use opentelemetry::{
    global,
    metrics::{Histogram, Meter},
};

fn meter() -> Meter {
    global::meter("roadie-worker")
}

/// Registers the worker's store pool (`db.client.connection.count`).
pub(crate) fn observe_pool(store: &roadie_store::Store) {
    let store = store.clone();
    roadie_telemetry::observe_pool(&meter(), move || {
        let pool = store.pool_usage();
        Some((store.backend().system_name(), pool.open, pool.idle))
    });
}

/// `roadie.job.duration`: one attempt, claim to result, by provider and
/// outcome (completed, retry, pushback, failed).
pub(crate) fn job_duration() -> Histogram<f64> {
    meter()
        .f64_histogram("roadie.job.duration")
        .with_description("Duration of one attempt at a job, by provider and outcome")
        .with_unit("ms")
        .with_boundaries(vec![
            1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
            30000.0,
        ])
        .build()
}

/// `http.client.request.duration` (OpenTelemetry's HTTP conventions, in
/// seconds): every upstream request by provider and status code (`0`: no
/// answer).
pub(crate) fn upstream_duration() -> Histogram<f64> {
    meter()
        .f64_histogram("http.client.request.duration")
        .with_description("Duration of upstream HTTP requests, by provider and status code")
        .with_unit("s")
        .with_boundaries(vec![
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        ])
        .build()
}
