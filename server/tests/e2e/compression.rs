//! Compression: JSON, XML and text values above `store.compress_min_bytes`
//! are stored as zstd and read back as written through every read path;
//! Stats and budgets count stored bytes and report both; images and short
//! values are left alone; `compress_min_bytes = 0` turns it off.

use clap::Parser;
use roadie_client::cli::{self, Cli, Exit};
use roadie_client::proto::{ListEntriesRequest, StatsRequest, WatchRequest};
use roadie_client::{WatchEvent, proto::BatchGetRequest};
use roadie_store::Backend;

use crate::common::{get, on_both_backends, put, start};

/// A MusicBrainz-shaped artist lookup with its release groups (~24 KiB).
pub(crate) fn musicbrainz_artist() -> String {
    let groups: Vec<String> = (0..150)
        .map(|i| {
            format!(
                r#"{{"id":"7c0a5e86-{i:04}-4f3b-9a5e-{i:012}","title":"Release group {i}","primary-type":"Album","secondary-types":[],"first-release-date":"{year}-03-12","disambiguation":""}}"#,
                year = 1995 + i % 30
            )
        })
        .collect();
    format!(
        r#"{{"id":"056e4f3e-d505-4dad-8ec1-d04f521cbb56","name":"Daft Punk","sort-name":"Daft Punk","type":"Group","country":"FR","life-span":{{"begin":"1993","end":"2021-02-22","ended":true}},"tags":[{{"count":12,"name":"electronic"}},{{"count":9,"name":"house"}},{{"count":7,"name":"french house"}}],"release-groups":[{}]}}"#,
        groups.join(",")
    )
}

fn policy_bytes(stats: &roadie_client::proto::StatsResponse, policy: &str) -> (u64, u64) {
    let row = stats
        .policies
        .iter()
        .find(|p| p.policy == policy)
        .expect("policy row");
    (row.bytes, row.raw_bytes)
}

