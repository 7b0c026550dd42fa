//! The store conformance suite: every test runs on SQLite and on Postgres
//! (a fresh database each), through the same public operations.

use std::collections::BTreeMap;

use sqlx::Connection as _;

use roadie_store::{
    Access, Backend, Batching, ChangeKind, DeleteResult, EntryPut, Job, PutResult, REPLAN,
    Selector, Store, WriteBatches, testing::TestDb,
};

const T0: i64 = 1_700_000_000_000;

fn put(key: &str, value: &str) -> EntryPut {
    EntryPut {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        media_type: "text/plain".to_owned(),
        policy: "generic".to_owned(),
        tags: vec![],
        confidence: 0,
        fingerprint: None,
        metadata: BTreeMap::new(),
        negative: false,
        expires_at: Some(T0 + 300_000),
        provenance: None,
        keep_higher_confidence: false,
        if_revision: None,
        kind: ChangeKind::Put,
        now: T0,
    }
}

fn written(result: PutResult) -> u64 {
    match result {
        PutResult::Written { revision, .. } => revision,
        other => panic!("expected a write, got {other:?}"),
    }
}

/// Asserts the change log is exactly `expected` (kind, key), with revisions
/// 1..=n and the revision counter at n.
async fn assert_log(store: &Store, expected: &[(ChangeKind, &str)]) {
    let changes = store
        .change_list_since(0, 10_000)
        .await
        .expect("list changes");
    let got: Vec<(ChangeKind, &str)> = changes.iter().map(|c| (c.kind, c.key.as_str())).collect();
    assert_eq!(got, expected);
    let revisions: Vec<u64> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (1..=expected.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        store.revision_current().await.expect("revision"),
        expected.len() as u64
    );
}

async fn round_trip_keeps_every_field(store: Store) {
    let mut p = put(
        "https://musicbrainz.org/ws/2/artist/ü?inc=aliases",
        "{\"a\":1}",
    );
    p.media_type = "application/json".to_owned();
    p.policy = "api_metadata".to_owned();
    p.tags = vec![
        "artist:daft punk".to_owned(),
        "album:daft punk/discovery".to_owned(),
    ];
    p.confidence = 77;
    p.fingerprint = Some("fp-1".to_owned());
    p.metadata = BTreeMap::from([("source".to_owned(), "test".to_owned())]);
    p.provenance = Some(roadie_store::Provenance {
        provider: "musicbrainz".to_owned(),
        upstream_status: 200,
        etag: Some("\"abc\"".to_owned()),
        last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".to_owned()),
    });
    p.kind = ChangeKind::Fetch;
    let result = store.entry_put(&p).await.expect("put");
    assert_eq!(written(result), 1);

    let entry = store
        .entry_get(&p.key)
        .await
        .expect("get")
        .expect("present");
    // What the write answered is the whole entry, as the read finds it.
    let PutResult::Written {
        revision,
        created_at,
    } = result
    else {
        panic!("expected a write, got {result:?}");
    };
    assert_eq!(p.clone().landed(revision, created_at), entry);
    assert_eq!(entry.value, p.value);
    assert_eq!(entry.media_type, p.media_type);
    assert_eq!(entry.policy, p.policy);
    assert_eq!(entry.tags, p.tags);
    assert_eq!(entry.confidence, 77);
    assert_eq!(entry.fingerprint, p.fingerprint);
    assert_eq!(entry.metadata, p.metadata);
    assert!(!entry.negative);
    assert_eq!(
        (entry.created_at, entry.updated_at, entry.expires_at),
        (T0, T0, p.expires_at)
    );
    assert_eq!(entry.revision, 1);
    assert_eq!(entry.provenance, p.provenance);

    // An overwrite keeps created_at, moves updated_at and the revision.
    let mut again = put(&p.key, "new");
    again.now = T0 + 10;
    again.expires_at = None;
    again.negative = true;
    let result = store.entry_put(&again).await.expect("put");
    assert_eq!(
        result,
        PutResult::Written {
            revision: 2,
            created_at: T0
        },
        "the write answers the created_at it kept"
    );
    let entry = store
        .entry_get(&p.key)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(again.clone().landed(2, T0), entry);
    assert_eq!(
        (entry.created_at, entry.updated_at, entry.expires_at),
        (T0, T0 + 10, None)
    );
    assert!(entry.negative);
    assert!(entry.tags.is_empty());
    assert_eq!(entry.provenance, None);
    assert_eq!(store.entry_get("absent").await.expect("get"), None);
    assert_log(
        &store,
        &[(ChangeKind::Fetch, &p.key), (ChangeKind::Put, &p.key)],
    )
    .await;
}

async fn keep_higher_confidence_refuses_lower_writes(store: Store) {
    let mut high = put("album_year:x", "1999");
    high.confidence = 90;
    written(store.entry_put(&high).await.expect("put"));

    let mut low = put("album_year:x", "2001");
    low.confidence = 50;
    low.keep_higher_confidence = true;
    assert_eq!(
        store.entry_put(&low).await.expect("put"),
        PutResult::KeptHigherConfidence {
            revision: 1,
            confidence: 90
        }
    );
    assert_eq!(
        store
            .entry_get("album_year:x")
            .await
            .expect("get")
            .expect("present")
            .value,
        b"1999".as_slice()
    );

    // Equal confidence replaces; without the flag, anything replaces.
    low.confidence = 90;
    assert_eq!(written(store.entry_put(&low).await.expect("put")), 2);
    let mut unconditional = put("album_year:x", "2005");
    unconditional.confidence = 10;
    assert_eq!(
        written(store.entry_put(&unconditional).await.expect("put")),
        3
    );
    assert_log(
        &store,
        &[
            (ChangeKind::Put, "album_year:x"),
            (ChangeKind::Put, "album_year:x"),
            (ChangeKind::Put, "album_year:x"),
        ],
    )
    .await;
}

async fn compare_and_set_on_revision(store: Store) {
    let mut create = put("k", "v1");
    create.if_revision = Some(0);
    assert_eq!(written(store.entry_put(&create).await.expect("put")), 1);
    // Zero means "only if absent": a second create loses.
    assert_eq!(
        store.entry_put(&create).await.expect("put"),
        PutResult::RevisionMismatch { revision: 1 }
    );

    let mut update = put("k", "v2");
    update.if_revision = Some(7);
    assert_eq!(
        store.entry_put(&update).await.expect("put"),
        PutResult::RevisionMismatch { revision: 1 }
    );
    update.if_revision = Some(1);
    assert_eq!(written(store.entry_put(&update).await.expect("put")), 2);

    assert_eq!(
        store.entry_delete("k", Some(1), T0).await.expect("delete"),
        DeleteResult::RevisionMismatch { revision: 2 }
    );
    assert_eq!(
        store.entry_delete("k", Some(2), T0).await.expect("delete"),
        DeleteResult::Deleted { revision: 3 }
    );
    assert_eq!(
        store.entry_delete("k", None, T0).await.expect("delete"),
        DeleteResult::Absent
    );
    assert_eq!(
        store.entry_delete("k", Some(3), T0).await.expect("delete"),
        DeleteResult::Absent
    );
    assert_log(
        &store,
        &[
            (ChangeKind::Put, "k"),
            (ChangeKind::Put, "k"),
            (ChangeKind::Delete, "k"),
        ],
    )
    .await;
}

/// A rewrite replaces an entry's tags: the ones it no longer names stop
/// selecting it, the ones it keeps or adds select it, and no other entry's
/// tags move.
async fn a_rewrite_replaces_the_tags(store: Store) {
    let tagged = |key: &str, tags: &[&str]| EntryPut {
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..put(key, key)
    };
    written(
        store
            .entry_put(&tagged("k1", &["a", "b", "it's ü"]))
            .await
            .expect("put"),
    );
    written(store.entry_put(&tagged("k2", &["a"])).await.expect("put"));
    written(
        store
            .entry_put(&tagged("k1", &["b", "c"]))
            .await
            .expect("put"),
    );
    let stored = store.entry_get("k1").await.expect("get").expect("k1");
    assert_eq!(stored.tags, vec!["b".to_owned(), "c".to_owned()]);
    for (tag, expected) in [("it's ü", 0), ("a", 1), ("c", 1), ("b", 0)] {
        let (count, _) = store
            .entry_invalidate(&Selector::Tag(tag.to_owned()), ChangeKind::Invalidate, T0)
            .await
            .expect("invalidate");
        assert_eq!(count, expected, "tag {tag:?}");
    }
}

/// A Put that names one tag twice is written, and the tag selects it.
async fn a_tag_named_twice_is_kept_once(store: Store) {
    let put = EntryPut {
        tags: vec!["a".to_owned(), "b".to_owned(), "a".to_owned()],
        ..put("k", "v")
    };
    written(store.entry_put(&put).await.expect("put"));
    let (count, _) = store
        .entry_invalidate(&Selector::Tag("a".to_owned()), ChangeKind::Invalidate, T0)
        .await
        .expect("invalidate");
    assert_eq!(count, 1);
}

async fn invalidate_by_every_selector(store: Store) {
    let seed = [
        ("mb/a%1", "api_metadata", vec!["artist:a"]),
        ("mb/a_2", "api_metadata", vec!["artist:a", "album:a/x"]),
        ("mb/b", "track_metadata", vec!["track:1"]),
        ("MB/upper", "generic", vec!["artist:a"]),
        ("other", "generic", vec![]),
        ("other2", "album_year", vec!["album:a/x"]),
    ];
    for (key, policy, tags) in &seed {
        let mut p = put(key, "v");
        p.policy = (*policy).to_owned();
        p.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        written(store.entry_put(&p).await.expect("put"));
    }
    let n = seed.len() as u64;
    // The prefix is literal: "%" and "_" are not wildcards and case matters.
    let (count, last) = store
        .entry_invalidate(
            &Selector::KeyPrefix("mb/a%".to_owned()),
            ChangeKind::Invalidate,
            T0,
        )
        .await
        .expect("invalidate");
    assert_eq!((count, last), (1, n + 1));
    let (count, _) = store
        .entry_invalidate(
            &Selector::KeyPrefix("mb/".to_owned()),
            ChangeKind::Invalidate,
            T0,
        )
        .await
        .expect("invalidate");
    assert_eq!(count, 2, "mb/a_2 and mb/b, not MB/upper");
    let (count, _) = store
        .entry_invalidate(
            &Selector::PolicyTag {
                policy: "generic".to_owned(),
                tag: "album:a/x".to_owned(),
            },
            ChangeKind::Invalidate,
            T0,
        )
        .await
        .expect("invalidate");
    assert_eq!(count, 0);
    let (count, last) = store
        .entry_invalidate(
            &Selector::Tag("artist:a".to_owned()),
            ChangeKind::Invalidate,
            T0,
        )
        .await
        .expect("invalidate");
    assert_eq!((count, last), (1, n + 4));
    let (count, _) = store
        .entry_invalidate(
            &Selector::Policy("album_year".to_owned()),
            ChangeKind::Invalidate,
            T0,
        )
        .await
        .expect("invalidate");
    assert_eq!(count, 1);
    let (count, _) = store
        .entry_invalidate(
            &Selector::Key("other".to_owned()),
            ChangeKind::Invalidate,
            T0,
        )
        .await
        .expect("invalidate");
    assert_eq!(count, 1);
    let (count, last) = store
        .entry_invalidate(&Selector::All, ChangeKind::Invalidate, T0)
        .await
        .expect("invalidate");
    assert_eq!((count, last), (0, 0));
    assert!(store.entry_usage().await.expect("usage").is_empty());
    // Tags went with their entries.
    assert_eq!(
        store
            .entry_random("artist:a", "", "", T0)
            .await
            .expect("random"),
        None
    );

    let mut expected: Vec<(ChangeKind, &str)> =
        seed.iter().map(|(k, _, _)| (ChangeKind::Put, *k)).collect();
    for key in ["mb/a%1", "mb/a_2", "mb/b", "MB/upper", "other2", "other"] {
        expected.push((ChangeKind::Invalidate, key));
    }
    assert_log(&store, &expected).await;
}

