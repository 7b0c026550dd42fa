//! How well the shared rate limit is used and kept, with 1, 2 and 4 real
//! `roadie-worker` processes against a loopback upstream, on SQLite and (when
//! reachable) Postgres. Not a test: it prints figures.
//!
//! Run: `cargo bench -p roadie-worker --bench rate_limit`
//! (Postgres from `ROADIE_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`.)

use std::{
    net::Ipv4Addr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, extract::State};
use roadie_store::{Backend, JobNew, JobState, now_ms, testing::TestDb};

const RATE: f64 = 4.0;
const JOBS: usize = 40;

#[tokio::main]
async fn main() {
    println!("rate limit: {JOBS} jobs per run, provider at {RATE} requests/s, burst 1");
    println!(
        "{:<9} {:>7} {:>10} {:>17} {:>11}",
        "backend", "workers", "elapsed", "achieved/limit", "violations"
    );
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for workers in [1, 2, 4] {
            let Some(db) = TestDb::new(backend).await else {
                println!("{:<9} skipped: unreachable", backend.name());
                break;
            };
            run(&db, backend, workers).await;
            db.finish().await;
        }
    }
    println!("violations: one-second windows holding more than {RATE} requests");
    println!("reproduce: cargo bench -p roadie-worker --bench rate_limit");
}

async fn run(db: &TestDb, backend: Backend, workers: usize) {
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let app = Router::new()
        .fallback(
            |State(arrivals): State<Arc<Mutex<Vec<Instant>>>>| async move {
                arrivals.lock().expect("arrivals").push(Instant::now());
                "{}"
            },
        )
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let store = db.store().await;
    for i in 0..JOBS {
        let job = JobNew {
            provider: "bench".to_owned(),
            url: format!("http://{addr}/api/item/{i}"),
            policy: "api_metadata".to_owned(),
            tags: vec![],
            priority: 2,
            max_attempts: 3,
            traceparent: None,
            now: now_ms(),
        };
        store.job_enqueue(&job).await.expect("enqueue");
    }
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..workers {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_roadie-worker"))
            .env_clear()
            .env("ROADIE__STORE__URL", &db.url)
            .env("ROADIE__WORKER__POLL_INTERVAL", "100ms")
            .env(
                "ROADIE__PROVIDERS__BENCH__BASE_URL",
                format!("http://{addr}/api/"),
            )
            .env("ROADIE__PROVIDERS__BENCH__ALLOW_PRIVATE", "true")
            .env(
                "ROADIE__PROVIDERS__BENCH__RATE_PER_SECOND",
                RATE.to_string(),
            )
            .env("ROADIE__PROVIDERS__BENCH__BURST", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start roadie-worker");
        children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = store
            .job_list(Some(JobState::Completed), Some("bench"), u64::MAX, 1000)
            .await
            .expect("list")
            .len();
        if done == JOBS || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    drop(children);
    store.close().await;

    let mut times = arrivals.lock().expect("arrivals").clone();
    times.sort();
    let span = times
        .last()
        .zip(times.first())
        .map_or(0.0, |(l, f)| l.duration_since(*f).as_secs_f64());
    let achieved = if span > 0.0 {
        (times.len() - 1) as f64 / span / RATE
    } else {
        0.0
    };
    let window = RATE as usize;
    let violations = (0..times.len().saturating_sub(window))
        .filter(|&i| times[i + window].duration_since(times[i]) < Duration::from_secs(1))
        .count();
    println!(
        "{:<9} {:>7} {:>9.1}s {:>16.3} {:>11}",
        backend.name(),
        workers,
        elapsed.as_secs_f64(),
        achieved,
        violations
    );
}
