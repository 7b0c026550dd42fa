//! `Cache.Watch` end to end, through the raw gRPC stream: filters, order,
//! progress, resuming without gaps, compaction, slow watchers, and changes
//! made through other servers and by a worker.

use std::time::{Duration, Instant};

use roadie_client::proto::{
    self as pb, ChangeKind, DeleteRequest, FetchMode, InvalidateRequest, WatchRequest,
    WatchResponse, cache_client::CacheClient, invalidate_request::Selector, watch_response::Event,
};
use roadie_store::{Backend, Store, testing::TestDb};
use tonic::{Code, Streaming, transport::Channel};

use crate::common::{on_both_backends, put, start};

/// A raw Cache stub on `addr`.
pub(crate) async fn stub(addr: impl std::fmt::Display) -> CacheClient<Channel> {
    CacheClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

/// Opens a watch and returns it with the revision of its first message,
/// which is always a progress message.
pub(crate) async fn open(
    stub: &mut CacheClient<Channel>,
    request: WatchRequest,
) -> (Streaming<WatchResponse>, u64) {
    let mut stream = stub.watch(request).await.expect("watch").into_inner();
    match next(&mut stream).await {
        Event::Progress(p) => (stream, p.revision),
        other => panic!("the first message is progress, got {other:?}"),
    }
}

/// The next message, within 20 s.
pub(crate) async fn next(stream: &mut Streaming<WatchResponse>) -> Event {
    let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a message within 20 s")
        .expect("no error")
        .expect("the stream goes on");
    message.event.expect("an event")
}

/// The next change, skipping progress messages.
pub(crate) async fn next_change(stream: &mut Streaming<WatchResponse>) -> pb::Change {
    loop {
        if let Event::Change(change) = next(stream).await {
            return change;
        }
    }
}

fn kind(change: &pb::Change) -> ChangeKind {
    ChangeKind::try_from(change.kind).expect("kind")
}

async fn filters_order_values_and_progress(backend: Backend) {
    let server = start!(backend, |s| {
        s.watch.progress_interval = Duration::from_millis(200);
    });
    let c = &server.client;
    let mut raw = stub(server.addr).await;
    let (mut all, start) = open(&mut raw, WatchRequest::default()).await;
    assert_eq!(start, 0, "a new store starts at revision 0");
    let (mut artists, _) = open(
        &mut raw,
        WatchRequest {
            key_prefix: "artist:".to_owned(),
            kinds: vec![ChangeKind::Put as i32, ChangeKind::Delete as i32],
            include_values: true,
            ..Default::default()
        },
    )
    .await;
    let (mut tagged, _) = open(
        &mut raw,
        WatchRequest {
            tags: vec!["blue".to_owned()],
            policies: vec!["generic".to_owned()],
            ..Default::default()
        },
    )
    .await;

    c.put(put("artist:a", "A")).await.expect("put");
    let mut blue = put("album:b", "B");
    blue.tags = vec!["blue".to_owned()];
    c.put(blue).await.expect("put");
    // Values are read when the tail reads the change: take this one before
    // the delete below replaces it (a replaced entry comes without value).
    let first = next_change(&mut artists).await;
    assert_eq!((first.revision, kind(&first)), (1, ChangeKind::Put));
    let entry = first.entry.expect("values were asked for");
    assert_eq!(entry.value.as_ref(), b"A");
    assert_eq!(entry.revision, 1);
    c.delete(DeleteRequest {
        key: "artist:a".to_owned(),
        ..Default::default()
    })
    .await
    .expect("delete");
    let invalidated = c
        .invalidate(InvalidateRequest {
            selector: Some(Selector::All(true)),
        })
        .await
        .expect("invalidate");
    assert_eq!(invalidated.revision, 4);

    let mut seen = Vec::new();
    for _ in 0..4 {
        let change = next_change(&mut all).await;
        seen.push((change.revision, kind(&change), change.key));
    }
    assert_eq!(
        seen,
        vec![
            (1, ChangeKind::Put, "artist:a".to_owned()),
            (2, ChangeKind::Put, "album:b".to_owned()),
            (3, ChangeKind::Delete, "artist:a".to_owned()),
            (4, ChangeKind::Invalidate, "album:b".to_owned()),
        ]
    );

    let second = next_change(&mut artists).await;
    assert_eq!((second.revision, kind(&second)), (3, ChangeKind::Delete));
    assert!(second.entry.is_none());
    // Nothing else matches; idle progress moves the resume point past the rest.
    loop {
        match next(&mut artists).await {
            Event::Progress(p) if p.revision == 4 => break,
            Event::Progress(p) => assert!(p.revision >= 3),
            Event::Change(c) => panic!("filtered out: {c:?}"),
        }
    }

    let blue_put = next_change(&mut tagged).await;
    assert_eq!(
        (blue_put.revision, blue_put.tags.clone()),
        (2, vec!["blue".to_owned()])
    );
    assert!(blue_put.entry.is_none(), "values were not asked for");
    assert_eq!(next_change(&mut tagged).await.revision, 4);

    // Resuming after 2 replays 3 and 4 from the log.
    let (mut resumed, from) = open(
        &mut raw,
        WatchRequest {
            after_revision: Some(2),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(from, 2);
    assert_eq!(next_change(&mut resumed).await.revision, 3);
    assert_eq!(next_change(&mut resumed).await.revision, 4);

    // Shutdown ends every stream with UNAVAILABLE and where to resume.
    server.stop().await;
    let ended = loop {
        match all.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream must end with a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("after_revision 4"), "{ended:?}");
}

async fn bad_filters_name_the_field(backend: Backend) {
    let server = start!(backend);
    let mut raw = stub(server.addr).await;
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
                providers: vec!["musicbrainz".to_owned(), "nope".to_owned()],
                ..Default::default()
            },
            "providers[1]",
        ),
        (
            WatchRequest {
                kinds: vec![ChangeKind::Unspecified as i32],
                ..Default::default()
            },
            "kinds[0]",
        ),
        (
            WatchRequest {
                kinds: vec![99],
                ..Default::default()
            },
            "kinds[0]",
        ),
        (
            WatchRequest {
                key_prefix: "k".repeat(2000),
                ..Default::default()
            },
            "key_prefix",
        ),
    ] {
        let status = raw.watch(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            roadie_proto::violated_field(&status)
                .map(|(f, _)| f)
                .as_deref(),
            Some(field)
        );
    }
    server.stop().await;
}