async fn expiry_keeps_stale_entries_until_their_window_ends(store: Store) {
    let mut fresh = put("fresh", "v");
    fresh.expires_at = Some(T0 + 1_000);
    let mut stale = put("stale", "v");
    stale.expires_at = Some(T0 - 1_000);
    let mut old = put("old", "v");
    old.expires_at = Some(T0 - 100_000);
    let mut negative = put("negative", "");
    negative.negative = true;
    negative.expires_at = Some(T0 - 1_000);
    let mut forever = put("forever", "v");
    forever.expires_at = None;
    for p in [&fresh, &stale, &old, &negative, &forever] {
        written(store.entry_put(p).await.expect("put"));
    }
    let (count, _) = store
        .entry_invalidate(
            &Selector::Expired {
                now: T0,
                stale_before: T0 - 10_000,
            },
            ChangeKind::Expire,
            T0,
        )
        .await
        .expect("expire");
    assert_eq!(count, 2);
    for (key, present) in [
        ("fresh", true),
        ("stale", true),
        ("old", false),
        ("negative", false),
        ("forever", true),
    ] {
        assert_eq!(
            store.entry_get(key).await.expect("get").is_some(),
            present,
            "{key}"
        );
    }
    let log = store.change_list_since(5, 10).await.expect("log");
    assert!(log.iter().all(|c| c.kind == ChangeKind::Expire));
    assert_eq!(log.len(), 2);
}

async fn random_picks_only_live_matching_entries(store: Store) {
    let mut image = put("img/1", "jpeg");
    image.tags = vec!["artist:x".to_owned()];
    image.policy = "api_metadata".to_owned();
    image.provenance = Some(roadie_store::Provenance {
        provider: "fanarttv".to_owned(),
        upstream_status: 200,
        ..Default::default()
    });
    let mut expired = put("img/2", "jpeg");
    expired.tags = vec!["artist:x".to_owned()];
    expired.expires_at = Some(T0 - 1);
    let mut negative = put("img/3", "");
    negative.tags = vec!["artist:x".to_owned()];
    negative.negative = true;
    for p in [&image, &expired, &negative] {
        written(store.entry_put(p).await.expect("put"));
    }
    for _ in 0..10 {
        let entry = store
            .entry_random("artist:x", "", "", T0)
            .await
            .expect("random")
            .expect("one");
        assert_eq!(entry.key, "img/1");
    }
    assert!(
        store
            .entry_random("artist:x", "api_metadata", "fanarttv", T0)
            .await
            .expect("random")
            .is_some()
    );
    assert!(
        store
            .entry_random("artist:x", "generic", "", T0)
            .await
            .expect("random")
            .is_none()
    );
    assert!(
        store
            .entry_random("artist:x", "", "theaudiodb", T0)
            .await
            .expect("random")
            .is_none()
    );
    assert!(
        store
            .entry_random("artist:y", "", "", T0)
            .await
            .expect("random")
            .is_none()
    );
}

async fn eviction_removes_least_recently_used_down_to_target(store: Store) {
    for i in 0..10 {
        let mut p = put(&format!("e{i}"), &"x".repeat(100));
        p.now = T0 + i;
        written(store.entry_put(&p).await.expect("put"));
    }
    let mut other = put("other-policy", &"y".repeat(5000));
    other.policy = "api_metadata".to_owned();
    // Stored as written (text this long would be stored compressed), so
    // the byte counts below are the value's length.
    other.media_type = "application/octet-stream".to_owned();
    written(store.entry_put(&other).await.expect("put"));
    // e0 and e1 were read recently: they are the most valuable now.
    store
        .entry_touch(&[
            Access {
                key: "e1".to_owned(),
                at: T0 + 1000,
                count: 3,
            },
            Access {
                key: "e0".to_owned(),
                at: T0 + 1000,
                count: 1,
            },
            Access {
                key: "gone".to_owned(),
                at: T0 + 1000,
                count: 1,
            },
        ])
        .await
        .expect("touch");

    let nothing = store
        .entry_evict("generic", 1000, 800, T0)
        .await
        .expect("evict");
    assert_eq!(nothing.count, 0, "exactly at budget is within it");
    let eviction = store
        .entry_evict("generic", 900, 720, T0)
        .await
        .expect("evict");
    assert_eq!((eviction.count, eviction.bytes), (3, 300));
    for (key, present) in [
        ("e2", false),
        ("e3", false),
        ("e4", false),
        ("e5", true),
        ("e0", true),
        ("e1", true),
    ] {
        assert_eq!(
            store.entry_get(key).await.expect("get").is_some(),
            present,
            "{key}"
        );
    }
    let usage = store.entry_usage().await.expect("usage");
    let generic = usage
        .iter()
        .find(|u| u.policy == "generic")
        .expect("generic");
    assert_eq!((generic.entries, generic.bytes), (7, 700));
    let api = usage
        .iter()
        .find(|u| u.policy == "api_metadata")
        .expect("api");
    assert_eq!((api.entries, api.bytes), (1, 5000));
    let log = store.change_list_since(11, 10).await.expect("log");
    let evicted: Vec<&str> = log.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(evicted, ["e2", "e3", "e4"]);
    assert!(log.iter().all(|c| c.kind == ChangeKind::Evict));
}

/// A pass that evicts more than it reads at a time goes on reading, least
/// valuable first, until the policy is down to its target.
async fn eviction_reads_on_past_one_chunk_of_candidates(store: Store) {
    for i in 0..1200 {
        let mut p = put(&format!("e{i:04}"), &"x".repeat(10));
        p.now = T0 + i;
        written(store.entry_put(&p).await.expect("put"));
    }
    let eviction = store
        .entry_evict("generic", 11_999, 1000, T0)
        .await
        .expect("evict");
    assert_eq!(
        (eviction.count, eviction.bytes, eviction.held),
        (1100, 11_000, 1000)
    );
    assert!(store.entry_get("e1099").await.expect("get").is_none());
    assert!(store.entry_get("e1100").await.expect("get").is_some());
    let within = store
        .entry_evict("generic", 1000, 800, T0)
        .await
        .expect("evict");
    assert_eq!(
        (within.count, within.held),
        (0, 1000),
        "counted, not evicted"
    );
}

/// Two passes at once (two servers' timers) evict down to the target, not
/// each by the whole amount: a pass that meets the other's evictions
/// between its chunks stops, so the policy ends at most a chunk under it.
async fn passes_at_once_evict_about_once(store: Store) {
    for i in 0..3000 {
        let mut p = put(&format!("e{i:04}"), &"x".repeat(100));
        p.now = T0 + i;
        written(store.entry_put(&p).await.expect("put"));
    }
    let (a, b) = tokio::join!(
        store.entry_evict("generic", 200_000, 100_000, T0),
        store.entry_evict("generic", 200_000, 100_000, T0),
    );
    let (a, b) = (a.expect("evict"), b.expect("evict"));
    let usage = store.entry_usage().await.expect("usage");
    let generic = usage
        .iter()
        .find(|u| u.policy == "generic")
        .expect("generic");
    assert!(
        (100_000 - 128 * 100..=100_000).contains(&generic.bytes),
        "{} bytes left; the passes evicted {} and {}",
        generic.bytes,
        a.count,
        b.count
    );
    assert_eq!(a.count + b.count, 3000 - generic.entries);
}

async fn get_many_returns_the_found_entries(store: Store) {
    for i in 0..700 {
        written(
            store
                .entry_put(&put(&format!("k{i}"), "v"))
                .await
                .expect("put"),
        );
    }
    let keys: Vec<String> = (0..1000).map(|i| format!("k{}", i * 2)).collect();
    let mut found: Vec<String> = store
        .entry_get_many(&keys)
        .await
        .expect("get many")
        .into_iter()
        .map(|e| e.key)
        .collect();
    found.sort();
    let mut expected: Vec<String> = (0..350).map(|i| format!("k{}", i * 2)).collect();
    expected.sort();
    assert_eq!(found, expected);
}

async fn concurrent_writers_get_gapless_revisions(store: Store) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..25 {
                let key = format!("w{t}/{}", i % 5);
                let revision = written(store.entry_put(&put(&key, "v")).await.expect("put"));
                revisions.push(revision);
                if i % 10 == 9 {
                    store
                        .entry_invalidate(
                            &Selector::KeyPrefix(format!("w{t}/")),
                            ChangeKind::Invalidate,
                            T0,
                        )
                        .await
                        .expect("invalidate");
                }
            }
            revisions
        }));
    }
    let mut put_revisions = Vec::new();
    for task in tasks {
        put_revisions.extend(task.await.expect("task"));
    }
    let log = store.change_list_since(0, 100_000).await.expect("log");
    let revisions: Vec<u64> = log.iter().map(|c| c.revision).collect();
    assert_eq!(
        revisions,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "gapless and ordered"
    );
    assert_eq!(
        store.revision_current().await.expect("revision"),
        log.len() as u64
    );
    let mut logged_puts: Vec<u64> = log
        .iter()
        .filter(|c| c.kind == ChangeKind::Put)
        .map(|c| c.revision)
        .collect();
    put_revisions.sort_unstable();
    logged_puts.sort_unstable();
    assert_eq!(
        put_revisions, logged_puts,
        "one log row per acknowledged put"
    );
    // Every entry's revision is the log row of its last write.
    for change in log.iter().rev() {
        if let Some(entry) = store.entry_get(&change.key).await.expect("get") {
            let last = log
                .iter()
                .rev()
                .find(|c| c.key == change.key)
                .expect("logged");
            assert_eq!(entry.revision, last.revision);
        }
    }
}

async fn migrations_are_idempotent_across_reconnects(store: Store) {
    written(store.entry_put(&put("k", "v")).await.expect("put"));
    store.close().await;
}

/// Compaction keeps a suffix of the log by count and by age, and
/// `change_oldest` says where watchers may resume.
async fn compaction_keeps_the_latest_changes(store: Store) {
    assert_eq!(store.change_oldest().await.expect("oldest"), 1, "empty log");
    for i in 0..30 {
        let mut entry = put(&format!("k{i}"), "v");
        // Ten old changes, then twenty recent ones.
        entry.now = if i < 10 { T0 - 3_600_000 } else { T0 };
        written(store.entry_put(&entry).await.expect("put"));
    }
    assert_eq!(store.change_oldest().await.expect("oldest"), 1);
    let hour = std::time::Duration::from_secs(3600);

    // By count: the latest 25 stay.
    let removed = store
        .change_compact(hour * 24, 25, T0)
        .await
        .expect("compact");
    assert_eq!(removed, 5);
    assert_eq!(store.change_oldest().await.expect("oldest"), 6);
    // By age: everything older than 30 minutes goes (revisions 1 to 10).
    let removed = store
        .change_compact(hour / 2, 25, T0)
        .await
        .expect("compact");
    assert_eq!(removed, 5);
    assert_eq!(store.change_oldest().await.expect("oldest"), 11);
    let left = store.change_list_since(0, 100).await.expect("list");
    assert_eq!(left.first().map(|c| c.revision), Some(11));
    assert_eq!(left.len(), 20);
    // Nothing to do twice.
    assert_eq!(
        store
            .change_compact(hour / 2, 25, T0)
            .await
            .expect("compact"),
        0
    );
    // All of it old: the log empties and the next revision is the oldest.
    let removed = store
        .change_compact(hour / 2, 25, T0 + 7_200_000)
        .await
        .expect("compact");
    assert_eq!(removed, 20);
    assert_eq!(store.change_oldest().await.expect("oldest"), 31);
    assert_eq!(store.revision_current().await.expect("current"), 30);
}

