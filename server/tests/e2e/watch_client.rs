//! The Rust client's resuming [`Watch`] and `roadie watch` against a real
//! server: changes in order after the first progress message, resumption
//! across a server restart with nothing lost or repeated, a compacted
//! revision reported with the oldest one retained, and the CLI's output.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use roadie_client::cli::{self, Cli, Exit};
use roadie_client::proto::{self as pb, ChangeKind, DeleteRequest, WatchRequest};
use roadie_client::{Client, ClientError, Watch, WatchEvent};
use roadie_server::{App, ServerError, config::Settings};
use roadie_store::{Backend, PutResult, testing::TestDb};
use tokio::{sync::oneshot, task::JoinHandle};

use crate::common::{TestServer, on_both_backends, put, start, stored};

/// The next event, which must come within 20 s.
async fn next(watch: &mut Watch) -> Option<Result<WatchEvent, ClientError>> {
    tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("a watch event within 20 s")
}

/// Waits for the stream's opening progress message: once it is in, every
/// later change is certain to be delivered.
async fn first_progress(watch: &mut Watch) -> u64 {
    match next(watch).await {
        Some(Ok(WatchEvent::Progress(revision))) => revision,
        other => panic!("the first event is progress, got {other:?}"),
    }
}

/// The next change, skipping progress messages and reconnects.
async fn next_change(watch: &mut Watch) -> pb::Change {
    loop {
        match next(watch).await {
            Some(Ok(WatchEvent::Change(change))) => return change,
            Some(Ok(WatchEvent::Progress(_) | WatchEvent::Reconnecting { .. })) => {}
            Some(Err(error)) => panic!("watch failed: {error}"),
            None => panic!("watch ended"),
        }
    }
}

/// The next `count` changes as (revision, key).
async fn changes(watch: &mut Watch, count: usize) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let change = next_change(watch).await;
        seen.push((change.revision, change.key));
    }
    seen
}

async fn put_at(client: &Client, key: &str) -> (u64, String) {
    let response = client.put(put(key, "v")).await.expect("put");
    (response.revision, key.to_owned())
}

async fn changes_after_the_first_progress_arrive_in_order(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    let before = put_at(c, "before").await;
    let mut watch = c.watch(WatchRequest {
        include_values: true,
        ..Default::default()
    });
    assert_eq!(watch.revision(), None);
    let start = first_progress(&mut watch).await;
    assert_eq!(watch.revision(), Some(start));
    // "Now" is where the server's feed is, which may not have taken in the
    // write just acknowledged: then that write follows as a change, since
    // every change after the start position is delivered.
    assert!(start <= before.0, "{start}");
    let mut written = Vec::new();
    if before.0 > start {
        written.push(before);
    }
    for key in ["a", "b", "c", "a"] {
        written.push(put_at(c, key).await);
    }
    assert_eq!(changes(&mut watch, written.len()).await, written);
    assert_eq!(
        watch.revision(),
        written.last().map(|(revision, _)| *revision)
    );

    // The change carries what a consumer mirrors, value included.
    let (revision, _) = put_at(c, "d").await;
    let change = next_change(&mut watch).await;
    assert_eq!(change.revision, revision);
    assert_eq!(change.key, "d");
    assert_eq!(change.kind(), ChangeKind::Put);
    assert_eq!(change.policy, "generic");
    let entry = change.entry.expect("values were asked for");
    assert_eq!(&entry.value[..], b"v");
    assert_eq!(entry.revision, revision);
    drop(watch);
    server.stop().await;
}

