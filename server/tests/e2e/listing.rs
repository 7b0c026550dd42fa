//! ListEntries: filters, bytewise key order, keyset pages that neither miss
//! nor repeat an entry while others write, the revision to watch from, and
//! `roadie ls`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use roadie_client::{
    Client, ClientError, WatchEvent,
    cli::Exit,
    proto::{self as pb, ChangeKind, EntryStatus, ListEntriesRequest, WatchRequest},
};
use roadie_store::{Backend, now_ms};

use crate::common::{on_both_backends, put, roadie, start, stored};

/// Every page of a listing: the keys in the order given, and the revision.
async fn list_all(client: &Client, mut request: ListEntriesRequest) -> (Vec<pb::Entry>, u64) {
    let mut entries = Vec::new();
    let mut revision = None;
    loop {
        let page = client.list_entries(request.clone()).await.expect("list");
        let size = if request.page_size == 0 {
            100
        } else {
            request.page_size
        };
        assert!(
            page.entries.len() <= size as usize,
            "a page holds at most page_size entries"
        );
        // Every page carries the revision the first one read at.
        assert_eq!(*revision.get_or_insert(page.revision), page.revision);
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return (entries, page.revision);
        }
        request.page_token = page.next_page_token;
    }
}

fn keys(entries: &[pb::Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.key.as_str()).collect()
}