/// Fifty times: watch from the last revision seen, read a few messages,
/// drop the stream, while two writers keep writing. The revisions received
/// are exactly the log's.
async fn fifty_drops_and_resumes_lose_nothing(backend: Backend) {
    let server = start!(backend, |s| {
        s.watch.progress_interval = Duration::from_millis(50);
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..2 {
        let (client, stop) = (server.client.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.is_cancelled() {
                let key = format!("w{w}:{}", i % 17);
                if i % 5 == 4 {
                    let _ = client
                        .delete(DeleteRequest {
                            key,
                            ..Default::default()
                        })
                        .await
                        .expect("delete");
                } else {
                    client.put(put(&key, &i.to_string())).await.expect("put");
                }
                i += 1;
            }
        }));
    }
    let mut raw = stub(server.addr).await;
    let mut received = Vec::new();
    let mut last = 0;
    for round in 0..50 {
        let (mut stream, from) = open(
            &mut raw,
            WatchRequest {
                after_revision: Some(last),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(from, last);
        for _ in 0..(1 + round % 7) {
            match next(&mut stream).await {
                Event::Change(change) => {
                    received.push(change.revision);
                    last = change.revision;
                }
                Event::Progress(p) => last = p.revision,
            }
        }
        drop(stream);
    }
    stop.cancel();
    for writer in writers {
        writer.await.expect("writer");
    }
    let end = server.store().revision_current().await.expect("revision");
    assert!(end > 50, "the writers wrote while we watched ({end})");
    let (mut stream, _) = open(
        &mut raw,
        WatchRequest {
            after_revision: Some(last),
            ..Default::default()
        },
    )
    .await;
    while last < end {
        let change = next_change(&mut stream).await;
        received.push(change.revision);
        last = change.revision;
    }
    let log: Vec<u64> = server
        .store()
        .change_list_since(0, 1_000_000)
        .await
        .expect("log")
        .iter()
        .map(|c| c.revision)
        .collect();
    assert_eq!(received, log, "no gap, no duplicate, in order");
    server.stop().await;
}

async fn a_compacted_start_is_out_of_range(backend: Backend) {
    let server = start!(backend, |s| s.watch.retention_count = 10);
    for i in 0..30 {
        server
            .client
            .put(put(&format!("k{i}"), "v"))
            .await
            .expect("put");
    }
    let report = server
        .app
        .maintenance()
        .run_once()
        .await
        .expect("maintenance");
    assert_eq!(report.compacted, 20);
    let mut raw = stub(server.addr).await;
    let status = raw
        .watch(WatchRequest {
            after_revision: Some(1),
            ..Default::default()
        })
        .await
        .expect_err("compacted");
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(roadie_proto::compacted_oldest(&status), Some(21));
    assert!(status.message().contains("21"), "{status:?}");
    // The oldest retained revision's predecessor is still a valid start.
    let (mut stream, from) = open(
        &mut raw,
        WatchRequest {
            after_revision: Some(20),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(from, 20);
    for expected in 21..=30 {
        assert_eq!(next_change(&mut stream).await.revision, expected);
    }
    server.stop().await;
}

/// A watcher that stops reading is cut off with RESOURCE_EXHAUSTED once it
/// is `watch.buffer` changes behind; the one beside it gets everything.
async fn a_slow_watcher_is_cut_off_alone(backend: Backend) {
    // Progress every millisecond, so ticks fall among the changes: a tick
    // that came after the slow watcher's queue was cut off moved the
    // revision it was told to resume after past the last change it was
    // sent (seen under load in CI; the race is the scheduler's, so this
    // makes it likely, not certain).
    let server = start!(backend, |s| {
        s.watch.buffer = 64;
        s.watch.progress_interval = Duration::from_millis(1);
    });
    let mut raw = stub(server.addr).await;
    let request = WatchRequest {
        include_values: true,
        ..Default::default()
    };
    let (mut slow, _) = open(&mut raw, request.clone()).await;
    let (mut fast, _) = open(&mut raw, request).await;
    const WRITES: u64 = 2000;
    // The writer stays at most 16 changes ahead of the fast watcher's
    // reads, well inside its buffer of 64 however the machine schedules
    // the two tasks: only the slow watcher can fall behind.
    let ahead = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let writer = {
        let (client, ahead) = (server.client.clone(), ahead.clone());
        tokio::spawn(async move {
            let value = "x".repeat(2048);
            for i in 0..WRITES {
                ahead.acquire().await.expect("permit").forget();
                client
                    .put(put(&format!("k{i}"), &value))
                    .await
                    .expect("put");
            }
        })
    };
    for expected in 1..=WRITES {
        assert_eq!(next_change(&mut fast).await.revision, expected);
        ahead.add_permits(1);
    }
    writer.await.expect("writer");
    let mut got = 0;
    let status = loop {
        match slow.message().await {
            Ok(Some(WatchResponse {
                event: Some(Event::Change(change)),
            })) => {
                got += 1;
                assert_eq!(change.revision, got, "in order up to the cut");
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the slow watcher must be told why it ends"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(got < WRITES, "cut off before the end ({got})");
    assert!(
        status.message().contains(&format!("after_revision {got}")),
        "names where to resume: {status:?}"
    );
    server.stop().await;
}

/// One client may hold `watch.max_per_client` watches; the next is refused
/// with RESOURCE_EXHAUSTED naming the setting, and closing one makes room.
/// Watchers of other keys and of tags see only their own changes.
async fn watches_per_client_are_capped(backend: Backend) {
    let server = start!(backend, |s| s.watch.max_per_client = 2);
    let mut stub = stub(server.addr).await;
    let request = |prefix: &str| WatchRequest {
        key_prefix: prefix.to_owned(),
        ..Default::default()
    };
    let (mut mine, _) = open(&mut stub, request("mine/")).await;
    let (other, _) = open(&mut stub, request("other/")).await;
    let refused = stub
        .watch(request("third/"))
        .await
        .expect_err("a third watch is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("watch.max_per_client"),
        "{}",
        refused.message()
    );

    server.client.put(put("other/1", "x")).await.expect("put");
    let written = server.client.put(put("mine/1", "y")).await.expect("put");
    match next(&mut mine).await {
        Event::Change(change) => {
            assert_eq!(
                (change.key.as_str(), change.revision),
                ("mine/1", written.revision)
            );
        }
        other => panic!("expected mine/1, got {other:?}"),
    }

    drop(other);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let watchers = server
            .client
            .stats(Default::default())
            .await
            .expect("stats")
            .watchers;
        if watchers == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the closed watch still counts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open(&mut stub, request("third/")).await;
    server.stop().await;
}

/// A server hands its own batches of Puts to its watchers as it commits
/// them, without reading them back from the log; another server's commits
/// falling between them are read from the log. A watcher on A sees every
/// Put made through A and through B, each once, at the revision its Put
/// answered, in revision order without a gap.
async fn own_and_other_servers_writes_reach_a_watcher_in_order(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (upstream, _) = crate::fetch::upstream().await;
    let a = crate::fetch::ServerProcess::start(&db.url, upstream).await;
    let b = crate::fetch::ServerProcess::start(&db.url, upstream).await;
    let mut on_a = stub(&a.addr).await;
    let (mut stream, _) = open(&mut on_a, WatchRequest::default()).await;

    const LANES: usize = 4;
    const EACH: usize = 25;
    let mut lanes = tokio::task::JoinSet::new();
    for (server, addr) in [("a", &a.addr), ("b", &b.addr)] {
        for lane in 0..LANES {
            let addr = addr.clone();
            lanes.spawn(async move {
                let client =
                    roadie_client::connect(format!("http://{addr}"), Duration::from_secs(5))
                        .await
                        .expect("connect");
                let mut written = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let key = format!("order:{server}:{lane}:{i}");
                    let put = client.put(put(&key, "v")).await.expect("put");
                    written.push((put.revision, key));
                }
                written
            });
        }
    }
    let mut written: Vec<(u64, String)> = lanes.join_all().await.into_iter().flatten().collect();
    written.sort();

    // Progress messages keep coming while a change is missing: the whole
    // collection has a deadline, not each message.
    let mut seen = Vec::with_capacity(written.len());
    let collected = tokio::time::timeout(Duration::from_secs(20), async {
        while seen.len() < written.len() {
            let change = next_change(&mut stream).await;
            seen.push((change.revision, change.key));
        }
    })
    .await;
    assert!(
        collected.is_ok(),
        "{} of {} changes within 20 s, the last {:?}",
        seen.len(),
        written.len(),
        seen.last()
    );
    assert_eq!(seen, written, "every Put once, at its revision, in order");
    assert!(
        seen.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "no gap between revisions"
    );

    drop((a, b));
    db.finish().await;
}

on_both_backends!(
    own_and_other_servers_writes_reach_a_watcher_in_order,
    watches_per_client_are_capped,
    filters_order_values_and_progress,
    bad_filters_name_the_field,
    fifty_drops_and_resumes_lose_nothing,
    a_compacted_start_is_out_of_range,
    a_slow_watcher_is_cut_off_alone,
    changes_through_one_server_and_a_worker_reach_the_other,
);

/// Two `roadie-server` processes on one database and a worker: a watcher
/// on B sees a Put made through A and the worker's fetch result, in order.
async fn changes_through_one_server_and_a_worker_reach_the_other(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (upstream, _) = crate::fetch::upstream().await;
    let store: Store = db.store().await;
    let a = crate::fetch::ServerProcess::start(&db.url, upstream).await;
    let b = crate::fetch::ServerProcess::start(&db.url, upstream).await;
    let (stop, worker) = crate::fetch::start_worker(store.clone(), upstream);

    let mut on_b = stub(&b.addr).await;
    let (mut stream, _) = open(
        &mut on_b,
        WatchRequest {
            include_values: true,
            ..Default::default()
        },
    )
    .await;
    let through_a = roadie_client::connect(format!("http://{}", a.addr), Duration::from_secs(5))
        .await
        .expect("connect");
    let started = Instant::now();
    let written = through_a.put(put("artist:x", "X")).await.expect("put");
    through_a
        .fetch(crate::fetch::fetch("item/7", FetchMode::Background))
        .await
        .expect("fetch");

    let first = next_change(&mut stream).await;
    assert_eq!(
        (first.revision, kind(&first), first.key.as_str()),
        (written.revision, ChangeKind::Put, "artist:x")
    );
    let second = next_change(&mut stream).await;
    assert_eq!(kind(&second), ChangeKind::Fetch, "{second:?}");
    assert_eq!(second.key, format!("http://{upstream}/api/item/7"));
    assert_eq!(second.provider, "test");
    assert!(second.revision > first.revision);
    assert_eq!(
        second.entry.expect("value").value.as_ref(),
        b"item 7",
        "the worker's result, as written"
    );
    eprintln!("put and fetch seen through B after {:?}", started.elapsed());

    stop.cancel();
    worker.await.expect("worker");
    drop((a, b));
    store.close().await;
    db.finish().await;
}
