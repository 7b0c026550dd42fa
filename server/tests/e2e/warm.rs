//! Bulk warming: BatchFetch answers each item on its own (cached, queued,
//! shared, refused), and `roadie warm` queues a file's items and follows
//! their jobs through a real worker and a loopback upstream to the end.

use roadie_client::{
    ClientError,
    cli::Exit,
    proto::{BatchFetchItem, BatchFetchRequest, FetchMode, LookupStatus},
};
use roadie_store::Backend;

use crate::{
    common::{TestServer, get, on_both_backends, put, roadie},
    fetch::{fetch, start_worker, upstream, with_provider},
};

fn item(provider: &str, path: &str) -> BatchFetchItem {
    BatchFetchItem {
        provider: provider.to_owned(),
        path: path.to_owned(),
        ..Default::default()
    }
}

async fn batch_fetch_answers_each_item_on_its_own(backend: Backend) {
    let (addr, up) = upstream().await;
    let Some(server) = TestServer::start(backend, with_provider(addr)).await else {
        return;
    };
    let c = &server.client;
    let url = |path: &str| format!("http://{addr}/api/{path}");
    let mut cached = put(&url("item/1"), "cached");
    cached.policy = "api_metadata".to_owned();
    c.put(cached).await.expect("put");
    let queued_before = c
        .fetch(fetch("item/2", FetchMode::Background))
        .await
        .expect("fetch")
        .job
        .expect("job");

    let mut urgent = item("test", "item/5");
    urgent.priority = 1;
    let mut tagged = item("test", "item/4");
    tagged.tags = vec!["artist:warm".to_owned()];
    tagged.priority = 7;
    let response = c
        .batch_fetch(BatchFetchRequest {
            items: vec![
                item("test", "item/1"),
                item("test", "item/2"),
                item("test", "item/3"),
                item("nowhere", "x"),
                item("test", "../../etc/passwd"),
                item("private", "x"),
                urgent,
                tagged,
                item("test", "item/3"),
            ],
            priority: 3,
        })
        .await
        .expect("a batch with refusals still answers");
    let r = &response.results;
    assert_eq!(r.len(), 9, "one result per item, in order");
    assert_eq!(r[0].status(), LookupStatus::Hit);
    assert!(r[0].job.is_none() && r[0].error.is_none());
    let shared = r[1].job.as_ref().expect("job");
    assert!(r[1].job_shared);
    assert_eq!(shared.id, queued_before.id);
    assert_eq!(r[2].status(), LookupStatus::Miss);
    let third = r[2].job.as_ref().expect("job");
    assert_eq!(third.priority, 3, "the request's priority");
    let refusal = |i: usize| r[i].error.as_ref().expect("refused");
    assert_eq!(
        (refusal(3).code, refusal(3).field.as_str()),
        (tonic::Code::InvalidArgument as i32, "provider")
    );
    assert_eq!(refusal(4).field, "path");
    assert_eq!(refusal(5).code, tonic::Code::PermissionDenied as i32);
    assert!(refusal(5).message.contains("127.0.0.1"), "{:?}", refusal(5));
    assert_eq!(refusal(6).field, "priority");
    let fourth = r[7].job.as_ref().expect("job");
    assert_eq!(fourth.priority, 7, "the item's own priority");
    assert_eq!(
        r[8].job.as_ref().expect("job").id,
        third.id,
        "one job per URL, within a batch too"
    );
    for refused in &r[3..7] {
        assert!(refused.job.is_none(), "a refused item queues nothing");
    }
    let jobs = server
        .store()
        .job_list(None, None, u64::MAX, 100)
        .await
        .expect("jobs");
    assert_eq!(jobs.len(), 3, "item/2, item/3 and item/4: {jobs:?}");
    assert_eq!(up.total(), 0, "nothing fetched inline");

    for (items, what) in [
        (vec![], "none"),
        (vec![item("test", "x"); 1001], "too many"),
    ] {
        match c
            .batch_fetch(BatchFetchRequest { items, priority: 0 })
            .await
        {
            Err(ClientError::InvalidArgument { field, .. }) => {
                assert_eq!(field.as_deref(), Some("items"), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    server.stop().await;
}

async fn warm_follows_every_job_to_the_end(backend: Backend) {
    let (addr, up) = upstream().await;
    let Some(server) = TestServer::start(backend, |s| {
        with_provider(addr)(s);
        s.jobs.max_attempts = 1;
    })
    .await
    else {
        return;
    };
    let mut file = String::from("# artists to warm\n\n");
    for i in 0..12 {
        file.push_str(&format!("test item/{i}\n"));
    }
    file.push_str(
        r#"{"provider": "test", "path": "item/json", "tags": ["artist:json"], "priority": 5}"#,
    );
    file.push('\n');
    file.push_str("test missing\ntest broken\nnowhere x\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warm.txt");
    std::fs::write(&path, &file).expect("write");
    let path = path.to_str().expect("utf-8 path");

    // A line that is neither form: nothing is sent.
    let (exit, _, err) = roadie(&server, &["warm", "-"], "test item/1\njust-one-word\n").await;
    assert_eq!(exit, Exit::Error);
    assert!(err.contains("line 2"), "{err}");
    assert!(
        server
            .store()
            .job_list(None, None, u64::MAX, 10)
            .await
            .expect("jobs")
            .is_empty(),
        "a bad file queues nothing"
    );

    let (stop, worker) = start_worker(server.store().clone(), addr);
    let (exit, out, err) = roadie(
        &server,
        &[
            "--json", "warm", path, "--batch", "4", "--poll", "50ms", "--tag", "warmed",
        ],
        "",
    )
    .await;
    assert_eq!(
        exit,
        Exit::Incomplete,
        "a refusal and a failure: {out} {err}"
    );
    let tally: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(tally["items"], 16, "{tally}");
    assert_eq!(tally["queued"], 15, "{tally}");
    assert_eq!(tally["shared"], 0, "{tally}");
    assert_eq!(tally["refused"], 1, "{tally}");
    assert_eq!(tally["refusals"][0]["line"], 18, "{tally}");
    assert_eq!(tally["refusals"][0]["field"], "provider", "{tally}");
    assert_eq!(tally["done"], 13, "{tally}");
    assert_eq!(tally["negative"], 1, "{tally}");
    assert_eq!(tally["failed"], 1, "{tally}");
    assert_eq!(tally["failures"][0]["line"], 17, "{tally}");
    assert_eq!(tally["failures"][0]["state"], "failed", "{tally}");
    assert_eq!(tally["pending"], 0, "{tally}");
    assert!(err.contains("line 18: refused"), "{err}");

    let json = server
        .client
        .get(get(&format!("http://{addr}/api/item/json")))
        .await
        .expect("get");
    assert_eq!(json.status(), LookupStatus::Hit);
    let entry = json.entry.expect("entry");
    assert_eq!(entry.tags, ["artist:json", "warmed"]);

    // Again, without the lines that cannot end well: all cached, no job.
    let good: String = file
        .lines()
        .filter(|l| !l.contains("broken") && !l.contains("nowhere"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (exit, out, _) = roadie(&server, &["warm", "-"], &good).await;
    assert_eq!(exit, Exit::Success, "{out}");
    assert!(
        out.starts_with("14 items: 14 cached, 0 queued (0 shared), 0 refused; 0 done"),
        "{out}"
    );
    assert_eq!(up.count("/api/item/0"), 1, "cached: not fetched again");
    stop.cancel();
    worker.await.expect("worker");

    // Only queued: no worker runs, and --no-wait does not wait for one. A
    // URL named twice shares one job.
    let (exit, out, _) = roadie(
        &server,
        &["--json", "warm", "-", "--no-wait"],
        "test item/100\ntest item/101\ntest item/100\n",
    )
    .await;
    assert_eq!(exit, Exit::Success, "{out}");
    let tally: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(
        (
            tally["queued"].as_u64(),
            tally["shared"].as_u64(),
            tally["pending"].as_u64()
        ),
        (Some(3), Some(1), Some(3)),
        "{tally}"
    );
    server.stop().await;
}

on_both_backends!(
    batch_fetch_answers_each_item_on_its_own,
    warm_follows_every_job_to_the_end,
);