async fn filters_apply_and_bad_ones_end_the_watch(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    let mut watch = c.watch(WatchRequest {
        key_prefix: "a/".to_owned(),
        kinds: vec![ChangeKind::Delete as i32],
        ..Default::default()
    });
    first_progress(&mut watch).await;
    for key in ["a/1", "b/1"] {
        c.put(put(key, "v")).await.expect("put");
    }
    let delete = |key: &str| DeleteRequest {
        key: key.to_owned(),
        if_revision: None,
    };
    c.delete(delete("b/1")).await.expect("delete b/1");
    let deleted = c.delete(delete("a/1")).await.expect("delete a/1");
    // Nothing else matches, so the next change is this one.
    let change = next_change(&mut watch).await;
    assert_eq!(change.revision, deleted.revision);
    assert_eq!(change.key, "a/1");
    assert_eq!(change.kind(), ChangeKind::Delete);
    drop(watch);

    for (request, field) in [
        (
            WatchRequest {
                policies: vec!["nope".to_owned()],
                ..Default::default()
            },
            "policies[0]",
        ),
        (
            WatchRequest {
                kinds: vec![ChangeKind::Unspecified as i32],
                ..Default::default()
            },
            "kinds[0]",
        ),
    ] {
        let mut watch = c.watch(request);
        match next(&mut watch).await {
            Some(Err(error)) => {
                assert_eq!(error.code(), Some(tonic::Code::InvalidArgument), "{error}");
                assert_eq!(error.field(), Some(field), "{error}");
            }
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
        assert!(next(&mut watch).await.is_none(), "the watch ended");
    }
    server.stop().await;
}

/// A server over an existing database on a chosen address, so that a test
/// can stop it and start another on the same database and port.
struct Instance {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ServerError>>,
}

impl Instance {
    async fn start(db: &TestDb, addr: SocketAddr) -> Instance {
        let mut settings = Settings::default();
        settings.store.url = db.url.clone();
        settings.server.shutdown_grace = Duration::from_secs(5);
        settings.validate().expect("test settings are valid");
        let app = App::open(settings).await.expect("open the server");
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Instance { addr, stop, handle }
    }

    /// Stops the server and waits until it has let go of its port.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.handle
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

async fn connect(addr: SocketAddr) -> Client {
    roadie_client::connect(format!("http://{addr}"), Duration::from_secs(5))
        .await
        .expect("connect")
}

async fn a_watch_resumes_across_a_server_restart_losing_and_repeating_nothing(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let first = Instance::start(&db, "127.0.0.1:0".parse().expect("address")).await;
    let addr = first.addr;
    let client = connect(addr).await;
    let mut watch = client
        .watch(WatchRequest::default())
        .with_backoff(Duration::from_millis(10), Duration::from_millis(200));
    first_progress(&mut watch).await;
    let mut before = Vec::new();
    for key in ["a1", "a2"] {
        before.push(put_at(&client, key).await);
    }
    assert_eq!(changes(&mut watch, 2).await, before);

    first.stop().await;
    // The stream broke; the watch says so and will resume after a2.
    loop {
        match next(&mut watch).await {
            Some(Ok(WatchEvent::Reconnecting { after, .. })) => {
                assert_eq!(after, Some(before[1].0));
                break;
            }
            Some(Ok(WatchEvent::Progress(_))) => {}
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }

    // Written while no server runs, straight into the store.
    let store = db.store().await;
    let mut expected = Vec::new();
    for key in ["b1", "b2", "b3"] {
        match store
            .entry_put(&stored(key, None, false))
            .await
            .expect("put")
        {
            PutResult::Written { revision, .. } => expected.push((revision, key.to_owned())),
            other => panic!("not written: {other:?}"),
        }
    }
    store.close().await;

    let second = Instance::start(&db, addr).await;
    assert_eq!(second.addr, addr);
    // A fresh client for writing: the watch's own must find its way back
    // by itself.
    let writer = connect(addr).await;
    expected.push(put_at(&writer, "c1").await);
    assert_eq!(changes(&mut watch, 4).await, expected);
    // Nothing repeated after them either: the next change is the next write.
    let (last, key) = put_at(&writer, "d1").await;
    assert_eq!(changes(&mut watch, 1).await, [(last, key)]);
    assert_eq!(watch.revision(), Some(last));

    drop(watch);
    second.stop().await;
    db.finish().await;
}

async fn a_compacted_revision_ends_the_watch_naming_the_oldest_retained(backend: Backend) {
    let server = start!(backend, |s: &mut Settings| s.watch.retention_count = 3);
    let c = &server.client;
    let mut written = Vec::new();
    for i in 0..10 {
        written.push(put_at(c, &format!("k{i}")).await);
    }
    server
        .app
        .maintenance()
        .run_once()
        .await
        .expect("maintenance pass");
    let oldest = server.store().change_oldest().await.expect("oldest");
    assert!(oldest > 2, "compaction kept revision {oldest}");

    let mut watch = c.watch(WatchRequest {
        after_revision: Some(1),
        ..Default::default()
    });
    match next(&mut watch).await {
        Some(Err(ClientError::Compacted {
            after,
            oldest: named,
        })) => {
            assert_eq!((after, named), (1, oldest));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(next(&mut watch).await.is_none(), "the watch ended");

    // From just before the oldest retained revision, nothing is missing.
    let mut watch = c.watch(WatchRequest {
        after_revision: Some(oldest - 1),
        ..Default::default()
    });
    assert_eq!(first_progress(&mut watch).await, oldest - 1);
    let retained: Vec<_> = written
        .into_iter()
        .filter(|(revision, _)| *revision >= oldest)
        .collect();
    assert_eq!(changes(&mut watch, retained.len()).await, retained);
    drop(watch);

    // The CLI says which revision is the oldest and how to go on.
    let (exit, out, err) = roadie(&server, &["watch", "--from", "1"]).await;
    assert_eq!(exit, Exit::Error, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("oldest retained revision is {oldest}")),
        "{err}"
    );
    assert!(err.contains("roadie watch --from"), "{err}");
    server.stop().await;
}

/// Runs `roadie ARGS…` against `server`; returns exit, stdout, stderr.
async fn roadie(server: &TestServer, args: &[&str]) -> (Exit, String, String) {
    let url = format!("http://{}", server.addr);
    let mut argv = vec!["roadie", "--server", url.as_str()];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("valid command line");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = tokio::time::timeout(
        Duration::from_secs(20),
        cli::run(cli, &mut std::io::empty(), &mut out, &mut err),
    )
    .await
    .expect("roadie returns within 20 s");
    (
        exit,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

async fn cli_watch_prints_one_line_per_change(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    let from = c.stats(pb::StatsRequest {}).await.expect("stats").revision;
    let mut written = Vec::new();
    for key in ["x/1", "x/2", "x/3"] {
        let mut request = put(key, "v");
        request.tags = vec!["t:a".to_owned(), "t:b".to_owned()];
        let response = c.put(request).await.expect("put");
        written.push((response.revision, key));
    }
    let from = from.to_string();

    let (exit, out, err) = roadie(
        &server,
        &["--json", "watch", "--from", &from, "--count", "3"],
    )
    .await;
    assert_eq!(exit, Exit::Success, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (line, (revision, key)) in lines.iter().zip(&written) {
        assert_eq!(line["event"], "change", "{line}");
        assert_eq!(line["revision"], *revision, "{line}");
        assert_eq!(line["key"], *key, "{line}");
        assert_eq!(line["kind"], "put", "{line}");
        assert_eq!(line["tags"][1], "t:b", "{line}");
    }

    let (exit, out, err) = roadie(
        &server,
        &["watch", "--from", &from, "--count", "1", "--prefix", "x/2"],
    )
    .await;
    assert_eq!(exit, Exit::Success, "{err}");
    assert_eq!(
        out,
        format!("{} put x/2 policy=generic tags=t:a,t:b\n", written[1].0)
    );

    let (exit, out, err) = roadie(&server, &["watch", "--policy", "nope"]).await;
    assert_eq!(exit, Exit::Error, "{out}");
    assert!(err.contains("policies[0]"), "{err}");
    server.stop().await;
}

/// A consumer too slow for the server is cut off with RESOURCE_EXHAUSTED;
/// the client resumes from the last revision it handed out, and the
/// consumer still sees every change once, in order.
async fn a_slow_consumer_is_cut_off_and_resumes_losing_nothing(backend: Backend) {
    let server = start!(backend, |s| s.watch.buffer = 32);
    let mut watch = server.client.watch(WatchRequest {
        include_values: true,
        ..Default::default()
    });
    assert_eq!(first_progress(&mut watch).await, 0);
    const WRITES: u64 = 1500;
    // Written while nobody reads the watch: the server's ring overflows.
    let value = "x".repeat(2048);
    for i in 0..WRITES {
        server
            .client
            .put(put(&format!("k{i}"), &value))
            .await
            .expect("put");
    }
    let mut revisions = Vec::new();
    let mut cut_off = 0;
    while revisions.len() < WRITES as usize {
        match next(&mut watch).await {
            Some(Ok(WatchEvent::Change(change))) => revisions.push(change.revision),
            Some(Ok(WatchEvent::Reconnecting { cause, .. })) => {
                assert!(
                    matches!(cause, ClientError::ResourceExhausted(_)),
                    "{cause:?}"
                );
                cut_off += 1;
            }
            Some(Ok(WatchEvent::Progress(_))) => {}
            other => panic!("watch failed: {other:?}"),
        }
    }
    assert!(cut_off >= 1, "the server cut the slow stream");
    assert_eq!(revisions, (1..=WRITES).collect::<Vec<_>>());
    server.stop().await;
}

on_both_backends!(
    a_slow_consumer_is_cut_off_and_resumes_losing_nothing,
    changes_after_the_first_progress_arrive_in_order,
    filters_apply_and_bad_ones_end_the_watch,
    a_watch_resumes_across_a_server_restart_losing_and_repeating_nothing,
    a_compacted_revision_ends_the_watch_naming_the_oldest_retained,
    cli_watch_prints_one_line_per_change,
);
