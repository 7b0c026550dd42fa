//! Faults an operator meets, on the real binaries: SQLite on a full disk,
//! SIGTERM under load, and the SQLite WAL across repeated crashes.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use roadie_client::{Client, ClientError, proto};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::Code;

use crate::{
    common::{get, put},
    process::{BINARY, free_port, wait_until_serving},
};

/// A `roadie-server` process of the test's own.
struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    /// Starts the binary (behind `prefix`, a command such as `nsenter …`,
    /// when given) with `env`, and waits until it is healthy.
    async fn start(prefix: &[String], env: &[(&str, String)]) -> ServerProcess {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg("--").arg(BINARY);
                command
            }
            None => Command::new(BINARY),
        };
        command
            .env("ROADIE__SERVER__LISTEN", &addr)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("spawn roadie-server");
        wait_until_serving(&addr).await;
        ServerProcess { child, addr }
    }

    async fn client(&self) -> Client {
        roadie_client::connect(format!("http://{}", self.addr), Duration::from_secs(5))
            .await
            .expect("connect")
            .with_request_timeout(Duration::from_secs(5))
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL, as a crash would.
    async fn crash(mut self) {
        self.signal("-KILL");
        self.child.wait().await.expect("wait");
    }
}

/// A filesystem of `size` bytes of the test's own: a tmpfs mounted in a
/// user and mount namespace that a holder process keeps alive, so no root
/// is needed. Servers run inside it through `nsenter`; the test reaches its
/// files through `/proc/<holder>/root`.
struct SmallFs {
    holder: Child,
    // Where the tmpfs is mounted, inside the namespace.
    dir: tempfile::TempDir,
}

