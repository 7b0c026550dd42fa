//! Real `roadie-worker` processes against one store (a SQLite file shared by
//! every process, or a fresh Postgres database) and a loopback upstream that
//! counts requests per path. The workers are configured through environment
//! variables only, as a deployment would configure them.
//!
//! What must hold across processes: several workers share a queue without
//! fetching anything twice; the jobs of a worker killed with SIGKILL are
//! taken over within one lease; SIGTERM lets running jobs finish within the
//! grace period, and past it hands their leases back; finished jobs are
//! purged; bad configuration exits 2 before anything is opened.

#![allow(missing_docs)]

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{Uri, header},
};
use roadie_store::{Backend, Job, JobNew, JobOutcome, JobState, Store, now_ms, testing::TestDb};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::watch,
};

const LEASE: Duration = Duration::from_secs(2);

/// The loopback upstream. Every path under `/api/` answers JSON; the first
/// segment after it chooses how fast:
/// `item` at once, `slow` after a second, `gated` once the gate opens,
/// `hang` never.
struct Upstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
}

struct UpstreamState {
    hits: Mutex<HashMap<String, u32>>,
    /// Every request's query string, in arrival order.
    queries: Mutex<Vec<String>>,
    /// Every request's path and arrival time, in arrival order; a test
    /// waits on it for requests to arrive.
    arrivals: watch::Sender<Vec<(String, Instant)>>,
    gate: watch::Sender<bool>,
}

impl Upstream {
    async fn start() -> Upstream {
        let state = Arc::new(UpstreamState {
            hits: Mutex::new(HashMap::new()),
            queries: Mutex::new(Vec::new()),
            arrivals: watch::Sender::new(Vec::new()),
            gate: watch::Sender::new(false),
        });
        let app = Router::new()
            .fallback(
                |State(state): State<Arc<UpstreamState>>, uri: Uri| async move {
                    let path = uri.path().to_owned();
                    state
                        .queries
                        .lock()
                        .expect("queries")
                        .push(uri.query().unwrap_or_default().to_owned());
                    state
                        .arrivals
                        .send_modify(|arrivals| arrivals.push((path.clone(), Instant::now())));
                    *state
                        .hits
                        .lock()
                        .expect("hits")
                        .entry(path.clone())
                        .or_default() += 1;
                    match path.split('/').nth(2) {
                        Some("slow") => tokio::time::sleep(Duration::from_secs(1)).await,
                        Some("gated") => {
                            let _ = state.gate.subscribe().wait_for(|open| *open).await;
                        }
                        Some("hang") => std::future::pending::<()>().await,
                        _ => {}
                    }
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        format!("{{\"path\":{path:?}}}"),
                    )
                },
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/api/{path}", self.addr)
    }

    fn hits(&self) -> HashMap<String, u32> {
        self.state.hits.lock().expect("hits").clone()
    }

    fn queries(&self) -> Vec<String> {
        self.state.queries.lock().expect("queries").clone()
    }

    /// Arrival times of the requests whose path starts with `prefix`.
    fn arrivals(&self, prefix: &str) -> Vec<Instant> {
        let arrivals = self.state.arrivals.borrow();
        arrivals
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .map(|(_, at)| *at)
            .collect()
    }

    /// Waits, woken by each request, until `seen` holds of the requests
    /// that have arrived, for at most `limit`.
    async fn until_arrived(
        &self,
        what: &str,
        limit: Duration,
        mut seen: impl FnMut(&[(String, Instant)]) -> bool,
    ) {
        let mut arrivals = self.state.arrivals.subscribe();
        let waited = tokio::time::timeout(limit, arrivals.wait_for(|a| seen(a))).await;
        assert!(
            waited.is_ok(),
            "{what}: not within {limit:?}; requests so far: {}",
            self.state.arrivals.borrow().len()
        );
    }

    fn open_gate(&self) {
        self.state.gate.send_replace(true);
    }
}

