//! `Cache.Fetch` end to end: a scripted upstream on 127.0.0.1, a real
//! worker, and servers in this process or as separate processes.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::Path, extract::State, http::StatusCode, routing};
use roadie_client::{
    ClientError,
    proto::{
        ChangeKind, FetchMode, FetchRequest, FetchResponse, JobState, LookupStatus, WatchRequest,
    },
};
use roadie_config::Settings;
use roadie_providers::{Provider, ProviderPolicy};
use roadie_store::{Backend, Store, now_ms, testing::TestDb};
use roadie_worker::{
    fetcher::Fetcher,
    runner::{Worker, WorkerOptions},
};
use tokio_util::sync::CancellationToken;

use crate::common::{TestServer, get, on_both_backends, secs, stored};

/// Counts requests per path.
#[derive(Default)]
pub(crate) struct Upstream {
    seen: Mutex<HashMap<String, u32>>,
    total: AtomicU32,
}

impl Upstream {
    /// Requests of every path.
    pub(crate) fn total(&self) -> u32 {
        self.total.load(Ordering::SeqCst)
    }

    pub(crate) fn count(&self, path: &str) -> u32 {
        self.seen
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

pub(crate) async fn upstream() -> (SocketAddr, Arc<Upstream>) {
    let state = Arc::new(Upstream::default());
    let app = Router::new()
        .route(
            "/api/item/{id}",
            routing::get(
                |State(u): State<Arc<Upstream>>, Path(id): Path<String>| async move {
                    u.total.fetch_add(1, Ordering::SeqCst);
                    *u.seen
                        .lock()
                        .expect("lock")
                        .entry(format!("/api/item/{id}"))
                        .or_default() += 1;
                    // Slow enough that concurrent callers overlap with the job.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    format!("item {id}")
                },
            ),
        )
        .route(
            "/api/missing",
            routing::get(|| async { StatusCode::NOT_FOUND }),
        )
        .route(
            "/api/broken",
            routing::get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/api/slow",
            routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "slow"
            }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, state)
}

/// The server's view of the upstream: a provider "test" allowed on loopback.
pub(crate) fn with_provider(addr: SocketAddr) -> impl FnOnce(&mut Settings) {
    move |s| {
        let provider = roadie_config::Provider {
            base_url: format!("http://{addr}/api/"),
            allow_private: true,
            ..Default::default()
        };
        s.providers.insert("test".to_owned(), provider);
        let private = roadie_config::Provider {
            base_url: "http://127.0.0.1:9/".to_owned(),
            ..Default::default()
        };
        s.providers.insert("private".to_owned(), private);
    }
}

pub(crate) type RunningWorker = (
    CancellationToken,
    tokio::task::JoinHandle<roadie_worker::runner::Report>,
);

/// A worker for provider "test", running until the token is cancelled.
pub(crate) fn start_worker(store: Store, addr: SocketAddr) -> RunningWorker {
    start_worker_polling(store, addr, Duration::from_millis(20))
}

/// The same, looking for work every `poll` when not woken.
fn start_worker_polling(store: Store, addr: SocketAddr, poll: Duration) -> RunningWorker {
    start_worker_with(
        store,
        addr,
        poll,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
}

/// A worker whose fetched entries live `success_ttl`, and whose failed
/// lookups live `failed_lookup_ttl`.
fn start_worker_with(
    store: Store,
    addr: SocketAddr,
    poll: Duration,
    success_ttl: Duration,
    failed_lookup_ttl: Duration,
) -> RunningWorker {
    let (worker, stop) = worker_for(store, addr, poll, success_ttl, failed_lookup_ttl);
    (stop.clone(), tokio::spawn(worker.run(stop)))
}

/// The worker of [`start_worker_with`], not yet running, and its stop.
fn worker_for(
    store: Store,
    addr: SocketAddr,
    poll: Duration,
    success_ttl: Duration,
    failed_lookup_ttl: Duration,
) -> (Worker, CancellationToken) {
    let mut policy = ProviderPolicy::new(
        "test",
        url::Url::parse(&format!("http://{addr}/api/")).expect("url"),
    );
    policy.allow_private = true;
    let provider = Provider {
        policy,
        success_ttl,
        negative_ttl: Duration::from_secs(60),
        rate: None,
    };
    let mut options = WorkerOptions::new(format!("e2e-{}", rand_suffix()));
    options.poll_interval = poll;
    options.failed_lookup_ttl = failed_lookup_ttl;
    options.lease = Duration::from_secs(5);
    options.heartbeat = Duration::from_secs(1);
    let worker = Worker::new(
        store,
        Fetcher::new("roadie-e2e").expect("fetcher"),
        HashMap::from([("test".to_owned(), provider)]),
        options,
    );
    (worker, CancellationToken::new())
}

fn rand_suffix() -> u32 {
    std::process::id() ^ (now_ms() as u32)
}

pub(crate) fn fetch(path: &str, mode: FetchMode) -> FetchRequest {
    FetchRequest {
        provider: "test".to_owned(),
        path: path.to_owned(),
        mode: mode as i32,
        ..Default::default()
    }
}

fn status(r: &FetchResponse) -> LookupStatus {
    LookupStatus::try_from(r.status).expect("status")
}

async fn modes_staleness_and_outcomes(backend: Backend) {
    let (addr, up) = upstream().await;
    let Some(server) = TestServer::start(backend, with_provider(addr)).await else {
        return;
    };
    let c = &server.client;

    // Background: the handle at once; a second caller shares the job.
    let first = c
        .fetch(fetch("item/1", FetchMode::Background))
        .await
        .expect("fetch");
    assert_eq!(status(&first), LookupStatus::Miss);
    let job = first.job.clone().expect("job");
    assert_eq!(
        (job.priority, job.state, first.job_shared),
        (2, JobState::Available as i32, false)
    );
    assert_eq!(job.url, format!("http://{addr}/api/item/1"));
    let second = c
        .fetch(fetch("item/1", FetchMode::Background))
        .await
        .expect("fetch");
    assert_eq!(
        (second.job.expect("job").id, second.job_shared),
        (job.id, true)
    );

    let (stop, worker) = start_worker(server.store().clone(), addr);
    // Wait: the entry once the job completes.
    let waited = c
        .fetch(fetch("item/1", FetchMode::Wait))
        .await
        .expect("fetch");
    assert_eq!(status(&waited), LookupStatus::Hit, "{waited:?}");
    assert_eq!(waited.entry.expect("entry").value.as_ref(), b"item 1");
    let waited = c
        .fetch(fetch("item/2", FetchMode::Wait))
        .await
        .expect("fetch");
    assert_eq!(status(&waited), LookupStatus::Hit);
    assert_eq!(waited.job.expect("job").state, JobState::Completed as i32);
    // Fresh: answered from the cache, no job, no request.
    let cached = c
        .fetch(fetch("item/1", FetchMode::Wait))
        .await
        .expect("fetch");
    assert_eq!(
        (status(&cached), cached.job.is_none()),
        (LookupStatus::Hit, true)
    );
    assert_eq!(up.count("/api/item/1"), 1);

    // Stale within the caller's window: answered at once, refreshed behind.
    let url = format!("http://{addr}/api/item/3");
    server
        .store()
        .entry_put(&stored(&url, Some(now_ms() - 5_000), false))
        .await
        .expect("put");
    // The refresh is seen on the Watch, opened before it can happen.
    let mut stub = crate::watch::stub(server.addr).await;
    let (mut changes, _) = crate::watch::open(
        &mut stub,
        WatchRequest {
            key_prefix: url.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut stale = fetch("item/3", FetchMode::Wait);
    stale.max_stale = Some(secs(60));
    let answer = c.fetch(stale).await.expect("fetch");
    assert_eq!(status(&answer), LookupStatus::Stale);
    assert_eq!(answer.entry.expect("entry").value.as_ref(), b"old");
    let refresh = answer.job.expect("a background refresh");
    assert_eq!(refresh.priority, 2);
    let refreshed = crate::watch::next_change(&mut changes).await;
    assert_eq!(
        (refreshed.key.as_str(), refreshed.kind),
        (url.as_str(), ChangeKind::Fetch as i32)
    );
    let now = c.get(get(&url)).await.expect("get");
    assert_eq!(now.status(), LookupStatus::Hit);
    assert_eq!(now.entry.expect("entry").value.as_ref(), b"item 3");

    // A 404 upstream: a negative answer.
    let missing = c
        .fetch(fetch("missing", FetchMode::Wait))
        .await
        .expect("fetch");
    assert_eq!(status(&missing), LookupStatus::Negative);

    stop.cancel();
    worker.await.expect("worker");
    server.stop().await;
}

async fn waiting_answers_with_the_job_before_the_deadline(backend: Backend) {
    let (addr, _up) = upstream().await;
    let Some(server) = TestServer::start(backend, with_provider(addr)).await else {
        return;
    };
    // No worker runs: the job cannot complete in time.
    let client = server
        .client
        .clone()
        .with_request_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let answer = client
        .fetch(fetch("item/9", FetchMode::Wait))
        .await
        .expect("an answer, not DEADLINE_EXCEEDED");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited for most of the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(status(&answer), LookupStatus::Miss);
    let job = answer.job.expect("the job's handle");
    assert_eq!((job.priority, job.state), (1, JobState::Available as i32));
    server.stop().await;
}

async fn refusals_say_why(backend: Backend) {
    let (addr, up) = upstream().await;
    let Some(server) = TestServer::start(backend, with_provider(addr)).await else {
        return;
    };
    let c = &server.client;
    let field =
        |r: Result<FetchResponse, ClientError>| r.err().and_then(|e| e.field().map(str::to_owned));
    let mut unknown = fetch("item/1", FetchMode::Wait);
    unknown.provider = "nowhere".to_owned();
    assert_eq!(field(c.fetch(unknown).await).as_deref(), Some("provider"));
    // Off by default (no CDN named): the answer says how to turn it on.
    let mut images = fetch("x.jpg", FetchMode::Wait);
    images.provider = "images".to_owned();
    let off = c.fetch(images).await.expect_err("images is off");
    assert_eq!(off.field(), Some("provider"), "{off}");
    assert!(
        off.to_string().contains("set providers.images.base_url"),
        "{off}"
    );
    assert_eq!(
        field(
            c.fetch(fetch("http://elsewhere.example/api/x", FetchMode::Wait))
                .await
        )
        .as_deref(),
        Some("path")
    );
    assert_eq!(
        field(c.fetch(fetch("../../etc/passwd", FetchMode::Wait)).await).as_deref(),
        Some("path")
    );
    assert_eq!(
        field(c.fetch(fetch("", FetchMode::Wait)).await).as_deref(),
        Some("path")
    );
    let mut urgent = fetch("item/1", FetchMode::Background);
    urgent.priority = 1;
    assert_eq!(field(c.fetch(urgent).await).as_deref(), Some("priority"));
    let mut private = fetch("x", FetchMode::Background);
    private.provider = "private".to_owned();
    let denied = c.fetch(private).await;
    assert!(
        matches!(denied, Err(ClientError::PermissionDenied(ref m)) if m.contains("127.0.0.1")),
        "{denied:?}"
    );
    assert_eq!(up.total.load(Ordering::SeqCst), 0);
    assert!(
        server
            .store()
            .job_list(None, None, u64::MAX, 10)
            .await
            .expect("list")
            .is_empty(),
        "nothing enqueued"
    );
    server.stop().await;
}

/// On Postgres an idle worker is woken by the server's NOTIFY, not its poll:
/// with a 30 s poll, a waiting Fetch still completes in well under a second
/// of work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_workers_wake_on_notify() {
    let (addr, _up) = upstream().await;
    let Some(server) = TestServer::start(Backend::Postgres, with_provider(addr)).await else {
        return;
    };
    let (worker, stop) = worker_for(
        server.store().clone(),
        addr,
        Duration::from_secs(30),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    // The worker claims once at start, and once more when its LISTEN is up
    // (the store's listener says so): after that second, empty round it is
    // idle and listening.
    let mut rounds = worker.claim_rounds();
    let worker = tokio::spawn(worker.run(stop.clone()));
    rounds.wait_for(|&n| n >= 2).await.expect("the worker runs");
    let started = Instant::now();
    let answer = server
        .client
        .fetch(fetch("item/notify", FetchMode::Wait))
        .await
        .expect("fetch");
    assert_eq!(status(&answer), LookupStatus::Hit);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "woken by NOTIFY, not the 30 s poll: {:?}",
        started.elapsed()
    );
    stop.cancel();
    worker.await.expect("worker");
    server.stop().await;
}

/// A server hears finished jobs and other processes' commits on one LISTEN
/// connection: Postgres wakes every listening connection of the database
/// at each notifying commit, whatever its channels, so each one more is a
/// backend woken by every Put batch and every worker's finish.
#[tokio::test]
async fn postgres_a_server_listens_on_one_connection() {
    use sqlx::Connection as _;
    let Some(server) = TestServer::start(Backend::Postgres, |_| {}).await else {
        return;
    };
    let url = &server.db.as_ref().expect("the server's database").url;
    let mut conn = sqlx::postgres::PgConnection::connect(url)
        .await
        .expect("connect");
    // The listener connects as the server opens, its LISTEN the last query
    // its backend ran.
    let listening = "SELECT query FROM pg_stat_activity \
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    let deadline = Instant::now() + Duration::from_secs(10);
    let queries = loop {
        let queries: Vec<String> = sqlx::query_scalar(listening)
            .fetch_all(&mut conn)
            .await
            .expect("read pg_stat_activity");
        let both = queries
            .iter()
            .any(|q| q.contains("roadie_jobs") && q.contains("roadie_changes"));
        if both || Instant::now() > deadline {
            break queries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        queries.len(),
        1,
        "one connection listening to both channels: {queries:?}"
    );
    assert!(
        queries[0].contains("roadie_jobs") && queries[0].contains("roadie_changes"),
        "{queries:?}"
    );
    conn.close().await.expect("close");
    server.stop().await;
}

/// A `roadie-server` process on `db`, killed when dropped.
pub(crate) struct ServerProcess {
    // Held so the process lives as long as this value (killed on drop).
    _child: tokio::process::Child,
    pub(crate) addr: String,
}

impl ServerProcess {
    pub(crate) async fn start(db_url: &str, upstream: SocketAddr) -> ServerProcess {
        let port = crate::process::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = tokio::process::Command::new(crate::process::BINARY)
            .current_dir(dir.path())
            .env("ROADIE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("ROADIE__STORE__URL", db_url)
            .env(
                "ROADIE__PROVIDERS__TEST__BASE_URL",
                format!("http://{upstream}/api/"),
            )
            .env("ROADIE__PROVIDERS__TEST__ALLOW_PRIVATE", "true")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn roadie-server");
        let addr = format!("127.0.0.1:{port}");
        crate::process::wait_until_serving(&addr).await;
        ServerProcess {
            _child: child,
            addr,
        }
    }
}

async fn fifty_callers_through_two_servers_make_one_request(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (addr, up) = upstream().await;
    let store = db.store().await;
    let a = ServerProcess::start(&db.url, addr).await;
    let b = ServerProcess::start(&db.url, addr).await;
    let (stop, worker) = start_worker(store.clone(), addr);
    let mut calls = Vec::new();
    for i in 0..50 {
        let target = if i % 2 == 0 { &a.addr } else { &b.addr };
        let url = format!("http://{target}");
        calls.push(tokio::spawn(async move {
            let client = roadie_client::connect(url, Duration::from_secs(5))
                .await
                .expect("connect");
            client
                .with_request_timeout(Duration::from_secs(20))
                .fetch(fetch("item/shared", FetchMode::Wait))
                .await
        }));
    }
    let mut shared = 0;
    for call in calls {
        let answer = call.await.expect("task").expect("fetch");
        assert_eq!(status(&answer), LookupStatus::Hit, "{answer:?}");
        assert_eq!(answer.entry.expect("entry").value.as_ref(), b"item shared");
        shared += usize::from(answer.job_shared);
    }
    assert_eq!(
        up.count("/api/item/shared"),
        1,
        "exactly one upstream request"
    );
    assert!(
        shared >= 1,
        "callers that arrived while the job ran shared it"
    );
    stop.cancel();
    worker.await.expect("worker");
    drop((a, b));
    store.close().await;
    db.finish().await;
}

async fn the_cli_fetches(backend: Backend) {
    use clap::Parser;
    use roadie_client::cli::{self, Cli, Exit};
    let (addr, _up) = upstream().await;
    let Some(server) = TestServer::start(backend, with_provider(addr)).await else {
        return;
    };
    let run = |args: Vec<String>| async move {
        let cli = Cli::try_parse_from(args).expect("command line");
        let mut out = Vec::new();
        let exit = cli::run(cli, &mut &b""[..], &mut out, &mut Vec::new()).await;
        (exit, String::from_utf8_lossy(&out).into_owned())
    };
    let base = [
        "roadie".to_owned(),
        "--server".to_owned(),
        format!("http://{}", server.addr),
    ];
    let with = |rest: &[&str]| {
        base.iter()
            .cloned()
            .chain(rest.iter().map(|s| (*s).to_owned()))
            .collect::<Vec<_>>()
    };
    let (exit, out) = run(with(&["fetch", "test", "item/5", "--background"])).await;
    assert_eq!(exit, Exit::Miss, "{out}");
    assert!(out.contains("job:"), "{out}");
    let (stop, worker) = start_worker(server.store().clone(), addr);
    let (exit, out) = run(with(&["--json", "fetch", "test", "item/5"])).await;
    assert_eq!(exit, Exit::Success, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["entry"]["value"], "item 5", "{json}");
    stop.cancel();
    worker.await.expect("worker");
    server.stop().await;
}

async fn stats_show_each_providers_budget(backend: Backend) {
    let (addr, _up) = upstream().await;
    let Some(server) = TestServer::start(backend, with_provider(addr)).await else {
        return;
    };
    let c = &server.client;
    for i in 0..3 {
        c.fetch(fetch(&format!("item/s{i}"), FetchMode::Background))
            .await
            .expect("fetch");
    }
    // A worker at the provider's configured rate (1/s, burst 1) claims one.
    let rates = roadie_store::Rates::from([("test".to_owned(), roadie_store::Rate::new(1.0, 1))]);
    let now = now_ms();
    let claim = server
        .store()
        .job_claim_within("w", 8, now + 30_000, now, &rates)
        .await
        .expect("claim");
    assert_eq!(claim.jobs.len(), 1);
    let stats = c
        .stats(roadie_client::proto::StatsRequest {})
        .await
        .expect("stats");
    let test = stats
        .providers
        .iter()
        .find(|p| p.provider == "test")
        .expect("a row per configured provider");
    assert_eq!((test.rate_per_second, test.backlog), (1.0, 2));
    let next = test.next_request_at.as_ref().expect("next request time");
    let next_ms = next.seconds * 1000 + i64::from(next.nanos) / 1_000_000;
    assert!(
        next_ms >= now + 900,
        "the next request waits for budget: {}",
        next_ms - now
    );
    let musicbrainz = stats
        .providers
        .iter()
        .find(|p| p.provider == "musicbrainz")
        .expect("defaults listed");
    assert_eq!((musicbrainz.rate_per_second, musicbrainz.backlog), (1.0, 0));
    server.stop().await;
}

/// A fetched entry's lifetime starts when its answer arrives: a slow
/// upstream (1.5 s) with a short TTL (1 s) still gives the waiting caller a
/// fresh HIT, not an entry that expired before it was written. A lookup that
/// failed for good under a `0s` failed_lookup TTL never expires.
async fn lifetimes_start_at_the_answer_and_zero_never_expires(backend: Backend) {
    let (addr, _up) = upstream().await;
    let Some(server) = TestServer::start(backend, |s| {
        with_provider(addr)(s);
        s.jobs.max_attempts = 1;
    })
    .await
    else {
        return;
    };
    let (stop, worker) = start_worker_with(
        server.store().clone(),
        addr,
        Duration::from_millis(20),
        Duration::from_secs(1),
        Duration::ZERO,
    );
    let c = server
        .client
        .clone()
        .with_request_timeout(Duration::from_secs(20));
    let slow = c
        .fetch(fetch("slow", FetchMode::Wait))
        .await
        .expect("fetch");
    assert_eq!(status(&slow), LookupStatus::Hit, "{slow:?}");
    let entry = slow.entry.expect("entry");
    let (updated, expires) = (
        entry.updated_at.expect("updated_at").seconds,
        entry.expires_at.expect("expires_at").seconds,
    );
    assert!(
        expires - updated <= 1,
        "the TTL runs from the write: {updated} -> {expires}"
    );

    let broken = c
        .fetch(fetch("broken", FetchMode::Wait))
        .await
        .expect("fetch");
    assert_eq!(status(&broken), LookupStatus::Negative, "{broken:?}");
    let entry = broken.entry.expect("entry");
    assert_eq!(entry.policy, "failed_lookup");
    assert!(entry.expires_at.is_none(), "0s never expires: {entry:?}");
    stop.cancel();
    worker.await.expect("worker");
    server.stop().await;
}

/// A waiting Fetch still open when the server stops is told so, with the
/// job that goes on, at once rather than at the end of the grace period.
async fn a_waiting_fetch_at_shutdown_names_its_job(backend: Backend) {
    let (addr, _up) = upstream().await;
    let Some(server) = TestServer::start(backend, with_provider(addr)).await else {
        return;
    };
    // No worker: the job waits.
    let client = server.client.clone();
    let waiting =
        tokio::spawn(async move { client.fetch(fetch("item/shutdown", FetchMode::Wait)).await });
    let store = server.store().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let job = loop {
        let jobs = store
            .job_list(None, Some("test"), u64::MAX, 10)
            .await
            .expect("list");
        if let Some(job) = jobs.into_iter().next() {
            break job;
        }
        assert!(Instant::now() < deadline, "the Fetch enqueued no job");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stopped_at = Instant::now();
    server.stop().await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(2),
        "the waiting Fetch held the drain for {:?}",
        stopped_at.elapsed()
    );
    let error = waiting
        .await
        .expect("task")
        .expect_err("no worker ran the job");
    assert_eq!(error.code(), Some(tonic::Code::Unavailable), "{error}");
    let message = error.to_string();
    assert!(message.contains("shutting down"), "{message}");
    assert!(message.contains(&format!("job {}", job.id)), "{message}");
}

on_both_backends!(
    lifetimes_start_at_the_answer_and_zero_never_expires,
    a_waiting_fetch_at_shutdown_names_its_job,
    stats_show_each_providers_budget,
    the_cli_fetches,
    modes_staleness_and_outcomes,
    waiting_answers_with_the_job_before_the_deadline,
    refusals_say_why,
    fifty_callers_through_two_servers_make_one_request,
);