/// Every committing write announces its revision in process.
async fn commits_are_announced(store: Store) {
    let mut committed = store.committed();
    let revision = written(store.entry_put(&put("a", "1")).await.expect("put"));
    committed.changed().await.expect("announced");
    assert_eq!(*committed.borrow_and_update(), revision);
    let (count, last) = store
        .entry_invalidate(&Selector::All, ChangeKind::Invalidate, T0)
        .await
        .expect("invalidate");
    assert_eq!(count, 1);
    committed.changed().await.expect("announced");
    assert_eq!(*committed.borrow_and_update(), last);
    // A write that changes nothing announces nothing.
    store
        .entry_invalidate(&Selector::All, ChangeKind::Invalidate, T0)
        .await
        .expect("invalidate");
    assert!(!committed.has_changed().expect("open"));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::new(super::Backend::Sqlite).await.expect("sqlite");
                    super::$name(db.store().await).await;
                    // Reopening runs the migrator again over a migrated database.
                    db.store().await.close().await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::TestDb::new(super::Backend::Postgres).await else { return };
                    super::$name(db.store().await).await;
                    db.store().await.close().await;
                    db.finish().await;
                }
            )*
        }
    };
}

/// Each of `jobs` completed, its URL's entry written as `v`.
fn completed(jobs: &[Job]) -> Vec<roadie_store::JobFinish> {
    jobs.iter()
        .map(|job| roadie_store::JobFinish {
            id: job.id,
            outcome: roadie_store::JobOutcome::Complete {
                entry: Some(put(&job.url, "v")),
            },
        })
        .collect()
}

/// Enqueues a job for `url`, claims it as worker "w" and completes it
/// with an entry: a worker's two statements, each on its kept connection.
/// Returns the job's id.
async fn one_job_claimed_and_finished(store: &Store, url: &str) -> u64 {
    store
        .job_enqueue(&queue::job(url, 2))
        .await
        .expect("enqueue");
    let jobs = store
        .job_claim("w", 10, T0 + 30_000, T0)
        .await
        .expect("claim");
    assert_eq!(jobs.len(), 1);
    let results = store
        .job_finish_many_if_leased("w", &completed(&jobs), T0)
        .await
        .expect("finish");
    assert_eq!(results.len(), 1);
    jobs[0].id
}

/// A worker's claims and finishes keep their connections between
/// statements, as the committer keeps its own; closing the store still ends
/// at once, every kept connection back in the pool first.
async fn a_store_closes_with_its_kept_connections(store: Store) {
    written(store.entry_put(&put("k", "v")).await.expect("put"));
    one_job_claimed_and_finished(&store, "u/kept").await;
    // A bound on a failure (a kept connection never given back), not a wait.
    tokio::time::timeout(std::time::Duration::from_secs(10), store.close())
        .await
        .expect("the store closed with its kept connections");
    assert!(store.is_closed());
}

conformance!(
    a_store_closes_with_its_kept_connections,
    round_trip_keeps_every_field,
    a_rewrite_replaces_the_tags,
    a_tag_named_twice_is_kept_once,
    keep_higher_confidence_refuses_lower_writes,
    compare_and_set_on_revision,
    invalidate_by_every_selector,
    expiry_keeps_stale_entries_until_their_window_ends,
    random_picks_only_live_matching_entries,
    eviction_removes_least_recently_used_down_to_target,
    eviction_reads_on_past_one_chunk_of_candidates,
    passes_at_once_evict_about_once,
    get_many_returns_the_found_entries,
    concurrent_writers_get_gapless_revisions,
    migrations_are_idempotent_across_reconnects,
    compaction_keeps_the_latest_changes,
    commits_are_announced,
);

// Group commit: every test below opens its stores with a long wait for
// company, so writes issued together share one transaction.

/// A store whose committer waits `wait_ms` for company.
async fn batching_store(db: &TestDb, wait_ms: u64) -> Store {
    db.store_with(|options| {
        options.batching = Batching {
            max_batch: 64,
            max_wait: std::time::Duration::from_millis(wait_ms),
        };
    })
    .await
}

/// Kept connections never starve the rest of a pool: of two connections a
/// worker's claim and finish keep at most one, and a read after them gets
/// the other at once (with both kept it would wait out the acquire timeout
/// and fail).
async fn kept_connections_leave_the_pool_room(db: &TestDb) {
    let store = db
        .store_with(|options| {
            options.max_connections = 2;
            options.acquire_timeout = std::time::Duration::from_secs(1);
        })
        .await;
    let id = one_job_claimed_and_finished(&store, "u/room").await;
    let job = store
        .job_get(id)
        .await
        .expect("a connection for the read")
        .expect("the job");
    assert_eq!(job.state, roadie_store::JobState::Completed);
    store.close().await;
}

/// Inside one batch the conditions are judged in arrival order, each write
/// seeing the ones before it, and only the writes that land take revisions.
async fn a_batch_keeps_conditions_in_arrival_order(db: &TestDb) {
    let store = batching_store(db, 300).await;
    let first = EntryPut {
        if_revision: Some(0),
        tags: vec!["a".to_owned()],
        ..put("k1", "v1")
    };
    let second = EntryPut {
        if_revision: Some(0),
        ..put("k1", "v2")
    };
    // Large enough, and JSON: stored compressed.
    let json = format!("[{}]", vec!["{\"year\":\"2001\"}"; 200].join(","));
    let sure = EntryPut {
        confidence: 90,
        media_type: "application/json".to_owned(),
        ..put("k2", &json)
    };
    let unsure = EntryPut {
        confidence: 50,
        keep_higher_confidence: true,
        ..put("k2", "unsure")
    };
    let again = EntryPut {
        tags: vec!["b".to_owned()],
        now: T0 + 5,
        ..put("k1", "v3")
    };
    // join! polls in order: the writes reach the committer in this order.
    let (a, b, c, d, e) = tokio::join!(
        store.entry_put(&first),
        store.entry_put(&second),
        store.entry_put(&sure),
        store.entry_put(&unsure),
        store.entry_put(&again),
    );
    assert_eq!(
        a.expect("a"),
        PutResult::Written {
            revision: 1,
            created_at: T0
        }
    );
    assert_eq!(b.expect("b"), PutResult::RevisionMismatch { revision: 1 });
    assert_eq!(
        c.expect("c"),
        PutResult::Written {
            revision: 2,
            created_at: T0
        }
    );
    assert_eq!(
        d.expect("d"),
        PutResult::KeptHigherConfidence {
            revision: 2,
            confidence: 90
        }
    );
    assert_eq!(
        e.expect("e"),
        PutResult::Written {
            revision: 3,
            created_at: T0
        }
    );
    let WriteBatches {
        batches,
        writes,
        split,
        ..
    } = store.write_batches();
    assert_eq!(
        (batches, writes, split),
        (1, 5, 0),
        "one transaction took all five"
    );
    let k1 = store.entry_get("k1").await.expect("get").expect("k1");
    assert_eq!((&k1.value[..], k1.revision), (&b"v3"[..], 3));
    // Created by its first write, updated by its last, with the last's tags.
    assert_eq!((k1.created_at, k1.updated_at), (T0, T0 + 5));
    assert_eq!(k1.tags, vec!["b".to_owned()]);
    let k2 = store.entry_get("k2").await.expect("get").expect("k2");
    assert_eq!((&k2.value[..], k2.confidence), (json.as_bytes(), 90));
    assert_log(
        &store,
        &[
            (ChangeKind::Put, "k1"),
            (ChangeKind::Put, "k2"),
            (ChangeKind::Put, "k1"),
        ],
    )
    .await;
    let by_tag = |tag: &str| Selector::Tag(tag.to_owned());
    let (gone, _) = store
        .entry_invalidate(&by_tag("a"), ChangeKind::Invalidate, T0)
        .await
        .expect("a");
    assert_eq!(gone, 0, "the first write's tag went with its row");
    let (gone, _) = store
        .entry_invalidate(&by_tag("b"), ChangeKind::Invalidate, T0)
        .await
        .expect("b");
    assert_eq!(gone, 1);
}

/// Deletes and invalidations join the Puts' batch and keep their place in
/// it: each sees the writes before it and none after, and an event's
/// selectors land in the same commit.
async fn a_batch_mixes_puts_deletes_and_invalidations_in_arrival_order(db: &TestDb) {
    let store = batching_store(db, 300).await;
    let tagged = |key: &str, tag: &str| EntryPut {
        tags: vec![tag.to_owned()],
        ..put(key, key)
    };
    let (k1, k2, k3) = (tagged("k1", "x"), tagged("k2", "x"), tagged("k3", "y"));
    // Absent by then (invalidated): created again, if_revision 0.
    let k2_again = EntryPut {
        if_revision: Some(0),
        ..tagged("k2", "z")
    };
    let by_tags = [Selector::Tag("x".to_owned()), Selector::Tag("y".to_owned())];
    // join! polls in order: the writes reach the committer in this order.
    let (a, b, c, d, e, f, g, h) = tokio::join!(
        store.entry_put(&k1),
        store.entry_put(&k2),
        store.entry_delete("k1", Some(1), T0),
        // k2 is at 2, not 1: refused, and nothing logged.
        store.entry_delete("k2", Some(1), T0),
        store.entry_put(&k3),
        store.entry_invalidate_each(&by_tags, ChangeKind::Invalidate, T0),
        store.entry_put(&k2_again),
        store.entry_delete("nothing", None, T0),
    );
    assert_eq!(
        a.expect("a"),
        PutResult::Written {
            revision: 1,
            created_at: T0
        }
    );
    assert_eq!(
        b.expect("b"),
        PutResult::Written {
            revision: 2,
            created_at: T0
        }
    );
    assert_eq!(c.expect("c"), DeleteResult::Deleted { revision: 3 });
    assert_eq!(
        d.expect("d"),
        DeleteResult::RevisionMismatch { revision: 2 }
    );
    assert_eq!(
        e.expect("e"),
        PutResult::Written {
            revision: 4,
            created_at: T0
        }
    );
    assert_eq!(f.expect("f"), (vec![1, 1], 6), "k2 by x, then k3 by y");
    assert_eq!(
        g.expect("g"),
        PutResult::Written {
            revision: 7,
            created_at: T0
        }
    );
    assert_eq!(h.expect("h"), DeleteResult::Absent);
    let WriteBatches {
        batches,
        writes,
        split,
        ..
    } = store.write_batches();
    assert_eq!(
        (batches, writes, split),
        (1, 8, 0),
        "one transaction took all eight"
    );
    assert_log(
        &store,
        &[
            (ChangeKind::Put, "k1"),
            (ChangeKind::Put, "k2"),
            (ChangeKind::Delete, "k1"),
            (ChangeKind::Put, "k3"),
            (ChangeKind::Invalidate, "k2"),
            (ChangeKind::Invalidate, "k3"),
            (ChangeKind::Put, "k2"),
        ],
    )
    .await;
    assert_eq!(store.entry_get("k1").await.expect("get"), None);
    assert_eq!(store.entry_get("k3").await.expect("get"), None);
    let k2 = store.entry_get("k2").await.expect("get").expect("k2");
    assert_eq!((k2.revision, k2.tags), (7, vec!["z".to_owned()]));
}