/// A `roadie-worker` process, killed when the guard drops (so a failed test
/// leaves no process behind); its stderr is kept, line by line, for tests
/// that wait on what it says and for printing when the test fails.
struct WorkerProcess {
    child: tokio::process::Child,
    pid: u32,
    log: watch::Receiver<String>,
    /// Reads stderr until the process closes it.
    reader: Option<tokio::task::JoinHandle<()>>,
    name: String,
}

impl WorkerProcess {
    /// Starts a worker on `db` fetching from `upstream`; `extra` adds or
    /// overrides environment variables.
    fn spawn(
        name: &str,
        db: &TestDb,
        upstream: &Upstream,
        extra: &[(&str, &str)],
    ) -> WorkerProcess {
        let mut env: HashMap<&str, String> = HashMap::from([
            ("ROADIE__STORE__URL", db.url.clone()),
            ("ROADIE__STORE__MAX_CONNECTIONS", "6".to_owned()),
            ("ROADIE__WORKER__LEASE", "2s".to_owned()),
            ("ROADIE__WORKER__HEARTBEAT", "500ms".to_owned()),
            ("ROADIE__WORKER__POLL_INTERVAL", "50ms".to_owned()),
            ("ROADIE__WORKER__CONCURRENCY", "8".to_owned()),
            ("ROADIE__PROVIDERS__TEST__BASE_URL", upstream.url("")),
            ("ROADIE__PROVIDERS__TEST__ALLOW_PRIVATE", "true".to_owned()),
            ("ROADIE__PROVIDERS__TEST__TIMEOUT", "30s".to_owned()),
            // The tests are about leases and stops, not the provider's rate limit.
            (
                "ROADIE__PROVIDERS__TEST__RATE_PER_SECOND",
                "100000".to_owned(),
            ),
            ("ROADIE__PROVIDERS__TEST__BURST", "1000".to_owned()),
            ("NO_COLOR", "1".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]);
        for (key, value) in extra {
            env.insert(key, (*value).to_owned());
        }
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_roadie-worker"))
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start roadie-worker");
        let pid = child.id().expect("a running child has a pid");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (lines, log) = watch::channel(String::new());
        let reader = tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                lines.send_modify(|log| {
                    log.push_str(&line);
                    log.push('\n');
                });
            }
        });
        WorkerProcess {
            child,
            pid,
            log,
            reader: Some(reader),
            name: name.to_owned(),
        }
    }

    /// True when `job` is leased by this process (worker ids are `HOST-PID-XXXX`).
    fn holds(&self, job: &Job) -> bool {
        job.lease_holder
            .as_deref()
            .is_some_and(|holder| holder.contains(&format!("-{}-", self.pid)))
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid);
    }

    /// Waits (bounded) for the process to exit and its last line to be read.
    async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for roadie-worker"),
            Err(_) => panic!("{} did not exit within {limit:?}", self.name),
        };
        if let Some(reader) = self.reader.take() {
            reader.await.expect("the stderr reader");
        }
        status
    }

    /// Waits, woken by each line, until the process has said `text`.
    async fn until_logged(&mut self, text: &str, limit: Duration) {
        let said = self.log.wait_for(|log| log.contains(text));
        let said = matches!(tokio::time::timeout(limit, said).await, Ok(Ok(_)));
        assert!(
            said,
            "{} did not say {text:?} within {limit:?}:\n{}",
            self.name,
            self.log()
        );
    }

    fn log(&self) -> String {
        self.log.borrow().clone()
    }
}

/// The jobs a stopped worker claimed, from its last log line.
fn claimed_by(worker: &WorkerProcess) -> u64 {
    let log = worker.log();
    let stopped = log
        .lines()
        .find(|line| line.contains("roadie-worker stopped"))
        .unwrap_or_else(|| panic!("{} never logged its stop:\n{log}", worker.name));
    stopped
        .split_whitespace()
        .find_map(|field| field.strip_prefix("claimed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no claimed= in {stopped:?}"))
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}) stderr ---\n{}",
                self.name,
                self.pid,
                self.log()
            );
        }
    }
}

