//! The hot tier: two servers on one database, each with its own tier. A
//! write through one (or by a worker) is what the other answers within
//! `hot_tier.max_lag`, and never anything older after it; a server's own
//! writes are what its next read answers.

use std::time::{Duration, Instant};

use roadie_client::{
    Client,
    proto::{FetchMode, LookupStatus, StatsRequest, WatchRequest},
};
use roadie_server::config::Settings;
use roadie_store::{Backend, testing::TestDb};

use crate::common::{TestServer, get, on_both_backends, put};

const MAX_LAG: Duration = Duration::from_secs(1);

fn hot(settings: &mut Settings) {
    settings.hot_tier.enabled = true;
    settings.hot_tier.max_lag = MAX_LAG;
}

async fn value(client: &Client, key: &str) -> Option<String> {
    let answer = client.get(get(key)).await.expect("get");
    let hit = answer.status() == LookupStatus::Hit;
    answer
        .entry
        .filter(|_| hit)
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

async fn hot_hits(client: &Client) -> u64 {
    let stats = client.stats(StatsRequest::default()).await.expect("stats");
    stats.hot_tier.expect("the hot tier is on").hits
}

/// Reads `key` through `reader` until it answers `want`. Every read sent
/// later than `written + MAX_LAG` must already answer it.
async fn converges(reader: &Client, key: &str, want: Option<&str>, written: Instant) -> Duration {
    loop {
        let sent = Instant::now();
        let got = value(reader, key).await;
        if got.as_deref() == want {
            return sent.saturating_duration_since(written);
        }
        assert!(
            sent < written + MAX_LAG,
            "{key}: still {got:?} {:?} after the write, past the bound of {MAX_LAG:?}",
            sent - written
        );
        tokio::task::yield_now().await;
    }
}

async fn writes_elsewhere_reach_the_hot_tier_within_the_bound(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let (upstream, _) = crate::fetch::upstream().await;
    let url = db.url.clone();
    let a = TestServer::start_on(db, |s| {
        hot(s);
        crate::fetch::with_provider(upstream)(s);
    })
    .await;
    let b = TestServer::start_at(&url, |s| {
        hot(s);
        crate::fetch::with_provider(upstream)(s);
    })
    .await;

    // Once B's tail has applied the write (a fill racing it is dropped),
    // B caches v1 on one read and answers the next from memory. B's tail
    // updates its tier before it hands the change to B's watchers, so B's
    // Watch says when.
    let mut b_stub = crate::watch::stub(b.addr).await;
    let (mut b_changes, _) = crate::watch::open(
        &mut b_stub,
        WatchRequest {
            key_prefix: "k".to_owned(),
            ..Default::default()
        },
    )
    .await;
    let v1 = a.client.put(put("k", "v1")).await.expect("put");
    converges(&b.client, "k", Some("v1"), Instant::now()).await;
    let applied = crate::watch::next_change(&mut b_changes).await;
    assert_eq!(applied.revision, v1.revision, "B's tail applied the write");
    assert_eq!(value(&b.client, "k").await.as_deref(), Some("v1"));
    let before = hot_hits(&b.client).await;
    assert_eq!(value(&b.client, "k").await.as_deref(), Some("v1"));
    assert!(hot_hits(&b.client).await > before, "answered from memory");

    // Writes through A: B's memory follows within the bound, ten times over.
    let mut lags = Vec::new();
    for i in 2..12 {
        let v = format!("v{i}");
        a.client.put(put("k", &v)).await.expect("put");
        lags.push(converges(&b.client, "k", Some(&v), Instant::now()).await);
    }
    // A delete, too.
    a.client
        .delete(roadie_client::proto::DeleteRequest {
            key: "k".to_owned(),
            ..Default::default()
        })
        .await
        .expect("delete");
    lags.push(converges(&b.client, "k", None, Instant::now()).await);
    eprintln!("{backend:?}: B saw A's writes after {lags:?}");

    // B's own write is what B answers next, at once, though its tier
    // remembered the key as absent; BatchGet reads through the tier too.
    b.client.put(put("k", "mine")).await.expect("put");
    assert_eq!(value(&b.client, "k").await.as_deref(), Some("mine"));
    let batch = b
        .client
        .batch_get(roadie_client::proto::BatchGetRequest {
            keys: vec!["k".to_owned(), "nope".to_owned(), "k".to_owned()],
            ..Default::default()
        })
        .await
        .expect("batch get");
    let statuses: Vec<LookupStatus> = batch.results.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses,
        [LookupStatus::Hit, LookupStatus::Miss, LookupStatus::Hit]
    );
    assert_eq!(
        batch.results[0].entry.as_ref().map(|e| e.value.as_ref()),
        Some(&b"mine"[..])
    );

    // A worker's result: B remembered the miss, and follows the fetch.
    let fetched = format!("http://{upstream}/api/item/3");
    assert_eq!(value(&b.client, &fetched).await, None);
    assert_eq!(value(&b.client, &fetched).await, None, "a remembered miss");
    let (stop, worker) = crate::fetch::start_worker(a.store().clone(), upstream);
    let answer = a
        .client
        .clone()
        .with_request_timeout(Duration::from_secs(20))
        .fetch(crate::fetch::fetch("item/3", FetchMode::Wait))
        .await
        .expect("fetch");
    assert_eq!(answer.status(), LookupStatus::Hit);
    converges(&b.client, &fetched, Some("item 3"), Instant::now()).await;

    stop.cancel();
    worker.await.expect("worker");
    b.stop().await;
    a.stop().await;
}

