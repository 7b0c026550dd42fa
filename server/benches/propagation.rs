//! Change propagation: how long from a Put through one `roadie-server`
//! process until a watcher on another `roadie-server` process has the
//! change, on SQLite (one file shared by both) and on Postgres.
//!
//! ```text
//! cargo bench -p roadie-server --bench propagation
//! ```
//!
//! Puts are paced (one every 5 ms) so the figure is latency, not queueing.
//! Each backend runs twice: with the measuring watcher alone on server B,
//! and with 999 more watchers on B (one tail and one ring serve them all;
//! the figure shows what the fan-out costs the last in line).
//! Two clocks per change: from the Put leaving the client (includes the
//! write itself) and from the Put's answer (the commit is behind it; a
//! watcher can be told before the writer is, which counts as 0).
//! Postgres must run at 127.0.0.1:5432 (or `ROADIE_TEST_POSTGRES_URL`).

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use roadie_client::proto::{self as pb, cache_client::CacheClient, watch_response::Event};
use roadie_store::{Backend, testing::TestDb};

const SAMPLES: usize = 1000;
const PACE: Duration = Duration::from_millis(5);

struct Server {
    _child: tokio::process::Child,
    addr: String,
}

async fn spawn_server(url: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = std::env::temp_dir();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_roadie-server"))
        .current_dir(dir)
        .env("ROADIE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("ROADIE__STORE__URL", url)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn roadie-server");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = roadie_client::connect(addr.clone(), Duration::from_secs(1)).await
            && client.stats(pb::StatsRequest::default()).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "roadie-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        _child: child,
        addr,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Opens `count` more watchers on `addr` (over several connections, as
/// many clients would), each draining its stream until it ends.
async fn crowd(addr: &str, count: usize) -> Vec<tokio::task::JoinHandle<()>> {
    const PER_CONNECTION: usize = 100;
    let mut readers = Vec::with_capacity(count);
    let mut stubs = Vec::new();
    for i in 0..count {
        if i % PER_CONNECTION == 0 {
            let stub = CacheClient::connect(format!("http://{addr}"))
                .await
                .expect("connect");
            stubs.push(stub);
        }
        let stub = stubs.last_mut().expect("connected above");
        let mut stream = stub
            .watch(pb::WatchRequest::default())
            .await
            .expect("watch")
            .into_inner();
        stream.message().await.expect("progress").expect("open");
        readers.push(tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {}
        }));
    }
    readers
}

async fn measure(backend: Backend, others: usize) -> Option<(Vec<Duration>, Vec<Duration>)> {
    let db = TestDb::new(backend).await?;
    // Migrate once before two processes start on the database.
    db.store().await.close().await;
    let a = spawn_server(&db.url).await;
    let b = spawn_server(&db.url).await;
    let crowd = crowd(&b.addr, others).await;

    let mut watch_stub = CacheClient::connect(format!("http://{}", b.addr))
        .await
        .expect("connect to B");
    let mut stream = watch_stub
        .watch(pb::WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    // The first message says the watch is live.
    stream.message().await.expect("progress").expect("open");

    let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut changes = 0;
            while changes < SAMPLES {
                let message = stream.message().await.expect("stream").expect("open");
                if let Some(Event::Change(change)) = message.event {
                    let now = Instant::now();
                    seen.lock().expect("lock").insert(change.revision, now);
                    changes += 1;
                }
            }
        })
    };

    let writer = roadie_client::connect(a.addr.clone(), Duration::from_secs(5))
        .await
        .expect("connect to A");
    let mut sent = Vec::with_capacity(SAMPLES);
    let mut pace = tokio::time::interval(PACE);
    for i in 0..SAMPLES {
        pace.tick().await;
        let started = Instant::now();
        let answer = writer
            .put(pb::PutRequest {
                key: format!("bench:{i}"),
                value: b"value".to_vec().into(),
                ..Default::default()
            })
            .await
            .expect("put");
        sent.push((answer.revision, started, Instant::now()));
    }
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("every change arrives")
        .expect("reader");
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    let mut from_send = Vec::new();
    let mut from_ack = Vec::new();
    for (revision, started, acked) in sent {
        let at = seen[&revision];
        from_send.push(at.saturating_duration_since(started));
        from_ack.push(at.saturating_duration_since(acked));
    }
    from_send.sort();
    from_ack.sort();
    drop((a, b));
    for reader in crowd {
        reader.abort();
    }
    db.finish().await;
    Some((from_send, from_ack))
}

#[tokio::main]
async fn main() {
    println!(
        "Change propagation, Put through server A -> watcher on server B \
         ({SAMPLES} puts, one every {PACE:?}), milliseconds"
    );
    println!(
        "{:<9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "backend", "watchers", "p50 sent", "p99 sent", "p50 acked", "p99 acked", "max acked"
    );
    for (backend, watchers) in [
        (Backend::Sqlite, 1),
        (Backend::Sqlite, 1000),
        (Backend::Postgres, 1),
        (Backend::Postgres, 1000),
    ] {
        let Some((from_send, from_ack)) = measure(backend, watchers - 1).await else {
            println!("{:<9} skipped: Postgres unreachable", backend.name());
            continue;
        };
        println!(
            "{:<9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
            backend.name(),
            watchers,
            ms(percentile(&from_send, 0.50)),
            ms(percentile(&from_send, 0.99)),
            ms(percentile(&from_ack, 0.50)),
            ms(percentile(&from_ack, 0.99)),
            ms(percentile(&from_ack, 1.0)),
        );
    }
    println!("command: cargo bench -p roadie-server --bench propagation");
}