/// What every multi-process test starts from: a fresh database of the
/// backend, its store and a loopback upstream;
/// `None` when Postgres is absent and not required.
async fn setup(backend: Backend) -> Option<(TestDb, Store, Upstream)> {
    let db = TestDb::new(backend).await?;
    let store = db.store().await;
    Some((db, store, Upstream::start().await))
}

/// SIGTERM to every worker; each must exit cleanly.
async fn stop_all(workers: &mut [WorkerProcess]) {
    for worker in workers {
        worker.signal("TERM");
        let status = worker.exit_within(Duration::from_secs(10)).await;
        assert!(status.success(), "{}: {status}", worker.name);
    }
}

fn job(url: String) -> JobNew {
    job_for("test", url)
}

fn job_for(provider: &str, url: String) -> JobNew {
    JobNew {
        provider: provider.to_owned(),
        url,
        policy: "api_metadata".to_owned(),
        tags: vec![],
        priority: 2,
        max_attempts: 3,
        traceparent: None,
        now: now_ms(),
    }
}

/// Enqueues one job per path; returns their URLs.
async fn enqueue(store: &Store, upstream: &Upstream, paths: &[String]) -> Vec<String> {
    let mut urls = Vec::with_capacity(paths.len());
    for path in paths {
        let url = upstream.url(path);
        let (_, shared) = store.job_enqueue(&job(url.clone())).await.expect("enqueue");
        assert!(!shared, "{url} enqueued twice");
        urls.push(url);
    }
    urls
}

async fn all_jobs(store: &Store) -> Vec<Job> {
    store
        .job_list(None, Some("test"), u64::MAX, 10_000)
        .await
        .expect("list jobs")
}

fn count(jobs: &[Job], state: JobState) -> usize {
    jobs.iter().filter(|j| j.state == state).count()
}

/// Polls `probe` every 25 ms until it gives `Ok`, for at most `limit`; the
/// `Err` it gave last says what was still missing. Only for what another
/// process commits and nothing in this one hears of (jobs finishing or
/// purged by a worker process): the store is read, as a SQLite waiter in
/// the server reads it. Whatever the upstream or a worker's log can tell
/// is waited for on them.
async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(state) => assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; last seen: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until upstream has seen each of `paths`, so the fetches are truly
/// in flight, and checks that `worker` holds every job (a job is leased
/// before its request is sent).
async fn running_under(
    store: &Store,
    upstream: &Upstream,
    worker: &WorkerProcess,
    paths: &[String],
) {
    let wanted: Vec<String> = paths.iter().map(|p| format!("/api/{p}")).collect();
    upstream
        .until_arrived("jobs in flight", Duration::from_secs(10), |arrivals| {
            wanted
                .iter()
                .all(|p| arrivals.iter().any(|(path, _)| path == p))
        })
        .await;
    let jobs = all_jobs(store).await;
    let held = jobs
        .iter()
        .filter(|j| j.state == JobState::Running && worker.holds(j))
        .count();
    assert_eq!(held, paths.len(), "jobs held by {}: {jobs:?}", worker.name);
}

/// Asserts every job completed and every URL has a live entry.
async fn all_completed_with_entries(store: &Store, urls: &[String]) {
    let jobs = all_jobs(store).await;
    assert_eq!(jobs.len(), urls.len());
    assert!(
        jobs.iter().all(|j| j.state == JobState::Completed),
        "not all completed: {:?}",
        jobs.iter().find(|j| j.state != JobState::Completed)
    );
    let entries = store.entry_get_many(urls).await.expect("entries");
    assert_eq!(entries.len(), urls.len(), "every URL has an entry");
    assert!(entries.iter().all(|e| !e.negative));
}