/// A write the database refuses fails alone: the writes batched with it
/// land, with gapless revisions, and the store writes on. Postgres refuses
/// a NUL in text; SQLite stores it, so there a trigger refuses the key,
/// failing the batch's one query (BEGIN IMMEDIATE ... COMMIT) midway.
async fn a_bad_write_fails_alone(db: &TestDb) {
    let store = batching_store(db, 300).await;
    if db.backend() == Backend::Sqlite {
        let mut conn = sqlx::AnyConnection::connect(&db.url)
            .await
            .expect("connect");
        sqlx::query(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON entries WHEN NEW.key LIKE 'bad%' \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        .execute(&mut conn)
        .await
        .expect("create the trigger");
    }
    let (good1, bad, good2) = (put("good/1", "v"), put("bad\0key", "v"), put("good/2", "v"));
    let (a, bad, c) = tokio::join!(
        store.entry_put(&good1),
        store.entry_put(&bad),
        store.entry_put(&good2),
    );
    let (a, c) = (written(a.expect("a")), written(c.expect("c")));
    assert!(bad.is_err(), "the bad write was stored: {bad:?}");
    assert_eq!((a, c), (1, 2));
    // No transaction of the failed batch is left open on a connection:
    // the next write lands, and nothing of the refused one is read.
    assert_eq!(
        written(store.entry_put(&put("good/3", "v")).await.expect("put")),
        3
    );
    if db.backend() == Backend::Sqlite {
        assert_eq!(store.entry_get("bad\0key").await.expect("get"), None);
    }
    assert_log(
        &store,
        &[
            (ChangeKind::Put, "good/1"),
            (ChangeKind::Put, "good/2"),
            (ChangeKind::Put, "good/3"),
        ],
    )
    .await;
}

/// 64 writers on two stores (two processes' worth of committers and pools)
/// on one database: every acknowledged write has its own revision, the log
/// is gapless and in commit order, and each entry holds its last write.
/// A batch that changes nothing (a Delete of an absent key, a refused
/// Put, an invalidation that matches nothing) leaves no lock behind: a
/// writer on another store of the same database goes on at once.
async fn a_batch_that_changes_nothing_holds_no_lock(db: &TestDb) {
    let (first, second) = (batching_store(db, 0).await, batching_store(db, 0).await);
    written(first.entry_put(&put("k", "v")).await.expect("put"));
    assert_eq!(
        first
            .entry_delete("absent", None, T0)
            .await
            .expect("delete"),
        DeleteResult::Absent
    );
    let refused = EntryPut {
        if_revision: Some(7),
        ..put("k", "w")
    };
    assert_eq!(
        first.entry_put(&refused).await.expect("put"),
        PutResult::RevisionMismatch { revision: 1 }
    );
    let (gone, _) = first
        .entry_invalidate(
            &Selector::Tag("none".to_owned()),
            ChangeKind::Invalidate,
            T0,
        )
        .await
        .expect("invalidate");
    assert_eq!(gone, 0);
    // The first store now sits idle; the second must not wait on it.
    let other = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        second.entry_put(&put("k2", "v")),
    )
    .await
    .expect("a write on another store waited on an idle one")
    .expect("put");
    assert_eq!(
        other,
        PutResult::Written {
            revision: 2,
            created_at: T0
        }
    );
}

async fn writers_on_two_stores_get_gapless_revisions(db: &TestDb) {
    let stores = [batching_store(db, 2).await, batching_store(db, 0).await];
    let mut tasks = Vec::new();
    for writer in 0..64 {
        let store = stores[writer % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..10 {
                let key = format!("w{writer}/{}", i % 3);
                revisions.push(written(
                    store
                        .entry_put(&put(&key, &i.to_string()))
                        .await
                        .expect("put"),
                ));
            }
            revisions
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.expect("writer"));
    }
    acknowledged.sort_unstable();
    assert_eq!(acknowledged, (1..=640).collect::<Vec<u64>>());
    let log = stores[0].change_list_since(0, 10_000).await.expect("log");
    let revisions: Vec<u64> = log.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (1..=640).collect::<Vec<u64>>());
    for writer in 0..64 {
        let entry = stores[1]
            .entry_get(&format!("w{writer}/0"))
            .await
            .expect("get")
            .expect("written");
        assert_eq!(&entry.value[..], b"9");
        let last = log
            .iter()
            .rev()
            .find(|c| c.key == entry.key)
            .expect("logged");
        assert_eq!(entry.revision, last.revision);
    }
}

/// Conditional writes (whose batches take the revision lock before reading
/// the keys) and unconditional ones (whose batches, on Postgres, are one
/// statement that takes it itself) of the same keys and tags, from two
/// stores at once: every write lands, no batch fails and splits, the
/// revisions stay gapless and every key keeps its last write's tags. (Both
/// paths take the revision lock before any row: a deadlock between them
/// would fail a batch. Its window is too narrow to force here; this test
/// keeps the two paths honest together.)
async fn conditional_and_unconditional_writers_of_shared_keys_all_land(db: &TestDb) {
    let stores = [batching_store(db, 2).await, batching_store(db, 0).await];
    let mut tasks = Vec::new();
    for writer in 0..32 {
        let store = stores[writer % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..10 {
                let mut write = put(&format!("shared/{}", (writer + i) % 8), &i.to_string());
                write.tags = vec!["t:shared".to_owned(), format!("t:{}", i % 3)];
                write.keep_higher_confidence = writer % 4 == 0;
                revisions.push(written(store.entry_put(&write).await.expect("put")));
            }
            revisions
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.expect("writer"));
    }
    acknowledged.sort_unstable();
    assert_eq!(acknowledged, (1..=320).collect::<Vec<u64>>());
    for store in &stores {
        assert_eq!(store.write_batches().split, 0, "a batch failed and split");
    }
    let tagged = stores[0]
        .entry_list(
            &roadie_store::EntryFilter {
                tag: "t:shared".to_owned(),
                ..Default::default()
            },
            "",
            100,
            false,
            T0,
        )
        .await
        .expect("list");
    assert_eq!(tagged.len(), 8);
}

/// Reads noted by `entry_touch` while batches of writes land on the same
/// keys: neither side fails. (The touch used to lock its rows one statement
/// at a time in one transaction, and a batch locks them in one statement:
/// on Postgres the two could wait on each other in a circle, and Postgres
/// broke it after a second by failing one of them.)
async fn touches_and_batched_writes_of_the_same_keys_both_land(db: &TestDb) {
    let store = batching_store(db, 0).await;
    let keys: Vec<String> = (0..1000).map(|i| format!("k/{i:04}")).collect();
    for key in &keys {
        written(store.entry_put(&put(key, "0")).await.expect("seed"));
    }
    let touching = {
        let (store, keys) = (store.clone(), keys.clone());
        tokio::spawn(async move {
            for round in 0..40_i64 {
                // Newest first: the opposite of the batches' key order.
                let accesses: Vec<Access> = keys
                    .iter()
                    .rev()
                    .map(|key| Access {
                        key: key.clone(),
                        at: T0 + round,
                        count: 1,
                    })
                    .collect();
                store.entry_touch(&accesses).await.expect("touch");
            }
        })
    };
    let mut writers = Vec::new();
    for writer in 0..32_usize {
        let (store, keys) = (store.clone(), keys.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..20_usize {
                let key = &keys[(writer * 7 + i * 13) % keys.len()];
                written(store.entry_put(&put(key, "v")).await.expect("put"));
            }
        }));
    }
    touching.await.expect("touching");
    for writer in writers {
        writer.await.expect("writer");
    }
    let log = store.change_list_since(0, 10_000).await.expect("log");
    assert_eq!(log.len(), keys.len() + 32 * 20, "every write landed once");
    assert_eq!(
        store.write_batches().split,
        0,
        "no batch failed and had to be split (on Postgres: a deadlock broken)"
    );
}

/// Enqueues that arrive together go into one statement and keep their
/// meaning there: a new key gets a job of its own; a key asked twice gets
/// one job, at the more urgent priority; a key with an unfinished job
/// shares it; a condition that no longer holds answers `None`; a request the
/// database refuses (a NUL, on Postgres) fails alone.
async fn enqueues_in_one_batch_keep_their_meaning(db: &TestDb) {
    let store = batching_store(db, 300).await;
    let (old, _) = store.job_enqueue(&queue::job("old", 2)).await.expect("old");
    written(store.entry_put(&put("written", "v")).await.expect("put"));
    let asked = [
        ("new/1", 2),
        ("twice", 3),
        ("old", 2),
        ("written", 2),
        ("twice", 1),
        ("new/2", 2),
        ("bad\0url", 2),
        ("new/3", 2),
    ]
    .map(|(url, priority)| queue::job(url, priority));
    let (new1, twice, shares, stale, urgent, new2) = tokio::join!(
        store.job_enqueue_unless_written(&asked[0], None),
        store.job_enqueue_unless_written(&asked[1], None),
        store.job_enqueue_unless_written(&asked[2], None),
        // Read as absent (0), written since.
        store.job_enqueue_unless_written(&asked[3], Some(0)),
        store.job_enqueue_unless_written(&asked[4], None),
        store.job_enqueue_unless_written(&asked[5], None),
    );
    let fresh = |result: Result<Option<(Job, bool)>, _>| {
        let (job, shared) = result.expect("enqueue").expect("a job");
        assert!(!shared, "{} is new", job.url);
        job
    };
    let (new1, new2, twice) = (fresh(new1), fresh(new2), fresh(twice));
    assert_eq!((new1.url.as_str(), new2.url.as_str()), ("new/1", "new/2"));
    assert_ne!(new1.id, new2.id);
    let (urgent, shared) = urgent.expect("urgent").expect("a job");
    assert!(
        shared,
        "the second request for a key shares the first's job"
    );
    assert_eq!((urgent.id, urgent.priority), (twice.id, 1));
    let stored = store.job_get(twice.id).await.expect("get").expect("twice");
    assert_eq!(stored.priority, 1, "raised to the more urgent request's");
    let (shares, shared) = shares.expect("old again").expect("a job");
    assert!(shared);
    assert_eq!(shares.id, old.id);
    assert_eq!(stale.expect("stale"), None, "the entry was written since");
    // A batch whose statement the database refuses: each request alone.
    let (bad, new3) = tokio::join!(
        store.job_enqueue_unless_written(&asked[6], None),
        store.job_enqueue_unless_written(&asked[7], None),
    );
    assert_eq!(fresh(new3).url, "new/3");
    match db.backend() {
        Backend::Postgres => assert!(bad.is_err(), "postgres stored a NUL: {bad:?}"),
        Backend::Sqlite => assert!(!fresh(bad).url.is_empty()),
    }
}

/// A batch larger than one statement may hold (on SQLite, 1 363 rows of
/// 22 values) lands whole: every write acknowledged at its own revision,
/// with its own value and tags.
async fn a_batch_past_one_statements_limit_lands_whole(db: &TestDb) {
    const WRITES: u64 = 1_500;
    let store = db
        .store_with(|options| {
            options.batching = Batching {
                max_batch: WRITES as usize,
                max_wait: std::time::Duration::from_secs(5),
            };
        })
        .await;
    let tasks: Vec<_> = (0..WRITES)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut write = put(&format!("wide/{i:04}"), &i.to_string());
                write.tags = vec!["t:wide".to_owned(), format!("t:{}", i % 7)];
                written(store.entry_put(&write).await.expect("put"))
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.push(task.await.expect("writer"));
    }
    acknowledged.sort_unstable();
    assert_eq!(acknowledged, (1..=WRITES).collect::<Vec<u64>>());
    let WriteBatches {
        batches, writes, ..
    } = store.write_batches();
    assert_eq!((batches, writes), (1, WRITES), "one batch took them all");
    for i in [0, 1_362, 1_363, 1_499] {
        let entry = store
            .entry_get(&format!("wide/{i:04}"))
            .await
            .expect("get")
            .expect("written");
        assert_eq!(entry.value, i.to_string().into_bytes());
        assert_eq!(
            entry.tags,
            vec!["t:wide".to_owned(), format!("t:{}", i % 7)]
        );
    }
    // The tag rows (what selectors read) landed in every chunk.
    let tagged = store
        .entry_list(
            &roadie_store::EntryFilter {
                tag: "t:3".to_owned(),
                ..Default::default()
            },
            "",
            1_000,
            false,
            T0,
        )
        .await
        .expect("list");
    assert_eq!(tagged.len(), (0..WRITES).filter(|i| i % 7 == 3).count());
    let changes = store.change_list_since(0, 10_000).await.expect("log");
    assert_eq!(changes.len() as u64, WRITES);
    store.close().await;
}

