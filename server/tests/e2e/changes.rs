//! The change log holds exactly one row per changed entry, for every write
//! path, in revision order.

use roadie_client::proto::{
    self as pb, DeleteRequest, InvalidateRequest, PublishEventRequest, invalidate_request::Selector,
};
use roadie_store::{Backend, ChangeKind, now_ms};

use std::time::Duration;

use crate::{
    common::{on_both_backends, put, start, stored},
    fetch::ServerProcess,
};

async fn every_write_path_logs_one_row_per_change(backend: Backend) {
    let server = start!(backend, |s| s
        .policies
        .get_mut("generic")
        .expect("generic")
        .max_bytes = 250);
    let c = &server.client;
    let store = server.store();

    // Put: one row each; refused writes log nothing.
    let mut strong = put("a", "1");
    strong.confidence = 90;
    strong.policy = "api_metadata".to_owned();
    c.put(strong).await.expect("put a");
    let mut weak = put("a", "2");
    weak.keep_higher_confidence = true;
    c.put(weak).await.expect("refused put");
    let mut cas = put("a", "3");
    cas.if_revision = Some(999);
    c.put(cas).await.expect("refused cas");
    c.put(put("b", "1")).await.expect("put b");
    // Delete: one row; an absent key logs nothing.
    c.delete(DeleteRequest {
        key: "b".to_owned(),
        if_revision: None,
    })
    .await
    .expect("delete");
    c.delete(DeleteRequest {
        key: "b".to_owned(),
        if_revision: None,
    })
    .await
    .expect("delete absent");
    // Invalidate: one row per entry that went.
    for key in ["p/1", "p/2", "p/3"] {
        c.put(put(key, "v")).await.expect("put");
    }
    c.invalidate(InvalidateRequest {
        selector: Some(Selector::KeyPrefix("p/".to_owned())),
    })
    .await
    .expect("invalidate");
    // Event: one row per entry its rules removed.
    let mut track = put("t/1", "v");
    track.policy = "track_metadata".to_owned();
    track.tags = vec!["track:1".to_owned()];
    c.put(track).await.expect("put");
    c.publish_event(PublishEventRequest {
        kind: pb::LibraryEventKind::TrackRemoved as i32,
        track_id: "1".to_owned(),
        ..Default::default()
    })
    .await
    .expect("event");
    // Expiry: an entry long past its stale window.
    let mut old = stored("old", Some(now_ms() - 30 * 86_400_000), false);
    old.policy = "api_metadata".to_owned();
    store.entry_put(&old).await.expect("store put");
    old.key = "old2".to_owned();
    store.entry_put(&old).await.expect("store put");
    let report = server
        .app
        .maintenance()
        .run_once()
        .await
        .expect("maintenance");
    assert_eq!(report.expired, 2);
    // Eviction: 3 × 100 bytes in a 250-byte budget → down to 200 (threshold 0.8).
    for key in ["e/1", "e/2", "e/3"] {
        c.put(put(key, &"x".repeat(100))).await.expect("put");
    }
    // Writes also wake eviction in the background; either pass may do it.
    server
        .app
        .maintenance()
        .enforce_budgets()
        .await
        .expect("evict");

    let log = store.change_list_since(0, 1000).await.expect("log");
    let got: Vec<(ChangeKind, &str)> = log.iter().map(|c| (c.kind, c.key.as_str())).collect();
    use ChangeKind::*;
    assert_eq!(
        got,
        [
            (Put, "a"),
            (Put, "b"),
            (Delete, "b"),
            (Put, "p/1"),
            (Put, "p/2"),
            (Put, "p/3"),
            (Invalidate, "p/1"),
            (Invalidate, "p/2"),
            (Invalidate, "p/3"),
            (Put, "t/1"),
            (Invalidate, "t/1"),
            (Put, "old"),
            (Put, "old2"),
            (Expire, "old"),
            (Expire, "old2"),
            (Put, "e/1"),
            (Put, "e/2"),
            (Put, "e/3"),
            (Evict, "e/1"),
        ]
    );
    let revisions: Vec<u64> = log.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (1..=log.len() as u64).collect::<Vec<_>>());
    assert_eq!(log[9].tags, ["track:1"]);
    assert_eq!(log[10].policy, "track_metadata");
    server.stop().await;
}

/// 64 writers through two `roadie-server` processes on one database (each
/// with its own group commit): every acknowledged Put has a revision of its
/// own, the change log holds exactly those revisions, gapless and in
/// order, and each key holds its last acknowledged write at its revision.
async fn writers_through_two_server_processes_get_gapless_revisions(backend: Backend) {
    let Some(db) = roadie_store::testing::TestDb::new(backend).await else {
        return;
    };
    // No fetch here: the provider's upstream is never called.
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().expect("address");
    let servers = [
        ServerProcess::start(&db.url, nowhere).await,
        ServerProcess::start(&db.url, nowhere).await,
    ];
    let mut writers = Vec::new();
    for writer in 0..64 {
        let url = format!("http://{}", servers[writer % 2].addr);
        writers.push(tokio::spawn(async move {
            let client = roadie_client::connect(url, Duration::from_secs(5))
                .await
                .expect("connect");
            let mut revisions = Vec::new();
            for i in 0..10 {
                let key = format!("w{writer}/{}", i % 3);
                let answer = client.put(put(&key, &i.to_string())).await.expect("put");
                assert_eq!(answer.outcome, pb::PutOutcome::Written as i32);
                revisions.push(answer.revision);
            }
            revisions
        }));
    }
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    acknowledged.sort_unstable();
    assert_eq!(acknowledged, (1..=640).collect::<Vec<u64>>());
    let store = db.store().await;
    let log = store.change_list_since(0, 10_000).await.expect("log");
    let revisions: Vec<u64> = log.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (1..=640).collect::<Vec<u64>>());
    for writer in 0..64 {
        let key = format!("w{writer}/0");
        let entry = store.entry_get(&key).await.expect("get").expect("written");
        assert_eq!(&entry.value[..], b"9", "{key} holds its last write");
        let last = log.iter().rev().find(|c| c.key == key).expect("logged");
        assert_eq!(entry.revision, last.revision);
    }
    drop(servers);
    store.close().await;
    db.finish().await;
}

on_both_backends!(
    every_write_path_logs_one_row_per_change,
    writers_through_two_server_processes_get_gapless_revisions,
);