async fn three_workers_share_500_jobs(backend: Backend) {
    let _alone = TIMING.write().await;
    let Some((db, store, upstream)) = setup(backend).await else {
        return;
    };
    let paths: Vec<String> = (0..500).map(|i| format!("item/{i}")).collect();
    let urls = enqueue(&store, &upstream, &paths).await;

    let started = Instant::now();
    let mut workers: Vec<WorkerProcess> = ["a", "b", "c"]
        .iter()
        .map(|name| WorkerProcess::spawn(name, &db, &upstream, &[]))
        .collect();
    eventually("500 jobs completed", Duration::from_secs(20), async || {
        let jobs = all_jobs(&store).await;
        match count(&jobs, JobState::Completed) {
            500 => Ok(()),
            done => Err(format!("{done} completed")),
        }
    })
    .await;
    eprintln!("500 jobs by 3 workers in {:?}", started.elapsed());

    all_completed_with_entries(&store, &urls).await;
    let hits = upstream.hits();
    assert_eq!(hits.values().sum::<u32>(), 500, "one request per job");
    for path in &paths {
        assert_eq!(hits.get(&format!("/api/{path}")), Some(&1), "{path}");
    }
    let mut claimed = Vec::new();
    for worker in &mut workers {
        worker.signal("TERM");
        let status = worker.exit_within(Duration::from_secs(10)).await;
        assert!(status.success(), "{}: {status}", worker.name);
        claimed.push(claimed_by(worker));
    }
    eprintln!("claims per worker: {claimed:?}");
    assert_eq!(claimed.iter().sum::<u64>(), 500, "each job claimed once");
    store.close().await;
    db.finish().await;
}

async fn a_killed_workers_jobs_are_taken_over_within_one_lease(backend: Backend) {
    let _alone = TIMING.write().await;
    let Some((db, store, upstream)) = setup(backend).await else {
        return;
    };
    let paths: Vec<String> = (0..6).map(|i| format!("gated/{i}")).collect();
    let urls = enqueue(&store, &upstream, &paths).await;

    let mut a = WorkerProcess::spawn("a", &db, &upstream, &[]);
    running_under(&store, &upstream, &a, &paths).await;
    // B is up and idle: nothing is claimable while A holds every job. Its
    // own lease is longer, so only a rescuer that wakes at A's expiry (not
    // at a round of its own, every half of B's lease) keeps the promise.
    let mut b = WorkerProcess::spawn(
        "b",
        &db,
        &upstream,
        &[
            ("ROADIE__WORKER__LEASE", "10s"),
            ("ROADIE__WORKER__HEARTBEAT", "2s"),
        ],
    );
    b.until_logged("roadie-worker started", Duration::from_secs(10))
        .await;
    a.signal("KILL");
    let killed = Instant::now();
    let status = a.exit_within(Duration::from_secs(5)).await;
    assert!(!status.success(), "SIGKILL is not a clean exit: {status}");

    // The promise: claimable again within one lease of the kill (A's last
    // heartbeat was before it): B's rescuer wakes at the expiry itself, not
    // at its next round.
    let expiry = all_jobs(&store)
        .await
        .iter()
        .filter_map(|j| j.lease_expires_at)
        .max()
        .expect("A's leases");
    // B's claims are seen as its requests for the six gated paths arrive.
    upstream
        .until_arrived(
            "jobs claimed by b",
            LEASE + Duration::from_secs(5),
            |arrivals| arrivals.iter().filter(|(_, at)| *at > killed).count() == paths.len(),
        )
        .await;
    let held = all_jobs(&store).await.iter().filter(|j| b.holds(j)).count();
    assert_eq!(held, paths.len(), "every job is b's now");
    let late = now_ms() - expiry;
    let taken_over = killed.elapsed();
    assert!(
        taken_over <= LEASE + Duration::from_millis(300) && late <= 300,
        "a dead worker's jobs came back {taken_over:?} after the kill, {late} ms after \
         their lease ran out (lease {LEASE:?})"
    );
    upstream.open_gate();
    let limit = Duration::from_secs(10);
    eventually("jobs taken over", limit, async || {
        let jobs = all_jobs(&store).await;
        match count(&jobs, JobState::Completed) {
            6 => Ok(()),
            done => Err(format!("{done} completed: {jobs:?}")),
        }
    })
    .await;
    eprintln!("taken over {:?} after the kill", killed.elapsed());
    all_completed_with_entries(&store, &urls).await;

    b.signal("TERM");
    assert!(b.exit_within(Duration::from_secs(10)).await.success());
    store.close().await;
    db.finish().await;
}

