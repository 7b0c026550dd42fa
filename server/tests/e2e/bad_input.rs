//! Bad requests get INVALID_ARGUMENT naming the field and the limit, lose
//! nothing, and a store that goes away gives UNAVAILABLE quickly.

use std::time::{Duration, Instant};

use roadie_client::{
    ClientError,
    proto::{
        BatchGetRequest, GetRandomRequest, InvalidateRequest, LookupStatus, PublishEventRequest,
        invalidate_request::Selector,
    },
};
use roadie_store::Backend;
use tonic::Code;

use crate::common::{get, on_both_backends, put, secs, start};

/// Asserts `result` is INVALID_ARGUMENT naming `field`, with `words` in the message.
#[track_caller]
fn assert_field<T: std::fmt::Debug>(result: Result<T, ClientError>, field: &str, words: &str) {
    match result {
        Err(ClientError::InvalidArgument {
            field: Some(got),
            message,
        }) => {
            assert_eq!(got, field, "{message}");
            assert!(
                message.contains(words),
                "{message:?} should mention {words:?}"
            );
        }
        other => panic!("expected INVALID_ARGUMENT on {field}, got {other:?}"),
    }
}

async fn every_limit_is_enforced_with_the_field_named(backend: Backend) {
    let server = start!(backend, |s| s.limits.max_value_bytes = 1024);
    let c = &server.client;
    c.put(put("keep-me", "precious")).await.expect("put");

    assert_field(c.get(get(&"k".repeat(1025))).await, "key", "1024");
    assert_field(c.get(get("")).await, "key", "empty");
    assert_field(c.get(get("line\nbreak")).await, "key", "control");
    assert_field(c.put(put("a\u{0}b", "v")).await, "key", "control");

    let mut p = put("big", "");
    p.value = vec![b'x'; 1025].into();
    assert_field(c.put(p).await, "value", "1024");
    let mut p = put("t", "v");
    p.tags = (0..33).map(|i| format!("tag{i}")).collect();
    assert_field(c.put(p).await, "tags", "32");
    let mut p = put("t", "v");
    p.tags = vec!["ok".to_owned(), "x".repeat(257)];
    assert_field(c.put(p).await, "tags[1]", "256");
    let mut p = put("t", "v");
    p.policy = "nonsense".to_owned();
    assert_field(c.put(p).await, "policy", "unknown policy");
    let mut p = put("t", "v");
    p.confidence = 101;
    assert_field(c.put(p).await, "confidence", "100");
    let mut p = put("t", "v");
    p.ttl = Some(secs(-5));
    assert_field(c.put(p).await, "ttl", "negative");
    let mut p = put("t", "v");
    p.metadata = [("k".to_owned(), "v".repeat(4097))].into();
    assert_field(c.put(p).await, "metadata[\"k\"]", "4096");
    let mut p = put("t", "v");
    p.media_type = "m".repeat(256);
    assert_field(c.put(p).await, "media_type", "255");

    let mut g = get("k");
    g.min_confidence = 500;
    assert_field(c.get(g).await, "min_confidence", "100");
    let mut g = get("k");
    g.policy = "nonsense".to_owned();
    assert_field(c.get(g).await, "policy", "unknown policy");

    let keys: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    assert_field(
        c.batch_get(BatchGetRequest {
            keys,
            ..Default::default()
        })
        .await,
        "keys",
        "1000",
    );
    assert_field(
        c.batch_get(BatchGetRequest::default()).await,
        "keys",
        "1 to 1000",
    );
    let keys = vec!["fine".to_owned(), String::new()];
    assert_field(
        c.batch_get(BatchGetRequest {
            keys,
            ..Default::default()
        })
        .await,
        "keys[1]",
        "empty",
    );

    assert_field(
        c.invalidate(InvalidateRequest { selector: None }).await,
        "selector",
        "one of",
    );
    assert_field(
        c.invalidate(InvalidateRequest {
            selector: Some(Selector::All(false)),
        })
        .await,
        "all",
        "true",
    );
    assert_field(
        c.invalidate(InvalidateRequest {
            selector: Some(Selector::KeyPrefix(String::new())),
        })
        .await,
        "key_prefix",
        "empty",
    );
    assert_field(
        c.get_random(GetRandomRequest::default()).await,
        "tag",
        "empty",
    );
    assert_field(
        c.get_random(GetRandomRequest {
            tag: "t".to_owned(),
            provider: "nowhere".to_owned(),
            ..Default::default()
        })
        .await,
        "provider",
        "unknown provider",
    );
    assert_field(
        c.publish_event(PublishEventRequest::default()).await,
        "kind",
        "LibraryEventKind",
    );
    assert_field(
        c.publish_event(PublishEventRequest {
            kind: 3,
            ..Default::default()
        })
        .await,
        "track_id",
        "required",
    );
    assert_field(
        c.publish_event(PublishEventRequest {
            kind: 99,
            ..Default::default()
        })
        .await,
        "kind",
        "99",
    );

    // Nothing was lost or written along the way.
    let kept = c.get(get("keep-me")).await.expect("get");
    assert_eq!(kept.status, LookupStatus::Hit as i32);
    assert_eq!(
        server.store().revision_current().await.expect("revision"),
        1
    );
    server.stop().await;
}