/// The committer's connection throws its plans away when it is new, then
/// once per `REPLAN` while writes keep it busy (Postgres): no plan made
/// while the tables were small runs on once they have grown for longer.
/// SQLite keeps no plans to throw away.
async fn the_committer_replans_once_per_interval(db: &TestDb) {
    let store = batching_store(db, 0).await;
    let replans = || store.write_batches().replans;
    let first = match db.backend() {
        Backend::Postgres => 1,
        Backend::Sqlite => 0,
    };
    written(store.entry_put(&put("k0", "v")).await.expect("put"));
    assert_eq!(replans(), first, "a fresh connection's plans go");
    written(store.entry_put(&put("k1", "v")).await.expect("put"));
    assert_eq!(replans(), first, "a plan a moment old is kept");
    // A write every 50 ms, never idle long enough for the connection to go
    // back to the pool, for one and a half intervals.
    let started = std::time::Instant::now();
    let mut count = 2;
    while started.elapsed() < REPLAN * 3 / 2 {
        let key = format!("k{count}");
        written(store.entry_put(&put(&key, "v")).await.expect("put"));
        count += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let replanned = replans();
    match db.backend() {
        Backend::Sqlite => assert_eq!(replanned, 0),
        // One more after the interval; a third only if a write stalled
        // past the pool's idle bound and a fresh connection came.
        Backend::Postgres => assert!(
            (2..=3).contains(&replanned),
            "{replanned} re-plans over {count} writes in {:?}",
            started.elapsed()
        ),
    }
    store.close().await;
}

macro_rules! batched {
    ($($name:ident),* $(,)?) => {
        mod batched_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::new(super::Backend::Sqlite).await.expect("sqlite");
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod batched_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::TestDb::new(super::Backend::Postgres).await else { return };
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

batched!(
    kept_connections_leave_the_pool_room,
    a_batch_past_one_statements_limit_lands_whole,
    the_committer_replans_once_per_interval,
    a_batch_keeps_conditions_in_arrival_order,
    a_batch_mixes_puts_deletes_and_invalidations_in_arrival_order,
    a_bad_write_fails_alone,
    writers_on_two_stores_get_gapless_revisions,
    a_batch_that_changes_nothing_holds_no_lock,
    touches_and_batched_writes_of_the_same_keys_both_land,
    enqueues_in_one_batch_keep_their_meaning,
    conditional_and_unconditional_writers_of_shared_keys_all_land,
);

/// SQLite's data_version moves when another connection commits, and only then.
#[tokio::test]
async fn data_version_sees_commits_of_other_connections() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let mut version = store
        .data_version()
        .await
        .expect("open")
        .expect("sqlite has a data version");
    let before = version.read().await.expect("read");
    assert_eq!(
        version.read().await.expect("read"),
        before,
        "no commit, no change"
    );
    written(store.entry_put(&put("k", "v")).await.expect("put"));
    assert_ne!(version.read().await.expect("read"), before);
    store.close().await;
}

/// A connection of its own listening on `channel` of `db`'s database.
async fn listening(db: &TestDb, channel: &str) -> sqlx::postgres::PgListener {
    let mut listener = sqlx::postgres::PgListener::connect(&db.url)
        .await
        .expect("connect to listen");
    listener.listen(channel).await.expect("listen");
    listener
}

/// A Postgres writer's commits reach listeners as one NOTIFY per burst.
#[tokio::test]
async fn postgres_commits_notify_their_revision() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    assert!(store.data_version().await.expect("none").is_none());
    let mut listener = listening(&db, roadie_store::CHANGE_CHANNEL).await;
    let revision = written(store.entry_put(&put("k", "v")).await.expect("put"));
    let heard = listener.recv().await.expect("notification");
    assert_eq!(heard.payload(), revision.to_string());
    store.close().await;
    db.finish().await;
}

/// Connections the database ended while they sat in the pool (a restart,
/// an operator's `pg_terminate_backend`) are found out before a call gets
/// one: reads and writes after it succeed, none fails on a dead connection.
#[tokio::test]
async fn postgres_connections_ended_while_idle_are_not_handed_out() {
    use sqlx::Connection;
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    // Several pooled connections, and the committer's held one.
    let (a, b, c) = tokio::join!(
        store.entry_get("absent"),
        store.entry_get("absent"),
        store.entry_get("absent")
    );
    for read in [a, b, c] {
        assert!(read.expect("read").is_none());
    }
    written(store.entry_put(&put("k", "v1")).await.expect("put"));
    let mut admin = sqlx::postgres::PgConnection::connect(&db.url)
        .await
        .expect("connect");
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(ended.len() >= 2, "the store held connections: {ended:?}");
    // The connections are now idle longer than the pool trusts one
    // unchecked: what this test is about, not a wait for something to happen.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for _ in 0..4 {
        assert!(store.entry_get("absent").await.expect("read").is_none());
    }
    written(store.entry_put(&put("k", "v2")).await.expect("put"));
    let entry = store.entry_get("k").await.expect("read").expect("present");
    assert_eq!(&entry.value[..], b"v2");
    store.close().await;
    db.finish().await;
}

/// On Postgres a job a caller waits for is announced to idle workers by
/// the statement that enqueues it, as is a shared background job raised to
/// that priority; background jobs are not (the server announces those,
/// debounced). Markers sent between the enqueues show which one spoke.
#[tokio::test]
async fn postgres_an_enqueue_a_caller_waits_for_tells_the_workers() {
    use roadie_store::{WAIT_PRIORITY, WORK_CHANNEL};
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    let mut listener = listening(&db, WORK_CHANNEL).await;
    let mut next = async || {
        listener
            .recv()
            .await
            .expect("notification")
            .payload()
            .to_owned()
    };
    let background = WAIT_PRIORITY + 1;
    store
        .job_enqueue(&queue::job("u/background", background))
        .await
        .expect("enqueue");
    store
        .notify(WORK_CHANNEL, "after background")
        .await
        .expect("notify");
    let (waited, shared) = store
        .job_enqueue(&queue::job("u/waited", WAIT_PRIORITY))
        .await
        .expect("enqueue");
    assert!(!shared);
    store
        .notify(WORK_CHANNEL, "after waited")
        .await
        .expect("notify");
    assert_eq!(
        next().await,
        "after background",
        "a background job announced itself"
    );
    assert_eq!(
        next().await,
        "musicbrainz",
        "the waited job was not announced with its provider"
    );
    assert_eq!(next().await, "after waited");

    // Shared: already at the waiting priority, nothing new to announce;
    // raised from the background, announced.
    let (again, shared) = store
        .job_enqueue(&queue::job("u/waited", WAIT_PRIORITY))
        .await
        .expect("enqueue");
    assert!(shared && again.id == waited.id);
    store
        .notify(WORK_CHANNEL, "after shared")
        .await
        .expect("notify");
    let (raised, shared) = store
        .job_enqueue(&queue::job("u/background", WAIT_PRIORITY))
        .await
        .expect("enqueue");
    assert!(shared && raised.priority == WAIT_PRIORITY);
    store
        .notify(WORK_CHANNEL, "after raised")
        .await
        .expect("notify");
    assert_eq!(
        next().await,
        "after shared",
        "sharing an announced job announced it again"
    );
    assert_eq!(
        next().await,
        "musicbrainz",
        "the raised job was not announced with its provider"
    );
    assert_eq!(next().await, "after raised");
    store.close().await;
    db.finish().await;
}

/// A job that ends while an enqueue of its key runs does not leave a second
/// job behind. The enqueue read the entry as absent (`seen` 0); the job's
/// end, its entry written, commits after that enqueue's statement began and
/// before it checks for an unfinished job of the key. The enqueue shares the
/// ending job or answers that the entry was written: never a new job (a
/// second upstream request for one result).
#[tokio::test]
async fn postgres_a_job_ending_during_an_enqueue_of_its_key_is_not_fetched_again() {
    use roadie_store::WAIT_PRIORITY;
    use sqlx::Connection;
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    let (first, _) = store
        .job_enqueue(&queue::job("u/ending", WAIT_PRIORITY))
        .await
        .expect("enqueue");
    // The finishing transaction, held open after its job row's update.
    let mut finisher = sqlx::postgres::PgConnection::connect(&db.url)
        .await
        .expect("connect");
    let mut ending = finisher.begin().await.expect("begin");
    sqlx::query("UPDATE jobs SET state = 'completed', finished_at = 1 WHERE id = $1")
        .bind(i64::try_from(first.id).expect("an id"))
        .execute(&mut *ending)
        .await
        .expect("end the job");
    let mut watcher = sqlx::postgres::PgConnection::connect(&db.url)
        .await
        .expect("connect");
    let again = queue::job("u/ending", WAIT_PRIORITY);
    let enqueue = store.job_enqueue_unless_written(&again, Some(0));
    tokio::pin!(enqueue);
    // Let the enqueue run until it answers or waits on the ending job's row.
    let answered = loop {
        tokio::select! {
            answer = &mut enqueue => break Some(answer),
            () = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watcher)
        .await
        .expect("read the activity");
        if waiting > 0 {
            break None;
        }
    };
    // The job's entry, then the end, committed.
    written(
        store
            .entry_put(&put("u/ending", "fetched"))
            .await
            .expect("put"),
    );
    ending.commit().await.expect("commit the end");
    let answer = match answered {
        Some(answer) => answer,
        None => enqueue.await,
    }
    .expect("enqueue");
    match answer {
        None => {}
        Some((job, shared)) => assert!(
            shared && job.id == first.id,
            "a second job for a key whose job ended with its entry: {job:?}"
        ),
    }
    store.close().await;
    db.finish().await;
}

/// On Postgres a worker's batch of ended jobs is announced to waiting
/// servers ([`roadie_store::JOB_CHANNEL`]) as one notification naming every
/// job that completed or failed; a retry, which ends nothing, is not named.
#[tokio::test]
async fn postgres_finished_jobs_are_announced_in_one_notification() {
    use roadie_store::{JOB_CHANNEL, JobFinish, JobOutcome};
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    let mut listener = listening(&db, JOB_CHANNEL).await;
    for url in ["u/done", "u/failed", "u/again"] {
        store
            .job_enqueue(&queue::job(url, 2))
            .await
            .expect("enqueue");
    }
    let mut jobs = store
        .job_claim("w", 10, T0 + 30_000, T0)
        .await
        .expect("claim");
    jobs.sort_by(|a, b| a.url.cmp(&b.url));
    let [again, done, failed] = [&jobs[0], &jobs[1], &jobs[2]];
    let finishes = [
        JobFinish {
            id: done.id,
            outcome: JobOutcome::Complete {
                entry: Some(put(&done.url, "v")),
            },
        },
        JobFinish {
            id: failed.id,
            outcome: JobOutcome::Fail {
                error: "gone".to_owned(),
                entry: None,
            },
        },
        JobFinish {
            id: again.id,
            outcome: JobOutcome::RetryLater {
                error: "later".to_owned(),
                run_after: T0 + 1_000,
                counts: true,
            },
        },
    ];
    store
        .job_finish_many_if_leased("w", &finishes, T0)
        .await
        .expect("finish");
    // A bound on a failure, not a wait for success: the notification
    // arrives at the commit, before `job_finish_many_if_leased` returns.
    let heard = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification at the commit")
        .expect("notification");
    assert_eq!(heard.payload(), format!("{},{}", done.id, failed.id));
    store.close().await;
    db.finish().await;
}