async fn sigterm_lets_running_jobs_finish_within_the_grace(backend: Backend) {
    let _shared = TIMING.read().await;
    let Some((db, store, upstream)) = setup(backend).await else {
        return;
    };
    let paths: Vec<String> = (0..4).map(|i| format!("slow/{i}")).collect();
    let urls = enqueue(&store, &upstream, &paths).await;

    let mut worker = WorkerProcess::spawn(
        "soft",
        &db,
        &upstream,
        &[("ROADIE__WORKER__SHUTDOWN_GRACE", "10s")],
    );
    running_under(&store, &upstream, &worker, &paths).await;
    worker.signal("TERM");
    let signalled = Instant::now();
    let status = worker.exit_within(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "finished within the grace: {:?}",
        signalled.elapsed()
    );
    let jobs = all_jobs(&store).await;
    assert_eq!(count(&jobs, JobState::Running), 0);
    all_completed_with_entries(&store, &urls).await;
    assert!(worker.log().contains("roadie-worker stopped"));
    store.close().await;
    db.finish().await;
}

async fn sigterm_past_the_grace_hands_leases_back(backend: Backend) {
    let _shared = TIMING.read().await;
    let Some((db, store, upstream)) = setup(backend).await else {
        return;
    };
    let paths: Vec<String> = (0..3).map(|i| format!("hang/{i}")).collect();
    enqueue(&store, &upstream, &paths).await;

    let mut worker = WorkerProcess::spawn(
        "hard",
        &db,
        &upstream,
        &[("ROADIE__WORKER__SHUTDOWN_GRACE", "300ms")],
    );
    running_under(&store, &upstream, &worker, &paths).await;
    worker.signal("TERM");
    let signalled = Instant::now();
    let status = worker.exit_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
    eprintln!("hard stop exited {:?} after SIGTERM", signalled.elapsed());
    for job in all_jobs(&store).await {
        assert_eq!(
            (job.state, job.lease_holder.as_deref(), job.attempt),
            (JobState::Available, None, 0),
            "{job:?}"
        );
    }
    store.close().await;
    db.finish().await;
}

async fn finished_jobs_are_purged_after_their_retention(backend: Backend) {
    let _shared = TIMING.read().await;
    let Some((db, store, upstream)) = setup(backend).await else {
        return;
    };
    let paths: Vec<String> = (0..3).map(|i| format!("item/{i}")).collect();
    enqueue(&store, &upstream, &paths).await;
    // Finished here, not by a worker, so nothing else runs meanwhile.
    let now = now_ms();
    let claimed = store
        .job_claim("test-finisher", 3, now + 60_000, now)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    for (i, job) in claimed.iter().enumerate() {
        let outcome = if i == 0 {
            JobOutcome::Fail {
                error: "gave up".to_owned(),
                entry: None,
            }
        } else {
            JobOutcome::Complete { entry: None }
        };
        store
            .job_finish_if_leased(job.id, "test-finisher", &outcome, now_ms())
            .await
            .expect("finish");
    }

    // Completed jobs are kept for nothing, failed ones for an hour.
    let mut worker = WorkerProcess::spawn(
        "retention",
        &db,
        &upstream,
        &[
            ("ROADIE__JOBS__KEEP_COMPLETED", "0s"),
            ("ROADIE__JOBS__KEEP_FAILED", "1h"),
        ],
    );
    let left = eventually(
        "completed jobs purged",
        Duration::from_secs(10),
        async || {
            let jobs = all_jobs(&store).await;
            match count(&jobs, JobState::Completed) {
                0 => Ok(jobs),
                n => Err(format!("{n} completed jobs left")),
            }
        },
    )
    .await;
    assert_eq!(
        left.iter().map(|j| (j.id, j.state)).collect::<Vec<_>>(),
        [(claimed[0].id, JobState::Failed)]
    );
    worker.signal("TERM");
    assert!(worker.exit_within(Duration::from_secs(10)).await.success());
    store.close().await;
    db.finish().await;
}

