//! `roadie.v1.Jobs` over jobs placed in the queue.

use roadie_client::{
    ClientError,
    proto::{
        CancelJobRequest, GetJobRequest, JobState as PbState, ListJobsRequest, RetryJobRequest,
    },
};
use roadie_store::{Backend, JobNew, JobOutcome, now_ms};

use crate::common::{on_both_backends, start};

fn job(url: &str, provider: &str) -> JobNew {
    JobNew {
        provider: provider.to_owned(),
        url: url.to_owned(),
        policy: "api_metadata".to_owned(),
        tags: vec![],
        priority: 2,
        max_attempts: 3,
        traceparent: None,
        now: now_ms(),
    }
}

async fn get_list_cancel_and_retry(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    let store = server.store();
    let mut ids = Vec::new();
    for i in 0..5 {
        let provider = if i % 2 == 0 { "musicbrainz" } else { "discogs" };
        ids.push(
            store
                .job_enqueue(&job(&format!("https://x/{i}"), provider))
                .await
                .expect("enqueue")
                .0
                .id,
        );
    }

    let got = c
        .get_job(GetJobRequest { id: ids[0] })
        .await
        .expect("get")
        .job
        .expect("job");
    assert_eq!(
        (got.url.as_str(), got.state, got.attempt, got.max_attempts),
        ("https://x/0", PbState::Available as i32, 0, 3)
    );
    assert!(matches!(
        c.get_job(GetJobRequest { id: 999_999 }).await,
        Err(ClientError::NotFound(_))
    ));

    // Newest first, in pages.
    let page = c
        .list_jobs(ListJobsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    let rest = c
        .list_jobs(ListJobsRequest {
            page_size: 2,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        rest.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );
    let last = c
        .list_jobs(ListJobsRequest {
            page_size: 2,
            page_token: rest.next_page_token,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!((last.jobs.len(), last.next_page_token.as_str()), (1, ""));
    let discogs = c
        .list_jobs(ListJobsRequest {
            provider: "discogs".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(discogs.jobs.len(), 2);

    // A running job, cancelled: its worker's completion no longer counts.
    let claimed = store
        .job_claim("w", 1, now_ms() + 30_000, now_ms())
        .await
        .expect("claim");
    let running = c
        .list_jobs(ListJobsRequest {
            state: PbState::Running as i32,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        running
            .jobs
            .iter()
            .map(|j| (j.id, j.lease_holder.as_str()))
            .collect::<Vec<_>>(),
        [(claimed[0].id, "w")]
    );
    let cancelled = c
        .cancel_job(CancelJobRequest { id: claimed[0].id })
        .await
        .expect("cancel")
        .job
        .expect("job");
    assert_eq!(cancelled.state, PbState::Cancelled as i32);
    let late = store
        .job_finish_if_leased(
            claimed[0].id,
            "w",
            &JobOutcome::Complete { entry: None },
            now_ms(),
        )
        .await
        .expect("finish");
    assert_eq!(late, roadie_store::Finish::LeaseLost);

    // Retry: only failed or cancelled jobs.
    let refused = c.retry_job(RetryJobRequest { id: ids[1] }).await;
    assert!(
        matches!(refused, Err(ClientError::FailedPrecondition(ref m)) if m.contains("available")),
        "{refused:?}"
    );
    let retried = c
        .retry_job(RetryJobRequest { id: claimed[0].id })
        .await
        .expect("retry")
        .job
        .expect("job");
    assert_eq!(
        (retried.state, retried.attempt),
        (PbState::Available as i32, 0)
    );
    assert!(matches!(
        c.cancel_job(CancelJobRequest { id: 424_242 }).await,
        Err(ClientError::NotFound(_))
    ));
    server.stop().await;
}

async fn bad_list_requests_name_the_field(backend: Backend) {
    let server = start!(backend);
    let c = &server.client;
    let too_big = c
        .list_jobs(ListJobsRequest {
            page_size: 1001,
            ..Default::default()
        })
        .await;
    assert_eq!(
        too_big.as_ref().err().and_then(ClientError::field),
        Some("page_size"),
        "{too_big:?}"
    );
    let token = c
        .list_jobs(ListJobsRequest {
            page_token: "garbage".to_owned(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        token.as_ref().err().and_then(ClientError::field),
        Some("page_token"),
        "{token:?}"
    );
    let state = c
        .list_jobs(ListJobsRequest {
            state: 42,
            ..Default::default()
        })
        .await;
    assert_eq!(
        state.as_ref().err().and_then(ClientError::field),
        Some("state"),
        "{state:?}"
    );
    server.stop().await;
}

on_both_backends!(get_list_cancel_and_retry, bad_list_requests_name_the_field);