/// On Postgres a worker's finish tells the servers' tails of its revisions
/// itself: the statement that writes the entries sends the batch's last
/// revision on [`roadie_store::CHANGE_CHANNEL`] at its commit, and the
/// store's notifier sends nothing more for it (a marker sent after the
/// finish is the next thing heard).
#[tokio::test]
async fn postgres_a_workers_finish_notifies_its_revision_once() {
    use roadie_store::{CHANGE_CHANNEL, Finish};
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store().await;
    for url in ["u/one", "u/two"] {
        store
            .job_enqueue(&queue::job(url, 2))
            .await
            .expect("enqueue");
    }
    let jobs = store
        .job_claim("w", 10, T0 + 30_000, T0)
        .await
        .expect("claim");
    assert_eq!(jobs.len(), 2);
    let mut listener = listening(&db, CHANGE_CHANNEL).await;
    let finishes = completed(&jobs);
    let results = store
        .job_finish_many_if_leased("w", &finishes, T0)
        .await
        .expect("finish");
    let last = results
        .into_iter()
        .map(|result| match result {
            Finish::Recorded { put: Some(put) } => written(put),
            other => panic!("expected an entry written, got {other:?}"),
        })
        .max()
        .expect("two entries");
    assert_eq!(last, 2);
    store
        .notify(CHANGE_CHANNEL, "marker")
        .await
        .expect("marker");
    let bound = std::time::Duration::from_secs(10);
    let mut heard = Vec::new();
    while heard.last().map(String::as_str) != Some("marker") {
        let notification = tokio::time::timeout(bound, listener.recv())
            .await
            .expect("the notifications within the bound")
            .expect("notification");
        heard.push(notification.payload().to_owned());
    }
    assert_eq!(heard, [last.to_string(), "marker".to_owned()]);
    store.close().await;
    db.finish().await;
}

/// Postgres over TLS, as `store.url` asks for it (libpq's `sslmode`, with
/// `sslrootcert` as the CA; `verify-ca` checks the name as `verify-full`
/// does): the pool's connections are encrypted, a CA that
/// did not sign the server's certificate is refused at connect, and
/// `sslmode=disable` is plaintext (so the check can tell the difference).
#[tokio::test]
async fn postgres_over_tls() {
    use roadie_store::StoreOptions;
    use sqlx::Connection;
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let plain = db.store().await;
    // The server's own certificate is its CA when self-signed, as the
    // machine's is; read where it is from the server.
    let database = db
        .url
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned();
    let mut admin = sqlx::postgres::PgConnection::connect(&db.url)
        .await
        .expect("connect");
    let cert: String = sqlx::query_scalar("SELECT current_setting('ssl_cert_file')")
        .fetch_one(&mut admin)
        .await
        .expect("ssl_cert_file");
    let encrypted = async |admin: &mut sqlx::postgres::PgConnection| -> Vec<bool> {
        sqlx::query_scalar(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
        )
        .bind(&database)
        .fetch_all(admin)
        .await
        .expect("pg_stat_ssl")
    };
    plain.close().await;
    for (mode, tls) in [
        ("sslmode=disable".to_owned(), false),
        ("sslmode=require".to_owned(), true),
        (format!("sslmode=verify-full&sslrootcert={cert}"), true),
    ] {
        // verify-full checks the name too: the machine's certificate is
        // for localhost.
        let url = format!("{}?{mode}", db.url.replace("@127.0.0.1:", "@localhost:"));
        let store = Store::connect(&StoreOptions::new(&url))
            .await
            .unwrap_or_else(|error| panic!("{mode}: {error}"));
        written(store.entry_put(&put("k", "over tls")).await.expect("put"));
        let ssl = encrypted(&mut admin).await;
        assert!(
            !ssl.is_empty() && ssl.iter().all(|ssl| *ssl == tls),
            "{mode}: {ssl:?}"
        );
        store.close().await;
    }

    // A CA that did not sign the server's certificate: refused, not plaintext.
    let other_ca = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(other_ca.path(), OTHER_CA).expect("write");
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url.replace("@127.0.0.1:", "@localhost:"),
        other_ca.path().display()
    );
    match Store::connect(&StoreOptions::new(&url)).await {
        Ok(_) => panic!("a CA that signed nothing was accepted"),
        Err(error) => assert!(error.to_string().contains("certificate"), "{error}"),
    }
    admin.close().await.expect("close");
    db.finish().await;
}

/// A self-signed CA certificate that signed nothing the test Postgres has.
const OTHER_CA: &str = include_str!("other-ca.pem");

mod queue {
    //! The job queue, on both backends.

    use roadie_store::{
        Backend, Finish, FirstLook, JobFinish, JobNew, JobOutcome, JobState, PutResult, Store,
    };

    use super::{T0, put};

    pub fn job(url: &str, priority: u32) -> JobNew {
        JobNew {
            provider: "musicbrainz".to_owned(),
            url: url.to_owned(),
            policy: "api_metadata".to_owned(),
            tags: vec!["artist:a".to_owned()],
            priority,
            max_attempts: 3,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
            now: T0,
        }
    }

    /// A waited Fetch's first look: the entry when one is stored;
    /// otherwise, on Postgres, the job enqueued by the same statement (as
    /// `job_get` reads it back), and nothing more while that job holds the
    /// key (the caller shares it the usual way), made durable without a
    /// change. SQLite only reads.
    pub async fn a_first_look_reads_the_entry_or_enqueues_its_job(store: Store) {
        super::written(store.entry_put(&put("cached", "v")).await.expect("put"));
        let stored = store
            .entry_get("cached")
            .await
            .expect("get")
            .expect("cached");
        match store
            .entry_get_or_enqueue(&job("cached", 1))
            .await
            .expect("look")
        {
            FirstLook::Entry(entry) => assert_eq!(entry, stored),
            other => panic!("a stored entry is answered as is, not {other:?}"),
        }
        let missing = job("missing", 1);
        let looked = store.entry_get_or_enqueue(&missing).await.expect("look");
        match (store.backend(), looked) {
            (Backend::Postgres, FirstLook::Enqueued(new)) => {
                let read = store.job_get(new.id).await.expect("get").expect("the job");
                assert_eq!(new, read, "the job as the statement made it");
                // Put on disk before anyone is told of it: the row is as it was.
                store.job_durable(new.id).await.expect("durable");
                let flushed = store.job_get(new.id).await.expect("get").expect("the job");
                assert_eq!(new, flushed, "making the job durable changes nothing in it");
                store
                    .job_durable(new.id + 1_000)
                    .await
                    .expect("a job that is gone");
                assert_eq!(
                    (new.url.as_str(), new.priority, new.state, new.attempt),
                    ("missing", 1, JobState::Available, 0)
                );
                let again = store.entry_get_or_enqueue(&missing).await.expect("again");
                assert!(matches!(again, FirstLook::Absent), "{again:?}");
                let (shared, is_shared) = store
                    .job_enqueue_unless_written(&missing, Some(0))
                    .await
                    .expect("share")
                    .expect("a job");
                assert!(is_shared);
                assert_eq!(shared.id, new.id);
            }
            (Backend::Sqlite, FirstLook::Absent) => {
                assert!(
                    store.job_depth().await.expect("depth").is_empty(),
                    "nothing enqueued"
                );
            }
            (backend, other) => panic!("{backend:?} answered {other:?}"),
        }
        assert!(store.entry_get("missing").await.expect("get").is_none());
    }

    pub async fn enqueue_shares_one_unfinished_job_per_url(store: Store) {
        let (first, shared) = store.job_enqueue(&job("u/1", 2)).await.expect("enqueue");
        assert!(!shared);
        assert_eq!(
            (first.state, first.attempt, first.priority),
            (JobState::Available, 0, 2)
        );
        assert_eq!(first.tags, ["artist:a"]);
        let (again, shared) = store.job_enqueue(&job("u/1", 3)).await.expect("enqueue");
        assert!(shared);
        assert_eq!(
            (again.id, again.priority),
            (first.id, 2),
            "a later, lower priority does not demote"
        );
        // A waiting caller raises the shared job's priority.
        let (waited, shared) = store.job_enqueue(&job("u/1", 1)).await.expect("enqueue");
        assert!(shared);
        assert_eq!(waited.priority, 1);
        assert_eq!(
            store
                .job_get(first.id)
                .await
                .expect("get")
                .expect("job")
                .priority,
            1
        );

        // Once finished, the URL may be enqueued again.
        let claimed = store
            .job_claim("w", 10, T0 + 30_000, T0)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        let finish = store
            .job_finish_if_leased(first.id, "w", &JobOutcome::Complete { entry: None }, T0)
            .await
            .expect("finish");
        assert_eq!(finish, Finish::Recorded { put: None });
        let (next, shared) = store.job_enqueue(&job("u/1", 2)).await.expect("enqueue");
        assert!(!shared);
        assert_ne!(next.id, first.id);
    }

    /// A caller that read a miss and enqueues after a job has written the
    /// entry gets no second job: it is told to read the entry again.
    pub async fn enqueue_refuses_once_the_entry_was_written(store: Store) {
        let (first, _) = store
            .job_enqueue_unless_written(&job("u/1", 1), Some(0))
            .await
            .expect("enqueue")
            .expect("absent as read: enqueued");
        let read_before = 0;
        store
            .job_claim("w", 10, T0 + 30_000, T0)
            .await
            .expect("claim");
        let Finish::Recorded { put: Some(put) } = store
            .job_finish_if_leased(
                first.id,
                "w",
                &JobOutcome::Complete {
                    entry: Some(super::put("u/1", "answer")),
                },
                T0,
            )
            .await
            .expect("finish")
        else {
            panic!("the entry was not written");
        };
        let PutResult::Written { revision, .. } = put else {
            panic!("expected a write, got {put:?}");
        };
        assert_eq!(
            store
                .job_enqueue_unless_written(&job("u/1", 1), Some(read_before))
                .await
                .expect("enqueue"),
            None,
            "the entry moved since it was read"
        );
        let (again, shared) = store
            .job_enqueue_unless_written(&job("u/1", 2), Some(revision))
            .await
            .expect("enqueue")
            .expect("at the revision read: enqueued");
        assert!(!shared);
        assert_ne!(again.id, first.id);
        // An unfinished job is shared whatever revision the caller read.
        let (shared_job, shared) = store
            .job_enqueue_unless_written(&job("u/1", 1), Some(read_before))
            .await
            .expect("enqueue")
            .expect("shared");
        assert!(shared);
        assert_eq!(shared_job.id, again.id);
    }