/// A worker started before its database retries the store, logging each
/// attempt, and works once the database can be reached.
#[tokio::test]
async fn a_worker_started_before_its_store_waits_for_it() {
    let _shared = TIMING.read().await;
    let Some((db, store, upstream)) = setup(Backend::Postgres).await else {
        return;
    };
    // The store's address answers nothing until the relay below starts.
    let (url, relay_port) = db.url_through_closed_port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let mut worker = WorkerProcess::spawn(
        "late",
        &db,
        &upstream,
        &[
            ("ROADIE__STORE__URL", url.as_str()),
            ("ROADIE__STORE__ACQUIRE_TIMEOUT", "200ms"),
            ("ROADIE__ADMIN__LISTEN", admin.as_str()),
        ],
    );
    worker
        .until_logged("the store cannot be reached yet", Duration::from_secs(20))
        .await;
    // What a container health check runs: not ready while the store is away.
    let (code, said) = worker_ready(&admin).await;
    assert_eq!(code, Some(1), "{said}");
    db.relay(relay_port).await;
    worker
        .until_logged("roadie-worker started", Duration::from_secs(20))
        .await;
    enqueue(&store, &upstream, &["item/late".to_owned()]).await;
    upstream
        .until_arrived("the late worker's fetch", Duration::from_secs(10), |a| {
            a.iter().any(|(path, _)| path == "/api/item/late")
        })
        .await;
    // It fetched, so its claims succeed: ready.
    let (code, said) = worker_ready(&admin).await;
    assert_eq!(code, Some(0), "{said}");
    worker.signal("TERM");
    assert!(worker.exit_within(Duration::from_secs(10)).await.success());
    store.close().await;
    db.finish().await;
}

/// `roadie-worker ready` for the worker whose admin port is `admin`: its
/// exit code, and what it printed.
async fn worker_ready(admin: &str) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_roadie-worker"))
        .arg("ready")
        .env_clear()
        .env("ROADIE__ADMIN__LISTEN", admin)
        .output()
        .await
        .expect("run roadie-worker ready");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}

/// Bad configuration exits 2 with a message naming the setting, before the
/// store is opened (the SQLite file's directory is never created).
#[tokio::test]
async fn bad_configuration_exits_2_naming_the_setting() {
    let _shared = TIMING.read().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("data/roadie.db").display());
    // (environment, what stderr must name)
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    );
    let cases: [Case; 3] = [
        (
            // Over half of the default 30 s lease.
            &[("ROADIE__WORKER__HEARTBEAT", "20s")],
            &["worker.heartbeat"],
        ),
        (&[("ROADIE__WORKER__LEASE", "soon")], &["worker.lease"]),
        (
            &[
                (
                    "ROADIE__PROVIDERS__TEST__BASE_URL",
                    "http://127.0.0.1:9/api/",
                ),
                (
                    "ROADIE__PROVIDERS__TEST__SECRET_HEADERS__X_API_KEY",
                    "ROADIE_TEST_API_KEY",
                ),
            ],
            &[
                "providers.test.secret_headers.x_api_key",
                "ROADIE_TEST_API_KEY",
            ],
        ),
    ];
    for (env, expected) in cases {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_roadie-worker"))
            .env_clear()
            .env("ROADIE__STORE__URL", &url)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(10), child)
            .await
            .expect("exits at once")
            .expect("run roadie-worker");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        for text in expected {
            assert!(stderr.contains(text), "{env:?}: {text} not in {stderr}");
        }
        assert!(
            !dir.path().join("data").exists(),
            "{env:?}: the store was opened"
        );
    }
}

