//! The claim loop against a real store (SQLite and Postgres, a fresh
//! database each) and a scripted HTTP upstream on 127.0.0.1: each outcome
//! becomes the job state and cache entry the design promises.

#![allow(missing_docs)]

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use roadie_providers::{Provider, ProviderPolicy};
use roadie_store::{Backend, Job, JobNew, JobState, Store, now_ms, testing::TestDb};
use roadie_worker::{
    fetcher::Fetcher,
    runner::{Worker, WorkerOptions},
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use url::Url;

/// Requests per path, and a switch that makes `/flip` fail until set.
#[derive(Default)]
struct Counts {
    ok: AtomicU32,
    throttle: AtomicU32,
    flaky: AtomicU32,
    revalidate_304: AtomicU32,
    unavailable: AtomicU32,
}

/// Serves `app` on a free port of 127.0.0.1 until the test ends.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn upstream() -> (SocketAddr, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let app = Router::new()
        .route(
            "/api/ok",
            get(|State(c): State<Arc<Counts>>| async move {
                c.ok.fetch_add(1, Ordering::SeqCst);
                (
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::ETAG, "\"v1\""),
                    ],
                    "{\"ok\":true}",
                )
            }),
        )
        .route("/api/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/api/flaky",
            get(|State(c): State<Arc<Counts>>| async move {
                c.flaky.fetch_add(1, Ordering::SeqCst);
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .route(
            "/api/throttle",
            get(|State(c): State<Arc<Counts>>| async move {
                if c.throttle.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "1")],
                        "slow down",
                    )
                        .into_response()
                } else {
                    (StatusCode::OK, "finally").into_response()
                }
            }),
        )
        .route("/api/bad", get(|| async { StatusCode::BAD_REQUEST }))
        .route("/api/huge", get(|| async { "x".repeat(64 * 1024) }))
        .route(
            "/api/unavailable",
            get(|State(c): State<Arc<Counts>>| async move {
                if c.unavailable.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Retry-After as an HTTP-date, two seconds ahead.
                    let at = httpdate::fmt_http_date(
                        std::time::SystemTime::now() + Duration::from_secs(2),
                    );
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, at)],
                        "",
                    )
                        .into_response()
                } else {
                    (StatusCode::OK, "back").into_response()
                }
            }),
        )
        .route(
            "/api/revalidate",
            get(
                |State(c): State<Arc<Counts>>, headers: HeaderMap| async move {
                    if headers
                        .get(header::IF_NONE_MATCH)
                        .is_some_and(|v| v == "\"r1\"")
                    {
                        c.revalidate_304.fetch_add(1, Ordering::SeqCst);
                        StatusCode::NOT_MODIFIED.into_response()
                    } else {
                        ([(header::ETAG, "\"r1\"")], "body").into_response()
                    }
                },
            ),
        )
        .with_state(counts.clone());
    let addr = serve(app).await;
    (addr, counts)
}

fn worker(store: Store, addr: SocketAddr, id: &str, grace: Duration) -> Worker {
    worker_options(store, addr, id, grace, 4)
}

fn worker_with(store: Store, addr: SocketAddr, id: &str, concurrency: u32) -> Worker {
    worker_options(store, addr, id, Duration::from_secs(5), concurrency)
}

fn worker_options(
    store: Store,
    addr: SocketAddr,
    id: &str,
    grace: Duration,
    concurrency: u32,
) -> Worker {
    worker_polling(
        store,
        addr,
        id,
        grace,
        concurrency,
        Duration::from_millis(20),
    )
}

fn worker_polling(
    store: Store,
    addr: SocketAddr,
    id: &str,
    grace: Duration,
    concurrency: u32,
    poll_interval: Duration,
) -> Worker {
    let mut policy = ProviderPolicy::new(
        "test",
        Url::parse(&format!("http://{addr}/api/")).expect("url"),
    );
    policy.allow_private = true;
    policy.timeout = Duration::from_secs(5);
    policy.max_body_bytes = 16 * 1024;
    let provider = Provider {
        policy,
        success_ttl: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(60),
        rate: None,
    };
    let mut options = WorkerOptions::new(format!("test-worker-{id}"));
    options.concurrency = concurrency;
    options.lease = Duration::from_secs(5);
    options.heartbeat = Duration::from_millis(500);
    options.poll_interval = poll_interval;
    options.backoff_base = Duration::from_millis(20);
    options.backoff_max = Duration::from_millis(100);
    options.shutdown_grace = grace;
    Worker::new(
        store,
        Fetcher::new("roadie-test").expect("fetcher"),
        HashMap::from([("test".to_owned(), provider)]),
        options,
    )
}