    pub async fn concurrent_enqueues_create_exactly_one_job(store: Store) {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.job_enqueue(&job("same", 1)).await.expect("enqueue")
            }));
        }
        let mut ids = Vec::new();
        let mut created = 0;
        for task in tasks {
            let (job, shared) = task.await.expect("task");
            ids.push(job.id);
            created += usize::from(!shared);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "every caller got the same job");
        assert_eq!(created, 1);
    }

    pub async fn claims_lowest_priority_then_oldest(store: Store) {
        let mut ids = Vec::new();
        for (url, priority) in [("a", 3), ("b", 2), ("c", 1), ("d", 2), ("e", 1)] {
            ids.push((
                url,
                store
                    .job_enqueue(&job(url, priority))
                    .await
                    .expect("enqueue")
                    .0
                    .id,
            ));
        }
        let mut later = job("later", 1);
        later.now = T0 + 60_000;
        let (later, _) = store.job_enqueue(&later).await.expect("enqueue");
        store
            .job_finish_if_leased(
                later.id,
                "nobody",
                &JobOutcome::Complete { entry: None },
                T0,
            )
            .await
            .expect("not leased");
        let first = store
            .job_claim("w1", 3, T0 + 30_000, T0)
            .await
            .expect("claim");
        let urls: Vec<&str> = first.iter().map(|j| j.url.as_str()).collect();
        assert_eq!(urls, ["c", "e", "b"]);
        assert!(
            first
                .iter()
                .all(|j| j.state == JobState::Running && j.attempt == 1)
        );
        assert!(
            first
                .iter()
                .all(|j| j.lease_holder.as_deref() == Some("w1"))
        );
        let rest = store
            .job_claim("w2", 10, T0 + 30_000, T0)
            .await
            .expect("claim");
        let urls: Vec<&str> = rest.iter().map(|j| j.url.as_str()).collect();
        assert_eq!(
            urls,
            ["d", "a"],
            "run_after in the future is not claimable yet"
        );
        assert!(
            store
                .job_claim("w3", 10, T0 + 30_000, T0)
                .await
                .expect("claim")
                .is_empty()
        );
        let due = store
            .job_claim("w3", 10, T0 + 90_000, T0 + 60_000)
            .await
            .expect("claim");
        assert_eq!(due.len(), 1);
    }

    pub async fn priority_wins_across_providers(store: Store) {
        let mut urgent = job("a/urgent", 1);
        urgent.provider = "a".to_owned();
        store.job_enqueue(&urgent).await.expect("enqueue");
        for i in 0..5 {
            let mut later = job(&format!("a/later/{i}"), 3);
            later.provider = "a".to_owned();
            store.job_enqueue(&later).await.expect("enqueue");
        }
        for i in 0..3 {
            let mut normal = job(&format!("b/{i}"), 2);
            normal.provider = "b".to_owned();
            store.job_enqueue(&normal).await.expect("enqueue");
        }
        let claimed = store
            .job_claim("w", 4, T0 + 30_000, T0)
            .await
            .expect("claim");
        let urls: Vec<&str> = claimed.iter().map(|j| j.url.as_str()).collect();
        assert_eq!(
            urls,
            ["a/urgent", "b/0", "b/1", "b/2"],
            "priority 2 of b before priority 3 of a"
        );
    }

    pub async fn concurrent_claims_never_share_a_job(store: Store) {
        for i in 0..200 {
            store
                .job_enqueue(&job(&format!("j/{i}"), 2))
                .await
                .expect("enqueue");
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store
                        .job_claim(&format!("w{w}"), 7, T0 + 30_000, T0)
                        .await
                        .expect("claim");
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|j| j.id));
                }
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("task"));
        }
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(
            (count, all.len()),
            (200, 200),
            "each job claimed exactly once"
        );
    }

    pub async fn finishing_needs_the_lease_and_writes_the_entry_atomically(store: Store) {
        let (j, _) = store
            .job_enqueue(&job("https://musicbrainz.org/ws/2/x", 1))
            .await
            .expect("enqueue");
        store
            .job_claim("w1", 1, T0 + 30_000, T0)
            .await
            .expect("claim");
        let mut entry = put(&j.url, "{}");
        entry.kind = roadie_store::ChangeKind::Fetch;
        // Another worker cannot complete it.
        let lost = store
            .job_finish_if_leased(
                j.id,
                "w2",
                &JobOutcome::Complete {
                    entry: Some(entry.clone()),
                },
                T0,
            )
            .await
            .expect("finish");
        assert_eq!(lost, Finish::LeaseLost);
        assert_eq!(
            store.entry_get(&j.url).await.expect("get"),
            None,
            "nothing written without the lease"
        );
        assert!(
            store
                .job_heartbeat(j.id, "w1", T0 + 60_000, T0)
                .await
                .expect("heartbeat")
        );
        assert!(
            !store
                .job_heartbeat(j.id, "w2", T0 + 60_000, T0)
                .await
                .expect("heartbeat")
        );
        let done = store
            .job_finish_if_leased(
                j.id,
                "w1",
                &JobOutcome::Complete {
                    entry: Some(entry.clone()),
                },
                T0 + 5,
            )
            .await
            .expect("finish");
        assert_eq!(
            done,
            Finish::Recorded {
                put: Some(PutResult::Written {
                    revision: 1,
                    created_at: T0
                })
            }
        );
        let finished = store.job_get(j.id).await.expect("get").expect("job");
        assert_eq!(
            (finished.state, finished.finished_at, finished.lease_holder),
            (JobState::Completed, Some(T0 + 5), None)
        );
        assert_eq!(
            store
                .entry_get(&j.url)
                .await
                .expect("get")
                .expect("entry")
                .value,
            b"{}".as_slice()
        );
        let log = store.change_list_since(0, 10).await.expect("log");
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].kind, roadie_store::ChangeKind::Fetch);
        // A second completion is refused: the lease is gone.
        let again = store
            .job_finish_if_leased(
                j.id,
                "w1",
                &JobOutcome::Complete {
                    entry: Some(entry.clone()),
                },
                T0 + 6,
            )
            .await
            .expect("finish");
        assert_eq!(again, Finish::LeaseLost);
    }

    /// The state of each job of `ids`, in order.
    async fn states_of(store: &Store, ids: &[u64]) -> Vec<JobState> {
        let mut states = Vec::new();
        for id in ids {
            states.push(store.job_get(*id).await.expect("get").expect("job").state);
        }
        states
    }

    /// The change log's first changes: revision and key.
    async fn logged(store: &Store) -> Vec<(u64, String)> {
        store
            .change_list_since(0, 10)
            .await
            .expect("log")
            .into_iter()
            .map(|c| (c.revision, c.key))
            .collect()
    }

    /// One transaction for many finishes: each job counts only while its
    /// lease is held, a lost lease skips that job alone, entries get
    /// consecutive revisions in the order given.
    pub async fn many_finish_in_one_transaction(store: Store) {
        let mut ids = Vec::new();
        for url in ["many:a", "many:b", "many:c", "many:d"] {
            ids.push(store.job_enqueue(&job(url, 2)).await.expect("enqueue").0.id);
        }
        let claimed = store
            .job_claim("w", 4, T0 + 30_000, T0)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 4);
        // Job c is taken away: cancelled while w works on it.
        store.job_cancel(ids[2], T0).await.expect("cancel");
        let (a, d) = (put("many:a", "A"), put("many:d", "D"));
        let mut negative = put("many:b", "");
        negative.negative = true;
        let finishes = [
            JobFinish {
                id: ids[0],
                outcome: JobOutcome::Complete {
                    entry: Some(a.clone()),
                },
            },
            JobFinish {
                id: ids[1],
                outcome: JobOutcome::RetryLater {
                    error: "503".to_owned(),
                    run_after: T0 + 1_000,
                    counts: true,
                },
            },
            JobFinish {
                id: ids[2],
                outcome: JobOutcome::Complete {
                    entry: Some(a.clone()),
                },
            },
            JobFinish {
                id: ids[3],
                outcome: JobOutcome::Fail {
                    error: "gave up".to_owned(),
                    entry: Some(d.clone()),
                },
            },
        ];
        let results = store
            .job_finish_many_if_leased("w", &finishes, T0 + 5)
            .await
            .expect("finish");
        assert_eq!(
            results,
            [
                Finish::Recorded {
                    put: Some(PutResult::Written {
                        revision: 1,
                        created_at: T0
                    })
                },
                Finish::Recorded { put: None },
                Finish::LeaseLost,
                Finish::Recorded {
                    put: Some(PutResult::Written {
                        revision: 2,
                        created_at: T0
                    })
                },
            ]
        );
        assert_eq!(
            states_of(&store, &ids).await,
            [
                JobState::Completed,
                JobState::Available,
                JobState::Cancelled,
                JobState::Failed
            ]
        );
        assert_eq!(store.entry_get("many:c").await.expect("get"), None);
        let log = logged(&store).await;
        assert_eq!(log, [(1, "many:a".to_owned()), (2, "many:d".to_owned())]);
        assert_eq!(*store.committed().borrow(), 2, "the commit is announced");
    }

    /// A batch of nothing but completions and failures, each with its entry
    /// (the usual batch; on Postgres one statement, all or nothing): with
    /// every lease held, every job ends and every entry lands at
    /// consecutive revisions; with one lease lost, that job alone is
    /// skipped and the revisions stay gapless.
    pub async fn a_batch_of_completions_with_one_lease_lost(store: Store) {
        let urls = ["done:a", "done:b", "done:c", "done:d", "done:e"];
        let mut ids = Vec::new();
        for url in urls {
            ids.push(store.job_enqueue(&job(url, 2)).await.expect("enqueue").0.id);
        }
        let claimed = store
            .job_claim("w", 5, T0 + 30_000, T0)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 5);
        let finish = |id: u64, url: &str| JobFinish {
            id,
            outcome: if url == "done:b" {
                JobOutcome::Fail {
                    error: "gave up".to_owned(),
                    entry: Some(put(url, "")),
                }
            } else {
                JobOutcome::Complete {
                    entry: Some(put(url, url)),
                }
            },
        };
        let first: Vec<JobFinish> = ids[..2]
            .iter()
            .zip(urls)
            .map(|(id, url)| finish(*id, url))
            .collect();
        let done = store
            .job_finish_many_if_leased("w", &first, T0 + 5)
            .await
            .expect("finish");
        let written = |revision| Finish::Recorded {
            put: Some(PutResult::Written {
                revision,
                created_at: T0,
            }),
        };
        assert_eq!(done, [written(1), written(2)]);
        // Job d is taken away while w works on it.
        store.job_cancel(ids[3], T0).await.expect("cancel");
        let rest: Vec<JobFinish> = ids[2..]
            .iter()
            .zip(&urls[2..])
            .map(|(id, url)| finish(*id, url))
            .collect();
        let done = store
            .job_finish_many_if_leased("w", &rest, T0 + 6)
            .await
            .expect("finish");
        assert_eq!(done, [written(3), Finish::LeaseLost, written(4)]);
        assert_eq!(
            states_of(&store, &ids).await,
            [
                JobState::Completed,
                JobState::Failed,
                JobState::Completed,
                JobState::Cancelled,
                JobState::Completed
            ]
        );
        assert_eq!(store.entry_get("done:d").await.expect("get"), None);
        let log = logged(&store).await;
        let expected: Vec<(u64, String)> =
            [(1, "done:a"), (2, "done:b"), (3, "done:c"), (4, "done:e")]
                .into_iter()
                .map(|(revision, key)| (revision, key.to_owned()))
                .collect();
        assert_eq!(log, expected);
        assert_eq!(*store.committed().borrow(), 4, "the commit is announced");
    }

    pub async fn retries_and_failures(store: Store) {
        let (j, _) = store.job_enqueue(&job("flaky", 2)).await.expect("enqueue");
        store
            .job_claim("w", 1, T0 + 30_000, T0)
            .await
            .expect("claim");
        let retry = JobOutcome::RetryLater {
            error: "503".to_owned(),
            run_after: T0 + 1_000,
            counts: true,
        };
        store
            .job_finish_if_leased(j.id, "w", &retry, T0)
            .await
            .expect("retry");
        let waiting = store.job_get(j.id).await.expect("get").expect("job");
        assert_eq!(
            (
                waiting.state,
                waiting.run_after,
                waiting.last_error.as_deref()
            ),
            (JobState::Available, T0 + 1_000, Some("503"))
        );
        assert!(
            store
                .job_claim("w", 1, T0 + 30_000, T0 + 999)
                .await
                .expect("claim")
                .is_empty()
        );
        let again = store
            .job_claim("w", 1, T0 + 31_000, T0 + 1_000)
            .await
            .expect("claim");
        assert_eq!(again[0].attempt, 2);
        // A pushback (429/503) retries without using up an attempt.
        let pushed = JobOutcome::RetryLater {
            error: "429".to_owned(),
            run_after: T0 + 1_500,
            counts: false,
        };
        store
            .job_finish_if_leased(j.id, "w", &pushed, T0 + 1_100)
            .await
            .expect("pushback");
        let after_pushback = store
            .job_claim("w", 1, T0 + 31_500, T0 + 1_500)
            .await
            .expect("claim");
        assert_eq!(after_pushback[0].attempt, 2, "a pushback is not an attempt");
        let mut negative = put("flaky", "");
        negative.negative = true;
        let fail = JobOutcome::Fail {
            error: "gave up".to_owned(),
            entry: Some(negative.clone()),
        };
        store
            .job_finish_if_leased(j.id, "w", &fail, T0 + 2_000)
            .await
            .expect("fail");
        let failed = store.job_get(j.id).await.expect("get").expect("job");
        assert_eq!(
            (failed.state, failed.last_error.as_deref()),
            (JobState::Failed, Some("gave up"))
        );
        assert!(
            store
                .entry_get("flaky")
                .await
                .expect("get")
                .expect("entry")
                .negative
        );

        // Retry resets the attempts; cancel stops an unfinished job only.
        let retried = store
            .job_retry(j.id, T0 + 3_000)
            .await
            .expect("retry")
            .expect("job");
        assert_eq!((retried.state, retried.attempt), (JobState::Available, 0));
        let cancelled = store
            .job_cancel(j.id, T0 + 4_000)
            .await
            .expect("cancel")
            .expect("job");
        assert_eq!(cancelled.state, JobState::Cancelled);
        let (other, _) = store.job_enqueue(&job("flaky", 2)).await.expect("enqueue");
        assert!(
            matches!(
                store.job_retry(j.id, T0).await,
                Err(roadie_store::StoreError::Conflict(_))
            ),
            "one unfinished job per URL"
        );
        store.job_cancel(other.id, T0).await.expect("cancel");
        assert_eq!(
            store
                .job_cancel(other.id, T0 + 9)
                .await
                .expect("cancel")
                .expect("job")
                .finished_at,
            Some(T0)
        );
    }

    pub async fn expired_leases_are_rescued_and_releases_hand_back(store: Store) {
        let (a, _) = store.job_enqueue(&job("a", 2)).await.expect("enqueue");
        let mut last = job("b", 2);
        last.max_attempts = 1;
        let (b, _) = store.job_enqueue(&last).await.expect("enqueue");
        store
            .job_claim("dead", 2, T0 + 1_000, T0)
            .await
            .expect("claim");
        assert_eq!(
            store.job_rescue(T0 + 999).await.expect("rescue"),
            (0, 0),
            "leases still valid"
        );
        assert_eq!(store.job_rescue(T0 + 1_001).await.expect("rescue"), (1, 1));
        assert_eq!(
            store.job_get(a.id).await.expect("get").expect("job").state,
            JobState::Available
        );
        assert_eq!(
            store.job_get(b.id).await.expect("get").expect("job").state,
            JobState::Failed
        );
        let taken = store
            .job_claim("alive", 5, T0 + 40_000, T0 + 1_001)
            .await
            .expect("claim");
        assert_eq!((taken.len(), taken[0].attempt), (1, 2));
        assert_eq!(
            store
                .job_release("alive", T0 + 1_002)
                .await
                .expect("release"),
            1
        );
        let released = store.job_get(a.id).await.expect("get").expect("job");
        assert_eq!(
            (released.state, released.attempt, released.lease_holder),
            (JobState::Available, 1, None)
        );
    }

    pub async fn list_pages_and_purge(store: Store) {
        for i in 0..5 {
            let mut j = job(&format!("p/{i}"), 2);
            if i == 4 {
                j.provider = "discogs".to_owned();
            }
            store.job_enqueue(&j).await.expect("enqueue");
        }
        let page = store.job_list(None, None, u64::MAX, 2).await.expect("list");
        assert_eq!(
            page.iter().map(|j| j.url.as_str()).collect::<Vec<_>>(),
            ["p/4", "p/3"]
        );
        let next = store
            .job_list(None, None, page[1].id, 10)
            .await
            .expect("list");
        assert_eq!(next.len(), 3);
        assert_eq!(
            store
                .job_list(None, Some("discogs"), u64::MAX, 10)
                .await
                .expect("list")
                .len(),
            1
        );
        let claimed = store
            .job_claim("w", 2, T0 + 1_000, T0)
            .await
            .expect("claim");
        assert_eq!(
            store
                .job_list(Some(JobState::Running), None, u64::MAX, 10)
                .await
                .expect("list")
                .len(),
            2
        );
        store
            .job_finish_if_leased(
                claimed[0].id,
                "w",
                &JobOutcome::Complete { entry: None },
                T0,
            )
            .await
            .expect("done");
        let fail = JobOutcome::Fail {
            error: "x".to_owned(),
            entry: None,
        };
        store
            .job_finish_if_leased(claimed[1].id, "w", &fail, T0)
            .await
            .expect("failed");
        assert_eq!(
            store.job_purge(T0, T0).await.expect("purge"),
            0,
            "not older than the cut-off"
        );
        assert_eq!(
            store.job_purge(T0 + 1, T0).await.expect("purge"),
            1,
            "completed ones go first"
        );
        assert_eq!(store.job_purge(T0 + 1, T0 + 1).await.expect("purge"), 1);
        assert_eq!(
            store
                .job_list(None, None, u64::MAX, 10)
                .await
                .expect("list")
                .len(),
            3
        );
    }
}