async fn json_is_stored_compressed_and_read_back_as_written(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    let json = musicbrainz_artist();
    let mut watch = c.watch(WatchRequest {
        include_values: true,
        after_revision: Some(0),
        ..Default::default()
    });
    let mut p = put("https://musicbrainz.org/ws/2/artist/056e4f3e", &json);
    p.media_type = "application/json; charset=utf-8".to_owned();
    p.policy = "api_metadata".to_owned();
    c.put(p).await.expect("put");
    // The same bytes as an image, and a short JSON value: as written.
    let mut image = put("https://img.example/daft.jpg", &json);
    image.media_type = "image/jpeg".to_owned();
    image.policy = "track_metadata".to_owned();
    c.put(image).await.expect("put");
    let mut short = put("short", r#"{"name":"Daft Punk"}"#);
    short.media_type = "application/json".to_owned();
    c.put(short).await.expect("put");

    // Every read path gives the bytes written.
    let got = c
        .get(get("https://musicbrainz.org/ws/2/artist/056e4f3e"))
        .await
        .expect("get")
        .entry
        .expect("entry");
    assert_eq!(got.value.as_ref(), json.as_bytes());
    let batch = c
        .batch_get(BatchGetRequest {
            keys: vec![
                "https://musicbrainz.org/ws/2/artist/056e4f3e".to_owned(),
                "short".to_owned(),
            ],
            ..Default::default()
        })
        .await
        .expect("batch");
    assert_eq!(
        batch.results[0]
            .entry
            .as_ref()
            .expect("entry")
            .value
            .as_ref(),
        json.as_bytes()
    );
    assert_eq!(
        batch.results[1]
            .entry
            .as_ref()
            .expect("entry")
            .value
            .as_ref(),
        br#"{"name":"Daft Punk"}"#
    );
    let listed = c
        .list_entries(ListEntriesRequest {
            key_prefix: "https://musicbrainz.org/".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.entries[0].value.as_ref(), json.as_bytes());
    let stored = server
        .store()
        .entry_get("https://musicbrainz.org/ws/2/artist/056e4f3e")
        .await
        .expect("store")
        .expect("entry");
    assert_eq!(stored.value.as_ref(), json.as_bytes());
    let change = loop {
        match watch.next().await {
            Some(Ok(WatchEvent::Change(change))) => break change,
            Some(Ok(_)) => {}
            other => panic!("watch: {other:?}"),
        }
    };
    assert_eq!(change.entry.expect("value").value.as_ref(), json.as_bytes());

    // Stats: stored bytes (what the budget counts) and bytes as written.
    let stats = c.stats(StatsRequest {}).await.expect("stats");
    let (stored, written) = policy_bytes(&stats, "api_metadata");
    assert_eq!(written, json.len() as u64);
    assert!(stored * 4 < written, "compressed {stored} of {written}");
    assert_eq!(
        policy_bytes(&stats, "track_metadata"),
        (json.len() as u64, json.len() as u64)
    );
    let (stored, written) = policy_bytes(&stats, "generic");
    assert_eq!(stored, written, "a short value is stored as written");

    // The command line: the value as written, and both sizes in stats.
    let url = format!("http://{}", server.addr);
    let run = |args: &[&str]| {
        let mut argv = vec!["roadie", "--server", url.as_str(), "--json"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("command line");
        async move {
            let mut out = Vec::new();
            let exit = cli::run(cli, &mut &b""[..], &mut out, &mut Vec::new()).await;
            assert_eq!(exit, Exit::Success);
            serde_json::from_slice::<serde_json::Value>(&out).expect("json")
        }
    };
    let got = run(&["get", "https://musicbrainz.org/ws/2/artist/056e4f3e"]).await;
    assert_eq!(got["entry"]["value"].as_str(), Some(json.as_str()));
    let stats = run(&["stats"]).await;
    let row = stats["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["policy"] == "api_metadata")
        .expect("api_metadata")
        .clone();
    assert_eq!(row["raw_bytes"].as_u64(), Some(json.len() as u64));
    assert!(
        row["bytes"].as_u64().expect("bytes") * 4 < json.len() as u64,
        "{row}"
    );
    server.stop().await;
}

async fn a_budget_counts_stored_bytes(backend: Backend) {
    // Ten 24 KiB documents under a 100 KiB budget: as written they would
    // need evicting down to four; compressed, all ten fit.
    let server = start!(backend, |s| {
        if let Some(policy) = s.policies.get_mut("api_metadata") {
            policy.max_bytes = 100 * 1024;
        }
    });
    let c = &server.client;
    let json = musicbrainz_artist();
    for i in 0..10 {
        let mut p = put(&format!("artist/{i}"), &json);
        p.media_type = "application/json".to_owned();
        p.policy = "api_metadata".to_owned();
        c.put(p).await.expect("put");
    }
    let evicted = server
        .store()
        .entry_evict(
            "api_metadata",
            100 * 1024,
            80 * 1024,
            roadie_store::now_ms(),
        )
        .await
        .expect("evict");
    assert_eq!(evicted.count, 0, "the budget counts compressed bytes");
    let stats = c.stats(StatsRequest {}).await.expect("stats");
    let (stored, written) = policy_bytes(&stats, "api_metadata");
    assert_eq!(written, 10 * json.len() as u64);
    assert!(
        written > 2 * 100 * 1024,
        "as written, twice the budget: {written}"
    );
    assert!(stored < 100 * 1024, "{stored}");
    server.stop().await;
}

async fn switched_off_every_value_is_stored_as_written(backend: Backend) {
    let server = start!(backend, |s| s.store.compress_min_bytes = 0);
    let c = &server.client;
    let json = musicbrainz_artist();
    let mut p = put("artist", &json);
    p.media_type = "application/json".to_owned();
    c.put(p).await.expect("put");
    let stats = c.stats(StatsRequest {}).await.expect("stats");
    assert_eq!(
        policy_bytes(&stats, "generic"),
        (json.len() as u64, json.len() as u64)
    );
    let got = c
        .get(get("artist"))
        .await
        .expect("get")
        .entry
        .expect("entry");
    assert_eq!(got.value.as_ref(), json.as_bytes());
    server.stop().await;
}

on_both_backends!(
    json_is_stored_compressed_and_read_back_as_written,
    a_budget_counts_stored_bytes,
    switched_off_every_value_is_stored_as_written,
);