impl SmallFs {
    async fn mount(size: u64) -> SmallFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut holder = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "--propagation", "private"])
            .args(["sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size} roadie-test \"$0\" && echo mounted && exec sleep 100000"
            ))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("unshare (util-linux) runs");
        let stdout = holder.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("read the holder's output");
        assert_eq!(
            line.trim(),
            "mounted",
            "a tmpfs in a user namespace of the test's own could not be mounted \
             (unprivileged user namespaces must be allowed)"
        );
        SmallFs { holder, dir }
    }

    /// The mount point, as servers inside the namespace see it.
    fn inner(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The same file, as this process reaches it.
    fn outer(&self, name: &str) -> PathBuf {
        let pid = self.holder.id().expect("holder runs");
        Path::new(&format!("/proc/{pid}/root")).join(
            self.inner(name)
                .strip_prefix("/")
                .expect("absolute tempdir"),
        )
    }

    /// The command that runs a program inside the namespace.
    fn enter(&self) -> Vec<String> {
        let pid = self.holder.id().expect("holder runs");
        [
            "nsenter",
            "-t",
            &pid.to_string(),
            "--user",
            "--mount",
            "--preserve-credentials",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Fills the filesystem with 1 MiB ballast files, then deletes `keep_free`
    /// of them; returns the names of the rest.
    fn fill(&self, keep_free: usize) -> Vec<PathBuf> {
        let chunk = vec![0x5a_u8; 1 << 20];
        let mut files = Vec::new();
        loop {
            let path = self.outer(&format!("ballast-{}", files.len()));
            let written = std::fs::write(&path, &chunk);
            files.push(path);
            if written.is_err() {
                break;
            }
        }
        for path in files.drain(files.len().saturating_sub(keep_free + 1)..) {
            std::fs::remove_file(path).expect("remove ballast");
        }
        files
    }
}

fn value_of(key: &str, len: usize) -> Vec<u8> {
    key.bytes().cycle().take(len).collect()
}

/// Gets `key` and asserts it is a hit with the value it was written with.
async fn assert_hit(client: &Client, key: &str, len: usize, who: &str) {
    let response = client.get(get(key)).await.expect("get");
    assert_eq!(
        response.status(),
        proto::LookupStatus::Hit,
        "{who}: acknowledged key {key} reads back as {:?}",
        response.status()
    );
    let entry = response.entry.expect("a hit has its entry");
    assert_eq!(entry.value, value_of(key, len), "{who}: value of {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_no_acknowledged_write_and_writes_resume_when_space_returns() {
    const VALUE: usize = 8 * 1024;
    let fs = SmallFs::mount(24 << 20).await;
    let env = [
        (
            "ROADIE__STORE__URL",
            format!("sqlite://{}", fs.inner("roadie.db").display()),
        ),
        // Reads must come from the store, not from memory.
        ("ROADIE__HOT_TIER__ENABLED", "false".to_owned()),
    ];
    let a = ServerProcess::start(&fs.enter(), &env).await;
    let ballast = fs.fill(2);

    // Four writers until each has been refused ten times.
    let client = a.client().await;
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, acknowledged) = (client.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let mut refused = 0;
            for n in 0..5_000 {
                let key = format!("full/{w}/{n}");
                let mut request = put(&key, "");
                request.value = value_of(&key, VALUE).into();
                match client.put(request).await {
                    Ok(_) => acknowledged.lock().expect("lock").push(key),
                    Err(error) => {
                        assert_eq!(
                            error.code(),
                            Some(Code::ResourceExhausted),
                            "a write on a full disk: {error}"
                        );
                        assert!(error.to_string().contains("store is full"), "{error}");
                        refused += 1;
                        if refused == 10 {
                            return;
                        }
                    }
                }
            }
            panic!("writer {w} was never refused: the filesystem did not fill");
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        !acknowledged.is_empty(),
        "some writes fit before the disk filled"
    );

    // Reads go on while the disk is full.
    for key in &acknowledged {
        assert_hit(&client, key, VALUE, "full disk").await;
    }

    // Space comes back: writes succeed again, with no restart.
    for path in ballast {
        std::fs::remove_file(path).expect("free space");
    }
    let mut later = Vec::new();
    for n in 0..20 {
        let key = format!("later/{n}");
        let mut request = put(&key, "");
        request.value = value_of(&key, VALUE).into();
        client
            .put(request)
            .await
            .expect("writes succeed once space is freed");
        later.push(key);
    }

    // Another process sees every acknowledged write: they were committed.
    let b = ServerProcess::start(&fs.enter(), &env).await;
    let other = b.client().await;
    for key in acknowledged.iter().chain(&later) {
        assert_hit(&other, key, VALUE, "another process").await;
    }

    // And they survive a crash of both.
    a.crash().await;
    b.crash().await;
    let c = ServerProcess::start(&fs.enter(), &env).await;
    let client = c.client().await;
    for key in acknowledged.iter().chain(&later) {
        assert_hit(&client, key, VALUE, "after a restart").await;
    }
    c.crash().await;
}

/// How one call of the drain test ended.
#[derive(Debug)]
enum Ending {
    Acknowledged,
    /// Refused without being carried out: UNAVAILABLE from a server that
    /// is shutting down, or no connection at all.
    Refused,
    /// Anything else: a call the drain lost.
    Lost(String),
}

fn ending(result: Result<proto::PutResponse, ClientError>) -> Ending {
    let error = match result {
        Ok(_) => return Ending::Acknowledged,
        Err(error) => error,
    };
    let text = format!("{error} ({error:?})");
    let refused = match &error {
        ClientError::Connect { .. } => true,
        // The drain's own answer, or the reconnect finding the port closed.
        ClientError::Unavailable(message) => {
            message.contains("shutting down") || message.contains("tcp connect error")
        }
        // Streams the server never took up: above the last stream id of a
        // GOAWAY with NO_ERROR, or still queued in the client when its
        // connection closed or stopped taking requests (hyper's Canceled:
        // never sent). The store check below confirms none was carried out.
        ClientError::Other(_) => {
            text.contains("NO_ERROR, Remote") || text.contains("hyper::Error(Canceled,")
        }
        _ => false,
    };
    if refused {
        Ending::Refused
    } else {
        Ending::Lost(text)
    }
}

/// One drain: writers on four connections, SIGTERM once a few hundred
/// writes are acknowledged, writers on until the process has exited.
/// Returns (acknowledged, refused) keys.
async fn drain_once(round: usize) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("roadie.db");
    let env = [
        ("ROADIE__STORE__URL", format!("sqlite://{}", db.display())),
        ("ROADIE__SERVER__SHUTDOWN_GRACE", "10s".to_owned()),
    ];
    let mut server = ServerProcess::start(&[], &env).await;
    let acked = Arc::new(AtomicU64::new(0));
    // Told once 300 writes are acknowledged: the drain starts under load.
    let enough = Arc::new(tokio::sync::Notify::new());
    let exited = Arc::new(AtomicBool::new(false));
    let endings = Arc::new(Mutex::new(Vec::<(String, Ending, Instant, Duration)>::new()));
    let mut writers = Vec::new();
    for c in 0..4 {
        let client = server.client().await;
        for t in 0..8 {
            let (client, acked, exited, endings, enough) = (
                client.clone(),
                acked.clone(),
                exited.clone(),
                endings.clone(),
                enough.clone(),
            );
            writers.push(tokio::spawn(async move {
                let mut n = 0;
                while !exited.load(Ordering::Acquire) {
                    let key = format!("drain/{c}/{t}/{n}");
                    n += 1;
                    let started = Instant::now();
                    let end = ending(client.put(put(&key, "v")).await);
                    if matches!(end, Ending::Acknowledged)
                        && acked.fetch_add(1, Ordering::AcqRel) + 1 == 300
                    {
                        enough.notify_one();
                    }
                    let refused = matches!(end, Ending::Refused);
                    endings
                        .lock()
                        .expect("lock")
                        .push((key, end, started, started.elapsed()));
                    if refused {
                        // A client backs off before it tries again.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }));
        }
    }
    enough.notified().await;
    let signalled = Instant::now();
    server.signal("-TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("the server exits within its grace")
        .expect("wait");
    let drained_in = signalled.elapsed();
    exited.store(true, Ordering::Release);
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(status.success(), "round {round}: exit {status:?}");
    assert!(
        drained_in < Duration::from_secs(5),
        "round {round}: the drain took {drained_in:?}"
    );

    let endings = std::mem::take(&mut *endings.lock().expect("lock"));
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    let mut lost = Vec::new();
    for (key, end, started, took) in endings {
        match end {
            Ending::Acknowledged => acknowledged.push(key),
            Ending::Refused => {
                assert!(
                    took < Duration::from_secs(1),
                    "round {round}: a refusal took {took:?} ({key})"
                );
                refused.push(key);
            }
            Ending::Lost(why) => lost.push((key, started, took, why)),
        }
    }

    // Every acknowledged write is stored; no refused one is; a lost one is
    // reported with where it stood and whether it was carried out.
    let store = roadie_store::Store::connect(&roadie_store::StoreOptions::new(format!(
        "sqlite://{}",
        db.display()
    )))
    .await
    .expect("open the store");
    if !lost.is_empty() {
        lost.sort_by_key(|(_, started, ..)| *started);
        let keys: Vec<String> = lost.iter().map(|(key, ..)| key.clone()).collect();
        let stored = stored_of(&store, &keys).await;
        let report: Vec<String> = lost
            .iter()
            .map(|(key, started, took, why)| {
                let since = match started.checked_duration_since(signalled) {
                    Some(after) => format!("{after:?} after SIGTERM"),
                    None => format!("{:?} before SIGTERM", signalled - *started),
                };
                let carried = if stored.contains(key) {
                    "stored"
                } else {
                    "not stored"
                };
                format!("{key}: started {since}, failed after {took:?}, {carried}: {why}")
            })
            .collect();
        panic!(
            "round {round}: the drain lost {} calls (the server exited {drained_in:?} after SIGTERM): {report:#?}",
            lost.len()
        );
    }
    let stored = stored_of(&store, &acknowledged).await;
    for key in &acknowledged {
        assert!(
            stored.contains(key),
            "round {round}: acknowledged {key} is not stored"
        );
    }
    let stored = store.entry_get_many(&refused).await.expect("read");
    assert!(
        stored.is_empty(),
        "round {round}: refused writes were stored: {:?}",
        stored.iter().map(|e| &e.key).collect::<Vec<_>>()
    );
    store.close().await;
    (acknowledged, refused)
}

/// Which of `keys` the store holds.
async fn stored_of(store: &roadie_store::Store, keys: &[String]) -> HashSet<String> {
    store
        .entry_get_many(keys)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_calls_and_refuses_new_ones_twenty_times() {
    let mut refused_in_all = 0;
    for round in 0..20 {
        let (_, refused) = drain_once(round).await;
        refused_in_all += refused.len();
    }
    // The writers kept calling through every drain: refusals happened, fast.
    assert!(refused_in_all > 0, "no call was refused in twenty drains");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_wal_stays_bounded_across_repeated_crashes() {
    const LIMIT: u64 = 1 << 20;
    const VALUE: usize = 64 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("roadie.db");
    let wal = dir.path().join("roadie.db-wal");
    let env = [
        ("ROADIE__STORE__URL", format!("sqlite://{}", db.display())),
        ("ROADIE__STORE__WAL_SIZE_LIMIT", LIMIT.to_string()),
    ];
    let mut at_crash = Vec::new();
    let mut written = Vec::new();
    for cycle in 0..6 {
        let server = ServerProcess::start(&[], &env).await;
        let client = server.client().await;
        let stats = client
            .stats(proto::StatsRequest::default())
            .await
            .expect("stats");
        let reported = stats.wal.expect("SQLite reports its WAL");
        assert_eq!(reported.limit_bytes, LIMIT);
        assert!(
            reported.bytes <= LIMIT,
            "cycle {cycle}: the WAL is {} bytes after the start-up checkpoint (limit {LIMIT})",
            reported.bytes
        );
        // 3 MiB of writes (three times the limit), then a crash before any
        // clean close.
        for n in 0..48 {
            let key = format!("wal/{cycle}/{n}");
            let mut request = put(&key, "");
            request.value = value_of(&key, VALUE).into();
            client.put(request).await.expect("put");
            written.push(key);
        }
        server.crash().await;
        at_crash.push(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    // Bounded: the last crash finds a WAL no larger than one cycle's writes.
    assert!(
        at_crash[at_crash.len() - 1] <= at_crash[0] + LIMIT,
        "the WAL grew across crashes: {at_crash:?}"
    );
    let server = ServerProcess::start(&[], &env).await;
    let client = server.client().await;
    for key in &written {
        assert_hit(&client, key, VALUE, "after six crashes").await;
    }
    server.crash().await;
}