/// Timing-sensitive tests take this exclusively (`write`) and every other
/// multi-process test shares it (`read`), so a timing test never shares the
/// two cores with another multi-process test: what it measures is Roadie,
/// not the load of the test run.
static TIMING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The most requests any half-open one-second window holds.
fn busiest_second(arrivals: &[Instant]) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|at| at.duration_since(sorted[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn four_workers_hold_one_shared_rate(backend: Backend) {
    let _alone = TIMING.write().await;
    let Some((db, store, upstream)) = setup(backend).await else {
        return;
    };
    let limit = [
        ("ROADIE__PROVIDERS__TEST__RATE_PER_SECOND", "2"),
        ("ROADIE__PROVIDERS__TEST__BURST", "1"),
    ];
    let mut workers: Vec<WorkerProcess> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| WorkerProcess::spawn(name, &db, &upstream, &limit))
        .collect();
    // The jobs wait for all four: a worker still starting beside the others
    // on two cores once sent its first claimed request 55 ms late, so the
    // next worker's, on time, came 470 ms after it. What is measured here is
    // the shared limit between running workers, not four processes' start.
    for worker in &mut workers {
        worker
            .until_logged("roadie-worker started", Duration::from_secs(20))
            .await;
    }
    let paths: Vec<String> = (0..40).map(|i| format!("item/limited-{i}")).collect();
    let started = Instant::now();
    let urls = enqueue(&store, &upstream, &paths).await;
    let took = eventually(
        "40 jobs completed",
        Duration::from_secs(30),
        async || match count(&all_jobs(&store).await, JobState::Completed) {
            40 => Ok(started.elapsed()),
            done => Err(format!("{done} completed")),
        },
    )
    .await;
    all_completed_with_entries(&store, &urls).await;
    let arrivals = upstream.arrivals("/api/item/limited-");
    assert_eq!(arrivals.len(), 40, "one request per job");
    let busiest = busiest_second(&arrivals);
    let mut sorted = arrivals.clone();
    sorted.sort();
    let gaps: Vec<u128> = sorted
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_millis())
        .collect();
    eprintln!("gaps: {gaps:?}");
    eprintln!("40 jobs at 2/s by 4 workers in {took:?}; busiest second held {busiest}");
    assert!(
        busiest <= 2,
        "a one-second window held {busiest} requests; gaps in ms: {gaps:?}"
    );
    // The limit, with its headroom, spaces 40 requests by 39 intervals; the
    // enqueue and a late wake or two get a second and a half more.
    let interval = roadie_store::Rate::new(2.0, 1).interval_ms();
    let least = Duration::from_millis(39 * u64::try_from(interval).unwrap_or(u64::MAX));
    assert!(
        took <= least + Duration::from_millis(1500),
        "the limit is used, not just respected: {took:?} against at least {least:?}"
    );
    stop_all(&mut workers).await;
    store.close().await;
    db.finish().await;
}