async fn a_message_past_the_grpc_limit_is_refused_by_size(backend: Backend) {
    let server = start!(backend, |s| s.limits.max_value_bytes = 1024);
    let mut p = put("huge", "");
    // Far past value limit + envelope: refused by the transport before
    // decoding (tonic answers OUT_OF_RANGE and names its limit).
    p.value = vec![b'x'; 2 * 1024 * 1024].into();
    match server.client.put(p).await {
        Err(ClientError::OutOfRange(message)) => {
            assert!(
                message.contains("too large") && message.contains("525312"),
                "{message}"
            )
        }
        other => panic!("expected OUT_OF_RANGE, got {other:?}"),
    }
    // The connection and the server are fine afterwards.
    server
        .client
        .put(put("after", "ok"))
        .await
        .expect("put after refusal");
    server.stop().await;
}

/// A megabyte of input in any field is refused as INVALID_ARGUMENT with a
/// short message quoting at most a prefix of it, not copied into the status
/// (a standard client refuses status headers past 8 KiB or so).
async fn huge_input_is_never_echoed_whole(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    let huge = "p".repeat(1 << 20);
    #[track_caller]
    fn short<T: std::fmt::Debug>(result: Result<T, ClientError>, field: &str) {
        match result {
            Err(ClientError::InvalidArgument {
                field: Some(got),
                message,
            }) => {
                assert!(got.starts_with(field), "{got}");
                assert!(
                    got.len() + message.len() < 2048,
                    "{} bytes of field and message",
                    got.len() + message.len()
                );
            }
            other => panic!("expected INVALID_ARGUMENT on {field}, got {other:.200?}"),
        }
    }
    let mut p = put("t", "v");
    p.policy = huge.clone();
    short(c.put(p).await, "policy");
    let mut p = put("t", "v");
    p.metadata.insert(huge.clone(), "v".to_owned());
    short(c.put(p).await, "metadata");
    let mut p = put("t", "v");
    p.metadata.insert("k".to_owned(), huge.clone());
    short(c.put(p).await, "metadata");
    let fetch = roadie_client::proto::FetchRequest {
        provider: huge.clone(),
        path: "x".to_owned(),
        ..Default::default()
    };
    short(c.fetch(fetch).await, "provider");
    let watch = roadie_client::proto::WatchRequest {
        policies: vec![huge.clone()],
        ..Default::default()
    };
    short(c.watch_once(watch).await, "policies[0]");
    c.put(put("t", "v")).await.expect("the server is fine");
    server.stop().await;
}

on_both_backends!(
    huge_input_is_never_echoed_whole,
    every_limit_is_enforced_with_the_field_named,
    a_message_past_the_grpc_limit_is_refused_by_size,
);

/// A TCP forwarder to Postgres that the test can cut, like a network or
/// database outage, and restore.
struct Outage {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Outage {
    async fn start(target: String) -> Outage {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut_rx = cut_rx.clone();
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Outage { addr, cut }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_unavailable_quickly_and_service_resumes() {
    let Some(db) = roadie_store::testing::TestDb::new(Backend::Postgres).await else {
        return;
    };
    let (prefix, rest) = db.url.split_once('@').expect("url with user@host");
    let (target, database) = rest.split_once('/').expect("url with a database");
    let outage = Outage::start(target.to_owned()).await;
    let proxied = format!("{prefix}@{}/{database}", outage.addr);
    let server = crate::common::TestServer::start_on(db, |s| {
        s.store.url = proxied;
        s.store.acquire_timeout = Duration::from_secs(2);
        // The hot tier would answer the key this server just wrote from
        // memory for up to `hot_tier.max_lag` into the outage; this test is
        // about the calls that reach the store.
        s.hot_tier.enabled = false;
    })
    .await;
    let c = &server.client;
    c.put(put("before", "v"))
        .await
        .expect("put before the outage");

    outage.cut.send(true).expect("cut");
    for request in 0..3 {
        let started = Instant::now();
        let result = c.get(get("before")).await;
        let took = started.elapsed();
        assert_eq!(
            result.as_ref().err().and_then(ClientError::code),
            Some(Code::Unavailable),
            "request {request}: {result:?}"
        );
        assert!(took < Duration::from_secs(5), "UNAVAILABLE took {took:?}");
    }

    outage.cut.send(false).expect("restore");
    let mut recovered = None;
    for _ in 0..50 {
        match c.get(get("before")).await {
            Ok(response) => {
                recovered = Some(response);
                break;
            }
            Err(error) => {
                assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let response = recovered.expect("service resumes by itself after the outage");
    assert_eq!(
        response.status,
        LookupStatus::Hit as i32,
        "the acknowledged write survived"
    );
    server.stop().await;
}