async fn filters_order_and_pages(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    // Bytewise order: "artist:" < "artist:z" < "artist:é" < "artist;".
    for (key, tags, policy) in [
        ("artist;next", vec!["x"], "generic"),
        ("artist:é", vec!["artist:é"], "generic"),
        ("artist:z", vec!["artist:z", "x"], "api_metadata"),
        ("artist:", vec![], "generic"),
        ("album:a", vec!["x"], "generic"),
    ] {
        let mut p = put(key, &format!("value of {key}"));
        p.tags = tags.into_iter().map(str::to_owned).collect();
        p.policy = policy.to_owned();
        c.put(p).await.expect("put");
    }
    let now = now_ms();
    let store = server.store();
    store
        .entry_put(&stored("artist:stale", Some(now - 5_000), false))
        .await
        .expect("store put");
    store
        .entry_put(&stored("artist:negative", Some(now + 60_000), true))
        .await
        .expect("store put");

    let (all, revision) = list_all(c, ListEntriesRequest::default()).await;
    assert_eq!(
        keys(&all),
        [
            "album:a",
            "artist:",
            "artist:negative",
            "artist:stale",
            "artist:z",
            "artist:é",
            "artist;next"
        ]
    );
    let stats = c.stats(Default::default()).await.expect("stats");
    assert_eq!(revision, stats.revision, "the revision read at");
    assert_eq!(
        all[0].value.as_ref(),
        b"value of album:a",
        "values by default"
    );
    assert_eq!(all[0].tags, ["x"]);

    let list = |f: fn(&mut ListEntriesRequest)| {
        let mut request = ListEntriesRequest::default();
        f(&mut request);
        list_all(c, request)
    };
    let (prefixed, _) = list(|r| r.key_prefix = "artist:".to_owned()).await;
    assert_eq!(
        keys(&prefixed),
        [
            "artist:",
            "artist:negative",
            "artist:stale",
            "artist:z",
            "artist:é"
        ]
    );
    let (tagged, _) = list(|r| r.tag = "x".to_owned()).await;
    assert_eq!(keys(&tagged), ["album:a", "artist:z", "artist;next"]);
    let (both, _) = list(|r| {
        r.tag = "x".to_owned();
        r.key_prefix = "artist".to_owned();
    })
    .await;
    assert_eq!(keys(&both), ["artist:z", "artist;next"]);
    let (policy, _) = list(|r| r.policy = "api_metadata".to_owned()).await;
    assert_eq!(keys(&policy), ["artist:z"]);
    let (fresh, _) = list(|r| r.status = EntryStatus::Fresh.into()).await;
    assert_eq!(fresh.len(), 5);
    assert!(fresh.iter().all(|e| e.status == EntryStatus::Fresh as i32));
    let (stale, _) = list(|r| r.status = EntryStatus::Stale.into()).await;
    assert_eq!(keys(&stale), ["artist:stale"]);
    let (negative, _) = list(|r| r.status = EntryStatus::Negative.into()).await;
    assert_eq!(keys(&negative), ["artist:negative"]);
    let (none, _) = list(|r| r.key_prefix = "nothing".to_owned()).await;
    assert!(none.is_empty());

    // Without values: everything else is there.
    let (bare, _) = list(|r| r.without_values = true).await;
    assert_eq!(keys(&bare), keys(&all));
    assert!(bare.iter().all(|e| e.value.is_empty()));
    assert_eq!(bare[0].tags, ["x"]);
    assert_eq!(bare[0].revision, all[0].revision);

    // Pages of two, each page's token leading on from its last key.
    let (paged, _) = list(|r| r.page_size = 2).await;
    assert_eq!(keys(&paged), keys(&all));
    let first = c
        .list_entries(ListEntriesRequest {
            page_size: 7,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(first.entries.len(), 7);
    assert!(
        first.next_page_token.is_empty(),
        "an exact last page has no token"
    );

    server.stop().await;
}

async fn bad_listings_name_the_field(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    for (request, field) in [
        (
            ListEntriesRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListEntriesRequest {
                page_token: "not-a-token".to_owned(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            ListEntriesRequest {
                policy: "nope".to_owned(),
                ..Default::default()
            },
            "policy",
        ),
        (
            ListEntriesRequest {
                provider: "nope".to_owned(),
                ..Default::default()
            },
            "provider",
        ),
        (
            ListEntriesRequest {
                status: 99,
                ..Default::default()
            },
            "status",
        ),
        (
            ListEntriesRequest {
                key_prefix: "k".repeat(1025),
                ..Default::default()
            },
            "key_prefix",
        ),
    ] {
        match c.list_entries(request).await {
            Err(ClientError::InvalidArgument { field: Some(f), .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    server.stop().await;
}

/// What a change leaves: the key present (written) or absent (gone).
fn present_after(kind: i32) -> bool {
    matches!(
        ChangeKind::try_from(kind),
        Ok(ChangeKind::Put | ChangeKind::Fetch | ChangeKind::Negative)
    )
}

/// Pages of ten while another client writes, updates and deletes: every
/// entry there throughout comes exactly once, in order; and the listing
/// plus a Watch from its revision rebuild the store as it ends.
async fn a_listing_across_concurrent_writes_misses_and_repeats_nothing(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    for i in 0..300 {
        c.put(put(&format!("k/{i:03}"), "v")).await.expect("put");
    }
    // In lockstep with the listing: ten rounds of writes between pages.
    let (round_done, mut rounds) = tokio::sync::mpsc::channel::<()>(1);
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                // New keys before, among and after the listed ones; updates
                // of the stable ones; deletes of the ones ending in 7.
                c.put(put(&format!("k/{:03}-new", 299 - i), "n"))
                    .await
                    .expect("put");
                c.put(put(&format!("k/{i:03}"), "updated"))
                    .await
                    .expect("put");
                if i % 10 == 7 {
                    c.delete(pb::DeleteRequest {
                        key: format!("k/{i:03}"),
                        ..Default::default()
                    })
                    .await
                    .expect("delete");
                }
                round_done.send(()).await.expect("the listing waits");
            }
        })
    };
    let mut listed = Vec::new();
    let mut request = ListEntriesRequest {
        page_size: 10,
        without_values: true,
        ..Default::default()
    };
    let revision = loop {
        let page = c.list_entries(request.clone()).await.expect("list");
        for _ in 0..10 {
            if rounds.recv().await.is_none() {
                break;
            }
        }
        listed.extend(page.entries);
        if page.next_page_token.is_empty() {
            break page.revision;
        }
        request.page_token = page.next_page_token;
    };
    writer.await.expect("writer");

    let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: nothing repeated"
    );
    for i in (0..300).filter(|i| i % 10 != 7) {
        let key = format!("k/{i:03}");
        assert!(keys.contains(&key.as_str()), "{key} was there throughout");
    }

    // The listing, then every change after its revision, gives the end state.
    let mut state: BTreeMap<String, bool> = keys.iter().map(|k| ((*k).to_owned(), true)).collect();
    let end = c.stats(Default::default()).await.expect("stats").revision;
    let mut watch = c.watch(WatchRequest {
        after_revision: Some(revision),
        ..Default::default()
    });
    let mut seen = revision;
    while seen < end {
        match tokio::time::timeout(Duration::from_secs(20), watch.next()).await {
            Ok(Some(Ok(WatchEvent::Change(change)))) => {
                assert!(
                    change.revision > seen,
                    "in order, after the listing's revision"
                );
                seen = change.revision;
                state.insert(change.key, present_after(change.kind));
            }
            Ok(Some(Ok(WatchEvent::Progress(at)))) => seen = seen.max(at),
            Ok(Some(Ok(_))) => {}
            other => panic!("watch ended: {other:?}"),
        }
    }
    let rebuilt: BTreeSet<String> = state
        .into_iter()
        .filter_map(|(key, present)| present.then_some(key))
        .collect();
    let (now, _) = list_all(c, ListEntriesRequest::default()).await;
    let now: BTreeSet<String> = now.into_iter().map(|e| e.key).collect();
    assert_eq!(rebuilt, now);
    assert_eq!(now.len(), 300 - 30 + 300);
    server.stop().await;
}

async fn roadie_ls_lists_every_page(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    for i in 0..25 {
        let mut p = put(&format!("image:{i:02}"), "bytes");
        p.tags = vec!["artist:daft punk".to_owned()];
        c.put(p).await.expect("put");
    }
    c.put(put("other", "x")).await.expect("put");

    let (exit, out, _) = roadie(&server, &["ls", "image:", "--page-size", "10"], "").await;
    assert_eq!(exit, Exit::Success);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("STATUS"), "{out}");
    assert_eq!(lines.len(), 1 + 25 + 1, "{out}");
    assert!(
        lines[1].starts_with("fresh") && lines[1].ends_with("image:00"),
        "{out}"
    );
    assert!(lines[26].starts_with("25 entries at revision 26"), "{out}");

    let (exit, out, _) = roadie(
        &server,
        &[
            "--json",
            "ls",
            "--tag",
            "artist:daft punk",
            "--limit",
            "3",
            "--values",
        ],
        "",
    )
    .await;
    assert_eq!(exit, Exit::Success);
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    let entries = json["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["key"], "image:00");
    assert_eq!(entries[0]["value"], "bytes");
    assert_eq!(json["revision"], 26);

    let (_, out, _) = roadie(&server, &["--json", "ls", "other"], "").await;
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert!(
        json["entries"][0].get("value").is_none(),
        "no value unless --values"
    );
    server.stop().await;
}

on_both_backends!(
    filters_order_and_pages,
    bad_listings_name_the_field,
    a_listing_across_concurrent_writes_misses_and_repeats_nothing,
    roadie_ls_lists_every_page,
);
