//! Library snapshots: a 100 000-track library streamed in and back, a
//! 1 000-track delta merged with the library tool's semantics checked track
//! by track in one revision, the validity rules, refusals that change
//! nothing, and `roadie snapshot`.

use std::time::{Duration, Instant};

use roadie_client::{
    Client, ClientError, WatchEvent,
    cli::Exit,
    proto::{
        ChangeKind, GetSnapshotInfoRequest, GetSnapshotRequest, SnapshotHeader, Track, Validity,
        WatchRequest,
    },
};
use roadie_store::Backend;

use crate::common::{TestServer, on_both_backends, secs, start};

/// `roadie ARGS…`: the exit, and stdout followed by stderr.
async fn run(server: &TestServer, args: &[&str], stdin: &str) -> (Exit, String) {
    let (exit, out, err) = crate::common::roadie(server, args, stdin).await;
    (exit, out + &err)
}

fn track(id: &str, title: &str) -> Track {
    Track {
        id: id.to_owned(),
        json: format!(
            r#"{{"id":"{id}","title":"{title}","artist":"Daft Punk","album":"Discovery","year":2001,"genre":"French house"}}"#
        )
        .into_bytes(),
    }
}

fn at(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

fn header(name: &str, mtime: i64) -> SnapshotHeader {
    SnapshotHeader {
        name: name.to_owned(),
        library_mtime: Some(at(mtime)),
        processed_ids: vec![],
    }
}

async fn read(client: &Client, name: &str) -> Vec<Track> {
    client
        .get_snapshot(GetSnapshotRequest {
            name: name.to_owned(),
            ..Default::default()
        })
        .await
        .expect("get")
        .1
}

/// The seed's merge, as the library tool does it client-side: removed
/// dropped, updated replaced where they stand, new appended in order.
fn merged(existing: &[Track], updates: &[Track], removed: &[String]) -> Vec<Track> {
    let mut out: Vec<Track> = existing
        .iter()
        .filter(|t| !removed.contains(&t.id))
        .map(|t| updates.iter().find(|u| u.id == t.id).unwrap_or(t).clone())
        .collect();
    for update in updates {
        if !existing.iter().any(|t| t.id == update.id) {
            out.push(update.clone());
        }
    }
    out
}

async fn a_library_of_100_000_tracks_and_a_delta_of_1_000(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    let library: Vec<Track> = (0..100_000)
        .map(|i| track(&format!("t{i:06}"), &format!("Track {i}")))
        .collect();
    let bytes: usize = library.iter().map(|t| t.json.len()).sum();

    let started = Instant::now();
    let info = c
        .put_snapshot(header("library", 1_000), library.clone())
        .await
        .expect("put");
    let put_time = started.elapsed();
    assert_eq!(info.tracks, 100_000);
    assert_eq!(info.bytes, bytes as u64);
    assert!(info.valid, "{}", info.validity);

    let started = Instant::now();
    let back = read(c, "library").await;
    let get_time = started.elapsed();
    assert!(back == library, "every track back, in order, byte for byte");

    // The delta: 400 updated (every 250th), 300 removed (every 332nd from
    // 1: odd, so never an updated one), 300 new.
    let updates: Vec<Track> = (0..400)
        .map(|i| track(&format!("t{:06}", i * 250), &format!("Remastered {i}")))
        .chain((0..300).map(|i| track(&format!("n{i:03}"), &format!("New {i}"))))
        .collect();
    let removed: Vec<String> = (0..300).map(|i| format!("t{:06}", 1 + i * 332)).collect();
    let before = info.revision;
    let mut watch = c.watch(WatchRequest {
        after_revision: Some(before),
        ..Default::default()
    });
    let mut delta_header = header("library", 2_000);
    delta_header.processed_ids = vec!["t000000".to_owned(), "n000".to_owned()];
    let started = Instant::now();
    let info = c
        .merge_snapshot(delta_header, updates.clone(), removed.clone())
        .await
        .expect("merge");
    let merge_time = started.elapsed();
    assert_eq!(info.revision, before + 1, "one revision");
    assert_eq!(info.tracks, 100_000 - 300 + 300);
    assert_eq!(info.library_mtime, Some(at(2_000)));
    assert_eq!(info.processed_ids, ["t000000", "n000"]);
    let expected = merged(&library, &updates, &removed);
    let back = read(c, "library").await;
    assert_eq!(back.len(), expected.len());
    for (i, (got, want)) in back.iter().zip(&expected).enumerate() {
        assert!(got == want, "track {i}: {:?} != {:?}", got.id, want.id);
    }
    assert_eq!(
        info.bytes,
        expected.iter().map(|t| t.json.len() as u64).sum::<u64>()
    );

    // One change on the stream, and nothing after it.
    let change = loop {
        match tokio::time::timeout(Duration::from_secs(20), watch.next()).await {
            Ok(Some(Ok(WatchEvent::Change(change)))) => break change,
            Ok(Some(Ok(_))) => {}
            other => panic!("watch: {other:?}"),
        }
    };
    assert_eq!(change.revision, before + 1);
    assert_eq!(change.kind(), ChangeKind::Snapshot);
    assert_eq!(change.key, "library");
    let stats = c.stats(Default::default()).await.expect("stats");
    assert_eq!(stats.revision, before + 1, "the merge was the only change");

    eprintln!(
        "snapshot {backend:?}: 100000 tracks, {bytes} bytes: put {put_time:?}, get {get_time:?}; \
         merge of 1000 (400 updated, 300 new, 300 removed) {merge_time:?}"
    );
    server.stop().await;
}

async fn validity_follows_the_library_time_then_the_age(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    c.put_snapshot(header("lib", 5_000), vec![track("a", "A"), track("b", "B")])
        .await
        .expect("put");
    let info = |mtime: Option<i64>, max_age: Option<i64>| {
        c.get_snapshot_info(GetSnapshotInfoRequest {
            name: "lib".to_owned(),
            validity: Some(Validity {
                library_mtime: mtime.map(at),
                max_age: max_age.map(secs),
            }),
        })
    };
    // Unchanged (or older) library: valid at any age, even past max_age.
    for mtime in [5_000, 4_000] {
        let i = info(Some(mtime), Some(0)).await.expect("info");
        assert!(i.valid, "{}", i.validity);
        assert!(i.validity.contains("not changed"), "{}", i.validity);
    }
    // Changed library: valid while younger than max_age (24 h by default).
    let young = info(Some(6_000), None).await.expect("info");
    assert!(young.valid, "{}", young.validity);
    let old = info(Some(6_000), Some(0)).await.expect("info");
    assert!(!old.valid, "{}", old.validity);
    assert!(old.validity.contains("library changed"), "{}", old.validity);
    // No library time: by age alone.
    assert!(info(None, None).await.expect("info").valid);
    assert!(!info(None, Some(0)).await.expect("info").valid);

    // Not valid and only_if_valid: the info, and no tracks.
    let (first, tracks) = c
        .get_snapshot(GetSnapshotRequest {
            name: "lib".to_owned(),
            validity: Some(Validity {
                library_mtime: Some(at(6_000)),
                max_age: Some(secs(0)),
            }),
            only_if_valid: true,
            chunk_tracks: 1,
        })
        .await
        .expect("get");
    assert!(!first.valid && tracks.is_empty());
    let (_, tracks) = c
        .get_snapshot(GetSnapshotRequest {
            name: "lib".to_owned(),
            chunk_tracks: 1,
            ..Default::default()
        })
        .await
        .expect("get");
    assert_eq!(tracks.len(), 2, "one track per message, all of them");
    server.stop().await;
}

async fn refusals_name_the_field_and_change_nothing(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    let original = vec![track("a", "A"), track("b", "B")];
    c.put_snapshot(header("lib", 1), original.clone())
        .await
        .expect("put");
    let field = |result: Result<_, ClientError>| match result {
        Err(ClientError::InvalidArgument { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let twice = vec![track("a", "A"), track("x", "X"), track("a", "again")];
    assert_eq!(
        field(c.put_snapshot(header("lib", 2), twice).await).as_deref(),
        Some("tracks[2].id")
    );
    let not_json = vec![
        track("a", "A"),
        Track {
            id: "b".to_owned(),
            json: b"[1, 2]".to_vec(),
        },
    ];
    assert_eq!(
        field(c.put_snapshot(header("lib", 2), not_json).await).as_deref(),
        Some("tracks[1].json")
    );
    let mut nameless = header("", 2);
    nameless.name.clear();
    assert_eq!(
        field(c.put_snapshot(nameless, vec![]).await).as_deref(),
        Some("header.name")
    );
    let mut timeless = header("lib", 2);
    timeless.library_mtime = None;
    assert_eq!(
        field(c.put_snapshot(timeless, vec![]).await).as_deref(),
        Some("header.library_mtime")
    );
    assert_eq!(
        field(
            c.merge_snapshot(
                header("lib", 2),
                vec![track("a", "A2")],
                vec!["a".to_owned()]
            )
            .await
        )
        .as_deref(),
        Some("removed_ids[0]")
    );
    // Every refusal left the snapshot as it was.
    assert!(read(c, "lib").await == original);
    let info = c
        .get_snapshot_info(GetSnapshotInfoRequest {
            name: "lib".to_owned(),
            validity: None,
        })
        .await
        .expect("info");
    assert_eq!(info.library_mtime, Some(at(1)));

    for missing in [
        c.merge_snapshot(header("none", 2), vec![], vec![])
            .await
            .map(drop),
        c.get_snapshot(GetSnapshotRequest {
            name: "none".to_owned(),
            ..Default::default()
        })
        .await
        .map(drop),
        c.delete_snapshot("none").await.map(drop),
    ] {
        assert!(
            matches!(missing, Err(ClientError::NotFound(_))),
            "{missing:?}"
        );
    }
    // An empty library is a snapshot too; a whole write replaces.
    c.put_snapshot(header("lib", 3), vec![]).await.expect("put");
    assert!(read(c, "lib").await.is_empty());
    c.delete_snapshot("lib").await.expect("delete");
    server.stop().await;
}

async fn a_snapshot_is_held_to_max_tracks(backend: Backend) {
    let server = start!(backend, |s| s.snapshots.max_tracks = 3);
    let c = &server.client;
    let field = |result: Result<_, ClientError>| match result {
        Err(ClientError::InvalidArgument { field, message }) => {
            assert!(message.contains("snapshots.max_tracks"), "{message}");
            field
        }
        other => panic!("{other:?}"),
    };
    let four: Vec<Track> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| track(id, id))
        .collect();
    assert_eq!(
        field(c.put_snapshot(header("lib", 1), four.clone()).await).as_deref(),
        Some("tracks[3]")
    );
    c.put_snapshot(header("lib", 1), four[..2].to_vec())
        .await
        .expect("two fit");
    // Two new tracks would make four: refused, and nothing of it applied.
    assert_eq!(
        field(
            c.merge_snapshot(header("lib", 2), four[2..].to_vec(), vec![])
                .await
        )
        .as_deref(),
        Some("updates")
    );
    assert!(read(c, "lib").await == four[..2]);
    // With one removed, three fit.
    c.merge_snapshot(header("lib", 2), four[2..].to_vec(), vec!["a".to_owned()])
        .await
        .expect("three fit");
    assert_eq!(read(c, "lib").await.len(), 3);
    server.stop().await;
}

async fn the_cli_puts_gets_merges_and_judges(backend: Backend) {
    let server = start!(backend);
    let lines = "{\"id\": 1, \"title\": \"One More Time\"}\n{\"id\": 2, \"title\": \"Aerodynamic\"}\n{\"id\": 3, \"title\": \"Digital Love\"}\n";
    let (exit, out) = run(
        &server,
        &[
            "snapshot",
            "put",
            "lib",
            "-",
            "--library-mtime",
            "2026-12-01T10:00:00Z",
        ],
        lines,
    )
    .await;
    assert_eq!(exit, Exit::Success, "{out}");
    assert!(out.contains("tracks: 3"), "{out}");
    let (exit, out) = run(&server, &["snapshot", "get", "lib"], "").await;
    assert_eq!(exit, Exit::Success, "{out}");
    assert_eq!(out, lines, "lines come back as written");

    let delta =
        "{\"id\": 2, \"title\": \"Aerodynamic (live)\"}\n{\"id\": 4, \"title\": \"Harder\"}\n";
    let (exit, out) = run(
        &server,
        &[
            "--json",
            "snapshot",
            "merge",
            "lib",
            "-",
            "--library-mtime",
            "1764583200",
            "--remove",
            "1",
        ],
        delta,
    )
    .await;
    assert_eq!(exit, Exit::Success, "{out}");
    let info: serde_json::Value =
        serde_json::from_str(out.lines().next().unwrap_or("")).expect("json");
    assert_eq!(info["tracks"], 3);
    assert_eq!(info["processed_ids"], 3);
    let (_, out) = run(&server, &["snapshot", "get", "lib"], "").await;
    let titles: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["title"].clone())
        .collect();
    assert_eq!(titles, ["Aerodynamic (live)", "Digital Love", "Harder"]);

    // The library changed after the snapshot and max age is 0: not valid.
    let (exit, out) = run(
        &server,
        &[
            "snapshot",
            "info",
            "lib",
            "--library-mtime",
            "2030-01-01T00:00:00Z",
            "--max-age",
            "0s",
        ],
        "",
    )
    .await;
    assert_eq!(exit, Exit::Miss, "{out}");
    assert!(out.contains("not valid"), "{out}");
    let (exit, out) = run(
        &server,
        &[
            "snapshot",
            "get",
            "lib",
            "--library-mtime",
            "2030-01-01T00:00:00Z",
            "--max-age",
            "0s",
            "--only-if-valid",
        ],
        "",
    )
    .await;
    assert_eq!((exit, out.as_str()), (Exit::Miss, ""));
    let (exit, out) = run(
        &server,
        &["snapshot", "put", "x", "-", "--library-mtime", "1"],
        "{\"title\": 1}\n",
    )
    .await;
    assert_eq!(exit, Exit::Error, "{out}");
    assert!(out.contains("line 1") && out.contains("\"id\""), "{out}");
    let (exit, _) = run(&server, &["snapshot", "delete", "lib"], "").await;
    assert_eq!(exit, Exit::Success);
    let (exit, _) = run(&server, &["snapshot", "info", "lib"], "").await;
    assert_eq!(exit, Exit::Miss);
    server.stop().await;
}

on_both_backends!(
    a_library_of_100_000_tracks_and_a_delta_of_1_000,
    validity_follows_the_library_time_then_the_age,
    refusals_name_the_field_and_change_nothing,
    a_snapshot_is_held_to_max_tracks,
    the_cli_puts_gets_merges_and_judges,
);