fn job(addr: SocketAddr, path: &str, max_attempts: u32) -> JobNew {
    JobNew {
        provider: "test".to_owned(),
        url: format!("http://{addr}/api/{path}"),
        policy: "api_metadata".to_owned(),
        tags: vec!["artist:x".to_owned()],
        priority: 2,
        max_attempts,
        traceparent: None,
        now: now_ms(),
    }
}

/// Waits until job `id` is finished, looking again each time one of the
/// workers whose `finishes` are given commits an attempt's end (bounded),
/// and returns it.
async fn finished(store: &Store, finishes: &mut [watch::Receiver<u64>], id: u64) -> Job {
    let limit = Duration::from_secs(20);
    let wait = async {
        loop {
            let job = store.job_get(id).await.expect("get").expect("job");
            if job.state.is_finished() {
                return job;
            }
            let committed = finishes.iter_mut().map(|f| Box::pin(f.changed()));
            let (result, ..) = futures::future::select_all(committed).await;
            result.expect("the worker is running");
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or_else(|_| panic!("job {id} did not finish within {limit:?}"))
}

async fn each_outcome_becomes_the_promised_entry(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let store = db.store().await;
    let (addr, counts) = upstream().await;
    let stop = CancellationToken::new();
    let w = worker(store.clone(), addr, "a", Duration::from_secs(5));
    let finishes = &mut [w.finishes()];
    let running = tokio::spawn(w.run(stop.clone()));

    // 2xx: stored under the provider's TTL, with media type and ETag.
    let (ok, _) = store
        .job_enqueue(&job(addr, "ok", 3))
        .await
        .expect("enqueue");
    assert_eq!(
        finished(&store, finishes, ok.id).await.state,
        JobState::Completed
    );
    let entry = store.entry_get(&ok.url).await.expect("get").expect("entry");
    assert_eq!(
        (entry.value.as_ref(), entry.media_type.as_str()),
        (&b"{\"ok\":true}"[..], "application/json")
    );
    let provenance = entry.provenance.clone().expect("provenance");
    assert_eq!(
        (provenance.upstream_status, provenance.etag.as_deref()),
        (200, Some("\"v1\""))
    );
    let ttl = entry.expires_at.expect("expires") - entry.updated_at;
    assert_eq!(ttl, 3_600_000);
    assert_eq!(entry.tags, ["artist:x"]);

    // 404: a NEGATIVE entry under the provider's negative TTL.
    let (missing, _) = store
        .job_enqueue(&job(addr, "missing", 3))
        .await
        .expect("enqueue");
    assert_eq!(
        finished(&store, finishes, missing.id).await.state,
        JobState::Completed
    );
    let entry = store
        .entry_get(&missing.url)
        .await
        .expect("get")
        .expect("entry");
    assert!(entry.negative);
    assert_eq!(
        entry.expires_at.expect("expires") - entry.updated_at,
        60_000
    );

    // 5xx: retried with backoff up to the maximum, then a NEGATIVE failed_lookup.
    let (flaky, _) = store
        .job_enqueue(&job(addr, "flaky", 3))
        .await
        .expect("enqueue");
    let failed = finished(&store, finishes, flaky.id).await;
    assert_eq!((failed.state, failed.attempt), (JobState::Failed, 3));
    assert_eq!(counts.flaky.load(Ordering::SeqCst), 3);
    let entry = store
        .entry_get(&flaky.url)
        .await
        .expect("get")
        .expect("entry");
    assert!(entry.negative);
    assert_eq!(entry.policy, "failed_lookup");

    // 429 with Retry-After: not asked again before it, then done. The
    // pushback is the provider's state and uses up no attempt: a job of one
    // attempt still completes.
    let enqueued = Instant::now();
    let (throttled, _) = store
        .job_enqueue(&job(addr, "throttle", 1))
        .await
        .expect("enqueue");
    let done = finished(&store, finishes, throttled.id).await;
    assert_eq!(
        (done.state, done.attempt),
        (JobState::Completed, 1),
        "{done:?}"
    );
    assert!(
        enqueued.elapsed() >= Duration::from_millis(900),
        "waited for Retry-After: {:?}",
        enqueued.elapsed()
    );
    assert_eq!(counts.throttle.load(Ordering::SeqCst), 2);

    // 304 on revalidation: the entry is extended without a body.
    let (first, _) = store
        .job_enqueue(&job(addr, "revalidate", 3))
        .await
        .expect("enqueue");
    finished(&store, finishes, first.id).await;
    let before = store
        .entry_get(&first.url)
        .await
        .expect("get")
        .expect("entry");
    let (second, _) = store
        .job_enqueue(&job(addr, "revalidate", 3))
        .await
        .expect("enqueue");
    assert_eq!(
        finished(&store, finishes, second.id).await.state,
        JobState::Completed
    );
    assert_eq!(counts.revalidate_304.load(Ordering::SeqCst), 1);
    let after = store
        .entry_get(&first.url)
        .await
        .expect("get")
        .expect("entry");
    assert_eq!(after.value.as_ref(), b"body");
    assert!(after.revision > before.revision);
    assert_eq!(after.provenance.expect("provenance").upstream_status, 304);

    // Other 4xx, and a body over the limit: final at once, a negative failed_lookup.
    for path in ["bad", "huge"] {
        let (j, _) = store
            .job_enqueue(&job(addr, path, 3))
            .await
            .expect("enqueue");
        let failed = finished(&store, finishes, j.id).await;
        assert_eq!(
            (failed.state, failed.attempt),
            (JobState::Failed, 1),
            "{path}: {failed:?}"
        );
        let entry = store.entry_get(&j.url).await.expect("get").expect("entry");
        assert!(
            entry.negative && entry.policy == "failed_lookup",
            "{path}: {entry:?}"
        );
    }

    // 503 with an HTTP-date Retry-After: the provider waits, then works.
    let enqueued = Instant::now();
    let (unavailable, _) = store
        .job_enqueue(&job(addr, "unavailable", 3))
        .await
        .expect("enqueue");
    assert_eq!(
        finished(&store, finishes, unavailable.id).await.state,
        JobState::Completed
    );
    // HTTP-dates have whole seconds: at least one of the two has passed.
    assert!(
        enqueued.elapsed() >= Duration::from_millis(900),
        "{:?}",
        enqueued.elapsed()
    );
    assert_eq!(counts.unavailable.load(Ordering::SeqCst), 2);

    // A failed refresh never replaces a good entry.
    let mut good = job(addr, "flaky", 1);
    good.url = ok.url.replace("/ok", "/flaky");
    let put = roadie_store::EntryPut {
        key: good.url.clone(),
        value: b"good".to_vec(),
        media_type: "text/plain".to_owned(),
        policy: "api_metadata".to_owned(),
        tags: vec![],
        confidence: 0,
        fingerprint: None,
        metadata: Default::default(),
        negative: false,
        expires_at: Some(now_ms() - 1000),
        provenance: None,
        keep_higher_confidence: false,
        if_revision: None,
        kind: roadie_store::ChangeKind::Put,
        now: now_ms(),
    };
    store.entry_put(&put).await.expect("put");
    let (refresh, _) = store.job_enqueue(&good).await.expect("enqueue");
    assert_eq!(
        finished(&store, finishes, refresh.id).await.state,
        JobState::Failed
    );
    let kept = store
        .entry_get(&good.url)
        .await
        .expect("get")
        .expect("entry");
    assert_eq!((kept.value.as_ref(), kept.negative), (&b"good"[..], false));

    stop.cancel();
    let report = running.await.expect("worker");
    assert_eq!(report.released, 0);
    db.finish().await;
}

async fn a_hard_stop_hands_leases_back(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let store = db.store().await;
    // An upstream that never answers: the job stays in flight. It says when
    // the request has arrived, so the job is surely running.
    let arrived = Arc::new(Notify::new());
    let app = Router::new()
        .route(
            "/api/hang",
            get(|State(arrived): State<Arc<Notify>>| async move {
                arrived.notify_one();
                std::future::pending::<&'static str>().await
            }),
        )
        .with_state(arrived.clone());
    let addr = serve(app).await;

    // A grace far shorter than the fetch timeout: the stop must turn hard.
    let w = worker(store.clone(), addr, "b", Duration::from_millis(300));
    let (hang, _) = store
        .job_enqueue(&job(addr, "hang", 3))
        .await
        .expect("enqueue");
    let stop = CancellationToken::new();
    let running = tokio::spawn(w.run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(10), arrived.notified())
        .await
        .expect("the job was never fetched");
    let claimed = store.job_get(hang.id).await.expect("get").expect("job");
    assert_eq!(claimed.state, JobState::Running);
    stop.cancel();
    let report = running.await.expect("worker");
    assert_eq!(report.released, 1);
    let released = store.job_get(hang.id).await.expect("get").expect("job");
    assert_eq!(
        (released.state, released.attempt, released.lease_holder),
        (JobState::Available, 0, None)
    );
    db.finish().await;
}

/// A job whose result waits for its finish to commit holds no slot: with
/// one slot, and the revision counter held by another transaction so that
/// no finish can commit, the second job is still claimed and fetched, and
/// both stay running, leased to this worker, until the counter is free.
/// Postgres only: on SQLite a claim is a write too and waits for the same
/// lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_is_free_once_its_result_is_handed_over() {
    use sqlx::{AnyConnection, Connection as _};

    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    let (arrived, mut arrivals) = watch::channel(0_u32);
    let app = Router::new()
        .route(
            "/api/item",
            get(
                |State(arrived): State<Arc<watch::Sender<u32>>>| async move {
                    arrived.send_modify(|count| *count += 1);
                    "item"
                },
            ),
        )
        .with_state(Arc::new(arrived));
    let addr = serve(app).await;

    let mut holder = AnyConnection::connect(&db.url).await.expect("connect");
    let mut held = holder.begin().await.expect("begin");
    sqlx::query("SELECT value FROM roadie_revision WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *held)
        .await
        .expect("lock the revision counter");
    let mut ids = Vec::new();
    for n in 1..=2 {
        let (job, _) = store
            .job_enqueue(&job(addr, &format!("item?n={n}"), 3))
            .await
            .expect("enqueue");
        ids.push(job.id);
    }
    let w = worker_with(store.clone(), addr, "slots", 1);
    let mut finishes = [w.finishes()];
    let stop = CancellationToken::new();
    let running = tokio::spawn(w.run(stop.clone()));

    tokio::time::timeout(
        Duration::from_secs(10),
        arrivals.wait_for(|count| *count == 2),
    )
    .await
    .expect("the second job was not fetched while the first one's finish waited")
    .expect("the upstream is running");
    for id in &ids {
        let job = store.job_get(*id).await.expect("get").expect("job");
        assert_eq!(
            (job.state, job.lease_holder.as_deref()),
            (JobState::Running, Some("test-worker-slots")),
            "job {id} before the counter is free"
        );
    }
    held.rollback().await.expect("release the counter");
    for id in &ids {
        let job = finished(&store, &mut finishes, *id).await;
        assert_eq!((job.state, job.attempt), (JobState::Completed, 1));
    }
    stop.cancel();
    running.await.expect("worker");
    db.finish().await;
}

/// A busy worker does not read the list of due work at every freed slot,
/// only when the list may hold something: its last read filled every slot
/// it asked for, or a server announced background work (the empty NOTIFY
/// of `WorkSignal`). Either way the work is claimed as a slot frees, not at
/// the next poll (a minute here, past the test's limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_claims_work_as_soon_as_it_may_be_due() {
    use roadie_store::{WAIT_PRIORITY, WORK_CHANNEL};

    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    let (arrived, mut arrivals) = watch::channel(0_u32);
    let gate = Arc::new(Notify::new());
    let app = Router::new()
        .route(
            "/api/held",
            get(
                |State((arrived, gate)): State<(Arc<watch::Sender<u32>>, Arc<Notify>)>| async move {
                    arrived.send_modify(|count| *count += 1);
                    gate.notified().await;
                    "held"
                },
            ),
        )
        .route("/api/ok", get(|| async { "ok" }))
        .with_state((Arc::new(arrived), gate.clone()));
    let addr = serve(app).await;

    // Three jobs before the worker starts and no notification: its first
    // read fills its one slot, so each freed slot reads the list again.
    let mut ids = Vec::new();
    for n in 1..=3 {
        let (job, _) = store
            .job_enqueue(&job(addr, &format!("ok?n={n}"), 3))
            .await
            .expect("enqueue");
        ids.push(job.id);
    }
    let w = worker_polling(
        store.clone(),
        addr,
        "busy",
        Duration::from_secs(5),
        1,
        Duration::from_secs(60),
    );
    let mut finishes = [w.finishes()];
    let stop = CancellationToken::new();
    let running = tokio::spawn(w.run(stop.clone()));
    for id in &ids {
        let job = finished(&store, &mut finishes, *id).await;
        assert_eq!(job.state, JobState::Completed, "job {id}");
    }

    // A waited job takes the slot (its enqueue announces it); background
    // work enqueued and announced meanwhile is claimed once it ends.
    let (held, _) = store
        .job_enqueue(&JobNew {
            priority: WAIT_PRIORITY,
            ..job(addr, "held", 3)
        })
        .await
        .expect("enqueue the waited job");
    tokio::time::timeout(
        Duration::from_secs(10),
        arrivals.wait_for(|count| *count == 1),
    )
    .await
    .expect("the waited job was not fetched")
    .expect("the upstream is running");
    let (background, _) = store
        .job_enqueue(&job(addr, "ok?n=4", 3))
        .await
        .expect("enqueue");
    store.notify(WORK_CHANNEL, "").await.expect("announce");
    gate.notify_one();
    for id in [held.id, background.id] {
        let job = finished(&store, &mut finishes, id).await;
        assert_eq!(job.state, JobState::Completed, "job {id}");
    }
    stop.cancel();
    running.await.expect("worker");
    db.finish().await;
}

/// When each request reached the upstream.
type Arrivals = Arc<std::sync::Mutex<Vec<Instant>>>;
/// When the 429 was sent.
type PushedBack = Arc<std::sync::Mutex<Option<Instant>>>;

async fn pushback_pauses_the_provider_for_every_worker(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let store = db.store().await;
    // Every arrival is recorded; the first request is answered 429, Retry-After 3.
    let arrivals: Arrivals = Arc::default();
    let pushed_back: PushedBack = Arc::default();
    let app = Router::new()
        .route(
            "/api/push/{i}",
            get(
                |State((arrivals, pushed_back)): State<(Arrivals, PushedBack)>| async move {
                    let first = {
                        let mut arrivals = arrivals.lock().expect("lock");
                        arrivals.push(Instant::now());
                        arrivals.len() == 1
                    };
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if first {
                        *pushed_back.lock().expect("lock") = Some(Instant::now());
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            [(header::RETRY_AFTER, "3")],
                            "",
                        )
                            .into_response()
                    } else {
                        "ok".into_response()
                    }
                },
            ),
        )
        .with_state((arrivals.clone(), pushed_back.clone()));
    let addr = serve(app).await;

    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            store
                .job_enqueue(&job(addr, &format!("push/{i}"), 3))
                .await
                .expect("enqueue")
                .0
                .id,
        );
    }
    // Two workers, one slot each: at most two requests in flight at once.
    let stop = CancellationToken::new();
    let mut running = Vec::new();
    let mut finishes = Vec::new();
    for name in ["p1", "p2"] {
        let w = worker_with(store.clone(), addr, name, 1);
        finishes.push(w.finishes());
        running.push(tokio::spawn(w.run(stop.clone())));
    }
    for id in &ids {
        assert_eq!(
            finished(&store, &mut finishes, *id).await.state,
            JobState::Completed
        );
    }
    stop.cancel();
    for r in running {
        r.await.expect("worker");
    }
    let pushed_back = pushed_back.lock().expect("lock").expect("a 429 was sent");
    let arrivals = arrivals.lock().expect("lock").clone();
    // A request already sent when the 429 went out may land just after it;
    // nothing else may reach the provider until Retry-After has passed.
    let during: Vec<Duration> = arrivals
        .iter()
        .filter(|at| {
            **at > pushed_back + Duration::from_millis(150)
                && **at < pushed_back + Duration::from_millis(2900)
        })
        .map(|at| at.duration_since(pushed_back))
        .collect();
    assert!(during.is_empty(), "requests during the pause: {during:?}");
    assert!(
        arrivals
            .iter()
            .any(|at| *at >= pushed_back + Duration::from_millis(2900)),
        "work resumed after the pause"
    );
    assert_eq!(arrivals.len(), 7, "six jobs plus the one retried");
    db.finish().await;
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await; }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await; }
        )* }
    };
}

on_both_backends!(
    each_outcome_becomes_the_promised_entry,
    a_hard_stop_hands_leases_back,
    pushback_pauses_the_provider_for_every_worker,
);