async fn a_throttled_provider_holds_back_nobody_else(backend: Backend) {
    let _alone = TIMING.write().await;
    let Some((db, store, upstream)) = setup(backend).await else {
        return;
    };
    for i in 0..30 {
        store
            .job_enqueue(&job(upstream.url(&format!("item/slow-{i}"))))
            .await
            .expect("enqueue");
        store
            .job_enqueue(&job_for("fast", upstream.url(&format!("item/fast-{i}"))))
            .await
            .expect("enqueue");
    }
    let base = upstream.url("");
    let env = [
        ("ROADIE__PROVIDERS__TEST__RATE_PER_SECOND", "1"),
        ("ROADIE__PROVIDERS__TEST__BURST", "1"),
        ("ROADIE__PROVIDERS__FAST__BASE_URL", base.as_str()),
        ("ROADIE__PROVIDERS__FAST__ALLOW_PRIVATE", "true"),
        ("ROADIE__PROVIDERS__FAST__RATE_PER_SECOND", "100000"),
        ("ROADIE__PROVIDERS__FAST__BURST", "1000"),
    ];
    let started = Instant::now();
    let mut workers: Vec<WorkerProcess> = ["a", "b"]
        .iter()
        .map(|name| WorkerProcess::spawn(name, &db, &upstream, &env))
        .collect();
    let took = eventually(
        "the unlimited provider's 30 jobs",
        Duration::from_secs(5),
        async || {
            let fast = store
                .job_list(Some(JobState::Completed), Some("fast"), u64::MAX, 100)
                .await
                .expect("list");
            if fast.len() == 30 {
                Ok(started.elapsed())
            } else {
                Err(format!("{} completed", fast.len()))
            }
        },
    )
    .await;
    let slow_done = count(&all_jobs(&store).await, JobState::Completed);
    eprintln!("30 unlimited jobs in {took:?} while the 1/s provider had done {slow_done}");
    assert!(
        slow_done < 30,
        "the limited provider is still working through its backlog"
    );
    stop_all(&mut workers).await;
    store.close().await;
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

/// A secret query parameter (`providers.NAME.secret_query`) reaches the
/// provider and no other channel: not the worker's log (at debug level), the
/// job row, the entry's key or value, or the change log.
async fn a_secret_query_parameter_reaches_only_the_provider(backend: Backend) {
    let _shared = TIMING.read().await;
    let Some((db, store, upstream)) = setup(backend).await else {
        return;
    };
    const PLANTED: &str = "planted-s3cr3t-4f9c";
    let mut worker = WorkerProcess::spawn(
        "secret",
        &db,
        &upstream,
        &[
            (
                "ROADIE__PROVIDERS__TEST__SECRET_QUERY__API_KEY",
                "ROADIE_TEST_SECRET",
            ),
            ("ROADIE_TEST_SECRET", PLANTED),
            ("RUST_LOG", "debug"),
        ],
    );
    let urls = enqueue(&store, &upstream, &["item/secret?format=json".to_owned()]).await;
    upstream
        .until_arrived("the fetch", Duration::from_secs(20), |a| {
            a.iter().any(|(path, _)| path == "/api/item/secret")
        })
        .await;
    assert_eq!(
        upstream.queries(),
        [format!("format=json&api_key={PLANTED}")]
    );
    let job = eventually("the job to complete", Duration::from_secs(20), async || {
        let jobs = all_jobs(&store).await;
        match jobs.as_slice() {
            [job] if job.state == JobState::Completed => Ok(job.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let entry = store
        .entry_get(&urls[0])
        .await
        .expect("read")
        .expect("the fetched entry");
    let changes = store.change_list_since(0, 1000).await.expect("changes");
    worker.signal("TERM");
    assert!(worker.exit_within(Duration::from_secs(10)).await.success());
    for (channel, text) in [
        ("the job row", format!("{job:?}")),
        ("the entry", format!("{entry:?}")),
        (
            "the entry's value",
            String::from_utf8_lossy(&entry.value).into_owned(),
        ),
        ("the change log", format!("{changes:?}")),
        ("the worker's log", worker.log()),
    ] {
        assert!(
            !text.contains(PLANTED),
            "{channel} carries the secret: {text}"
        );
    }
    assert!(
        worker.log().contains("upstream answered"),
        "the log is at debug level"
    );
    store.close().await;
    db.finish().await;
}

on_both_backends!(
    a_secret_query_parameter_reaches_only_the_provider,
    three_workers_share_500_jobs,
    a_killed_workers_jobs_are_taken_over_within_one_lease,
    sigterm_lets_running_jobs_finish_within_the_grace,
    sigterm_past_the_grace_hands_leases_back,
    finished_jobs_are_purged_after_their_retention,
    four_workers_hold_one_shared_rate,
    a_throttled_provider_holds_back_nobody_else,
);