mod limits {
    //! Claim-time rate limits, on both backends.

    use roadie_store::{Rate, Rates, Store};

    use super::{T0, queue::job};

    fn rates(provider: &str, per_second: f64, burst: u32) -> Rates {
        Rates::from([(provider.to_owned(), Rate::new(per_second, burst))])
    }

    pub async fn claims_spend_the_providers_budget(store: Store) {
        for i in 0..5 {
            let mut j = job(&format!("mb/{i}"), 2);
            j.provider = "musicbrainz".to_owned();
            store.job_enqueue(&j).await.expect("enqueue");
            let mut other = job(&format!("lastfm/{i}"), 2);
            other.provider = "lastfm".to_owned();
            store.job_enqueue(&other).await.expect("enqueue");
        }
        let limited = rates("musicbrainz", 2.0, 1);
        let claim = store
            .job_claim_within("w", 10, T0 + 30_000, T0, &limited)
            .await
            .expect("claim");
        let mb = claim
            .jobs
            .iter()
            .filter(|j| j.provider == "musicbrainz")
            .count();
        let other = claim.jobs.iter().filter(|j| j.provider == "lastfm").count();
        assert_eq!(
            (mb, other),
            (1, 5),
            "the limited provider holds back nobody else"
        );
        // Nothing more now, and the claim says when to look again.
        let again = store
            .job_claim_within("w", 10, T0 + 30_000, T0 + 100, &limited)
            .await
            .expect("claim");
        assert!(again.jobs.is_empty());
        // Budget is measured when the provider's row is locked, a few ms
        // after the claim's `now`.
        let next = again.next_due.expect("when to look again");
        assert!((T0 + 525..T0 + 625).contains(&next), "{}", next - T0);
        let due = store
            .job_claim_within("w", 10, T0 + 30_000, next, &limited)
            .await
            .expect("claim");
        assert_eq!(due.jobs.len(), 1);
        // A burst after an idle spell, never more than the burst.
        let burst = rates("musicbrainz", 2.0, 2);
        let later = store
            .job_claim_within("w", 10, T0 + 90_000, T0 + 60_000, &burst)
            .await
            .expect("claim");
        assert_eq!(later.jobs.len(), 2);
    }

    pub async fn waiting_callers_get_the_budget_first(store: Store) {
        for i in 0..3 {
            store
                .job_enqueue(&job(&format!("bg/{i}"), 2))
                .await
                .expect("enqueue");
        }
        let mut urgent = job("wait/1", 1);
        urgent.now = T0 + 5;
        store.job_enqueue(&urgent).await.expect("enqueue");
        let limited = rates("musicbrainz", 1.0, 1);
        let claim = store
            .job_claim_within("w", 10, T0 + 30_000, T0 + 10, &limited)
            .await
            .expect("claim");
        assert_eq!(
            claim
                .jobs
                .iter()
                .map(|j| j.url.as_str())
                .collect::<Vec<_>>(),
            ["wait/1"]
        );
    }

    pub async fn a_waited_claim_takes_its_providers_waited_jobs_alone(store: Store) {
        for (url, provider, priority) in [
            ("a/wait/1", "a", 1),
            ("b/wait", "b", 1),
            ("a/background", "a", 2),
            ("a/wait/2", "a", 1),
        ] {
            let mut j = job(url, priority);
            j.provider = provider.to_owned();
            store.job_enqueue(&j).await.expect("enqueue");
        }
        let urls = |claim: &roadie_store::Claim| {
            claim.jobs.iter().map(|j| j.url.clone()).collect::<Vec<_>>()
        };
        let claim = store
            .job_claim_waited("w", 10, T0 + 30_000, T0, &Rates::default(), "a")
            .await
            .expect("claim");
        assert_eq!(urls(&claim), ["a/wait/1", "a/wait/2"]);
        assert!(
            claim
                .jobs
                .iter()
                .all(|j| j.lease_holder.as_deref() == Some("w"))
        );
        let rest = store
            .job_claim_within("w", 10, T0 + 30_000, T0, &Rates::default())
            .await
            .expect("claim");
        assert_eq!(urls(&rest), ["b/wait", "a/background"]);
        // Within the provider's budget, and saying when to look again.
        for i in 0..3 {
            let mut j = job(&format!("a/wait/later/{i}"), 1);
            j.provider = "a".to_owned();
            store.job_enqueue(&j).await.expect("enqueue");
        }
        let limited = rates("a", 2.0, 1);
        let first = store
            .job_claim_waited("w", 10, T0 + 30_000, T0, &limited, "a")
            .await
            .expect("claim");
        assert_eq!(urls(&first), ["a/wait/later/0"]);
        let throttled = store
            .job_claim_waited("w", 10, T0 + 30_000, T0 + 100, &limited, "a")
            .await
            .expect("claim");
        assert!(throttled.jobs.is_empty());
        let next = throttled.next_due.expect("when to look again");
        assert!((T0 + 525..T0 + 625).contains(&next), "{}", next - T0);
        let none = store
            .job_claim_waited("w", 0, T0 + 30_000, next, &limited, "a")
            .await
            .expect("claim");
        assert!(
            none.jobs.is_empty() && none.next_due.is_none(),
            "a limit of 0 claims nothing"
        );
    }

    pub async fn concurrent_claimers_share_one_budget(store: Store) {
        for i in 0..50 {
            store
                .job_enqueue(&job(&format!("c/{i}"), 2))
                .await
                .expect("enqueue");
        }
        let limited = rates("musicbrainz", 1.0, 3);
        let mut tasks = Vec::new();
        for w in 0..6 {
            let (store, limited) = (store.clone(), limited.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .job_claim_within(&format!("w{w}"), 8, T0 + 30_000, T0, &limited)
                    .await
                    .expect("claim")
                    .jobs
                    .len()
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("task");
        }
        assert_eq!(
            total, 3,
            "six claimers at one instant get the burst of 3 between them"
        );
    }
}

mod jobs {
    use super::limits::*;
    use super::queue::*;
    use super::*;

    conformance!(
        a_first_look_reads_the_entry_or_enqueues_its_job,
        enqueue_shares_one_unfinished_job_per_url,
        enqueue_refuses_once_the_entry_was_written,
        concurrent_enqueues_create_exactly_one_job,
        claims_lowest_priority_then_oldest,
        concurrent_claims_never_share_a_job,
        priority_wins_across_providers,
        finishing_needs_the_lease_and_writes_the_entry_atomically,
        retries_and_failures,
        many_finish_in_one_transaction,
        a_batch_of_completions_with_one_lease_lost,
        expired_leases_are_rescued_and_releases_hand_back,
        list_pages_and_purge,
        claims_spend_the_providers_budget,
        waiting_callers_get_the_budget_first,
        concurrent_claimers_share_one_budget,
        a_waited_claim_takes_its_providers_waited_jobs_alone,
    );
}

/// Servers and workers starting together on a new SQLite file all migrate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_on_one_sqlite_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("roadie.db").display());
    let mut opens = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        opens.push(tokio::spawn(async move {
            Store::connect(&roadie_store::StoreOptions::new(url)).await
        }));
    }
    for open in opens {
        let store = open
            .await
            .expect("task")
            .expect("every process opens the store");
        assert_eq!(store.revision_current().await.expect("revision"), 0);
        store.close().await;
    }
}