/// Switched off, reads go to the store and Stats says there is no tier.
async fn the_hot_tier_can_be_switched_off(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = TestServer::start_on(db, |s| s.hot_tier.enabled = false).await;
    server.client.put(put("k", "v")).await.expect("put");
    assert_eq!(value(&server.client, "k").await.as_deref(), Some("v"));
    let stats = server
        .client
        .stats(StatsRequest::default())
        .await
        .expect("stats");
    assert!(stats.hot_tier.is_none());
    server.stop().await;
}

/// A server's own Put of a key its tier holds is what its next Get
/// answers, from memory with no read of the store, and exactly as the
/// store holds it (every field, the created_at an overwrite kept among
/// them): a server without a tier on the same database reads the same
/// entry.
async fn an_own_put_is_answered_from_memory_as_stored(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let url = db.url.clone();
    let hot_server = TestServer::start_on(db, hot).await;
    let cold = TestServer::start_at(&url, |s| s.hot_tier.enabled = false).await;
    let client = &hot_server.client;
    client.put(put("k", "first")).await.expect("put");
    assert_eq!(value(client, "k").await.as_deref(), Some("first"));
    let mut rewrite = put("k", "second");
    rewrite.media_type = "application/json".to_owned();
    rewrite.tags = vec!["artist:x".to_owned(), "album:x/y".to_owned()];
    rewrite.confidence = 70;
    rewrite.fingerprint = "fp".to_owned();
    rewrite.metadata = [("source".to_owned(), "test".to_owned())].into();
    rewrite.ttl = Some(crate::common::secs(600));
    let written = client.put(rewrite).await.expect("put");

    let stats = client.stats(StatsRequest::default()).await.expect("stats");
    let before = stats.hot_tier.expect("the hot tier is on");
    let answer = client.get(get("k")).await.expect("get");
    let stats = client.stats(StatsRequest::default()).await.expect("stats");
    let after = stats.hot_tier.expect("the hot tier is on");
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (1, 0),
        "answered from memory"
    );
    let stored = cold.client.get(get("k")).await.expect("get");
    assert_eq!(answer, stored, "the tier holds what the store holds");
    let entry = answer.entry.expect("an entry");
    assert_eq!(entry.revision, written.revision);
    cold.stop().await;
    hot_server.stop().await;
}

on_both_backends!(
    writes_elsewhere_reach_the_hot_tier_within_the_bound,
    the_hot_tier_can_be_switched_off,
    an_own_put_is_answered_from_memory_as_stored,
);
