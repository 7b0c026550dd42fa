//! The decision of one attempt: what the job and the cache become, given
//! what upstream did. A pure function ([`decide`]), so every rule of the
//! README's account of fetching is tested without IO.

use std::time::Duration;

use roadie_config::expires_at;
use roadie_providers::{Provider, Refusal};
use roadie_store::{ChangeKind, Entry, EntryPut, Job, JobOutcome, Provenance};

use super::millis;
use crate::fetcher::Outcome;

/// When the provider pauses for every worker after this attempt (upstream
/// pushed back with a Retry-After), ms since the epoch.
pub(crate) type PauseUntil = Option<i64>;

/// What one attempt makes of the job and the cache: a pure function of the
/// job, what upstream did (or why the fetch was refused), the good entry
/// stored now, the provider, the failed-lookup lifetime, this attempt's
/// backoff and the clock. Every rule of the README's account of fetching is
/// here and tested without IO; the caller does the IO (the provider's pause,
/// the write).
pub(crate) fn decide(
    job: &Job,
    fetched: Result<Outcome, Refusal>,
    stored: Option<&Entry>,
    provider: &Provider,
    failed_lookup_ttl: Duration,
    backoff: Duration,
    now: i64,
) -> (JobOutcome, PauseUntil) {
    let retry_or_fail = |error: String, at: Option<i64>| -> (JobOutcome, PauseUntil) {
        if !last_attempt(job) {
            let at = at.unwrap_or_else(|| now + millis(backoff));
            (
                JobOutcome::RetryLater {
                    error,
                    run_after: at,
                    counts: true,
                },
                None,
            )
        } else {
            give_up(job, stored, error, failed_lookup_ttl, now)
        }
    };
    match fetched {
        Ok(Outcome::Success {
            status,
            body,
            media_type,
            etag,
            last_modified,
        }) => {
            let provenance = Provenance {
                provider: job.provider.clone(),
                upstream_status: status,
                etag,
                last_modified,
            };
            let entry = result_entry(
                job,
                body.to_vec(),
                media_type,
                provenance,
                expires_at(now, provider.success_ttl),
                now,
            );
            (JobOutcome::Complete { entry: Some(entry) }, None)
        }
        Ok(Outcome::NotModified {
            etag,
            last_modified,
        }) => match stored {
            Some(entry) => {
                let provenance = Provenance {
                    provider: job.provider.clone(),
                    upstream_status: 304,
                    etag,
                    last_modified,
                };
                let mut put = result_entry(
                    job,
                    entry.value.to_vec(),
                    entry.media_type.clone(),
                    provenance,
                    expires_at(now, provider.success_ttl),
                    now,
                );
                if put.tags.is_empty() {
                    put.tags = entry.tags.clone();
                }
                (JobOutcome::Complete { entry: Some(put) }, None)
            }
            // The entry went while we revalidated: fetch it whole next time.
            None => (
                JobOutcome::RetryLater {
                    error: "304 but the entry is gone".to_owned(),
                    run_after: now,
                    counts: true,
                },
                None,
            ),
        },
        Ok(Outcome::NotFound { status }) => {
            let provenance = Provenance {
                provider: job.provider.clone(),
                upstream_status: status,
                ..Provenance::default()
            };
            let mut entry = result_entry(
                job,
                Vec::new(),
                String::new(),
                provenance,
                expires_at(now, provider.negative_ttl),
                now,
            );
            entry.negative = true;
            entry.kind = ChangeKind::Negative;
            (JobOutcome::Complete { entry: Some(entry) }, None)
        }
        Ok(Outcome::Throttled { status, retry_at }) => {
            let until =
                retry_at.map(|t| t.duration_since(std::time::UNIX_EPOCH).map_or(now, millis));
            // The provider's state, not the job's failure: retried when
            // the pause ends (or after a backoff), whatever its attempts.
            (
                JobOutcome::RetryLater {
                    error: format!("upstream answered {status}"),
                    run_after: until.unwrap_or_else(|| now + millis(backoff)),
                    counts: false,
                },
                until,
            )
        }
        Ok(Outcome::Transient { reason }) => retry_or_fail(reason, None),
        Ok(Outcome::Final { status, reason }) => {
            let error = match status {
                Some(status) => format!("upstream answered {status}: {reason}"),
                None => reason,
            };
            give_up(job, stored, error, failed_lookup_ttl, now)
        }
        Err(refusal) => (
            JobOutcome::Fail {
                error: refusal.to_string(),
                entry: None,
            },
            None,
        ),
    }
}

/// Whether [`decide`] looks at the stored entry for what `fetched` did: to
/// extend it on a 304, or to keep it when the job gives up (stale-if-error).
/// Every other outcome is decided without it, so the worker reads the entry
/// only then: a round trip less between the answer and the job's end.
pub(crate) fn needs_stored(job: &Job, fetched: &Result<Outcome, Refusal>) -> bool {
    match fetched {
        Ok(Outcome::NotModified { .. } | Outcome::Final { .. }) => true,
        Ok(Outcome::Transient { .. }) => last_attempt(job),
        Ok(Outcome::Success { .. } | Outcome::NotFound { .. } | Outcome::Throttled { .. })
        | Err(_) => false,
    }
}

/// Whether a failure of this attempt gives the job up.
fn last_attempt(job: &Job) -> bool {
    job.attempt >= job.max_attempts
}

/// The last word on a job that will not succeed: a NEGATIVE
/// `failed_lookup` entry, unless a good entry is stored (stale-if-error).
fn give_up(
    job: &Job,
    stored: Option<&Entry>,
    error: String,
    failed_lookup_ttl: Duration,
    now: i64,
) -> (JobOutcome, PauseUntil) {
    if stored.is_some() {
        return (JobOutcome::Fail { error, entry: None }, None);
    }
    let provenance = Provenance {
        provider: job.provider.clone(),
        ..Provenance::default()
    };
    let mut entry = result_entry(
        job,
        error.clone().into_bytes(),
        "text/plain".to_owned(),
        provenance,
        expires_at(now, failed_lookup_ttl),
        now,
    );
    entry.policy = roadie_config::FAILED_LOOKUP_POLICY.to_owned();
    entry.negative = true;
    entry.kind = ChangeKind::Negative;
    (
        JobOutcome::Fail {
            error,
            entry: Some(entry),
        },
        None,
    )
}

/// The entry a fetched result is written as.
fn result_entry(
    job: &Job,
    value: Vec<u8>,
    media_type: String,
    provenance: Provenance,
    expires_at: Option<i64>,
    now: i64,
) -> EntryPut {
    EntryPut {
        key: job.url.clone(),
        value,
        media_type,
        policy: job.policy.clone(),
        tags: job.tags.clone(),
        confidence: 0,
        fingerprint: None,
        metadata: Default::default(),
        negative: false,
        expires_at,
        provenance: Some(provenance),
        keep_higher_confidence: false,
        if_revision: None,
        kind: ChangeKind::Fetch,
        now,
    }
}

#[cfg(test)]
mod tests {
    //! The decision of one attempt, outcome by outcome, with no IO: the
    //! README's account of fetching, rule by rule.
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use roadie_providers::{Provider, ProviderPolicy, Refusal};
    use roadie_store::{ChangeKind, Entry, Job, JobState};

    use roadie_store::JobOutcome;

    use super::{decide, needs_stored};
    use crate::fetcher::Outcome;

    const NOW: i64 = 1_800_000_000_000;
    const BACKOFF: Duration = Duration::from_secs(4);
    const FAILED_LOOKUP: Duration = Duration::from_secs(3600);

    fn job(attempt: u32, max_attempts: u32) -> Job {
        Job {
            id: 7,
            provider: "mb".to_owned(),
            url: "https://musicbrainz.org/ws/2/artist/x".to_owned(),
            policy: "api_metadata".to_owned(),
            tags: vec!["artist:x".to_owned()],
            priority: 1,
            state: JobState::Running,
            attempt,
            max_attempts,
            run_after: NOW,
            lease_expires_at: Some(NOW + 30_000),
            lease_holder: Some("w".to_owned()),
            last_error: None,
            created_at: NOW,
            updated_at: NOW,
            finished_at: None,
            traceparent: None,
            stored_etag: None,
            stored_last_modified: None,
        }
    }

    fn provider() -> Provider {
        Provider {
            policy: ProviderPolicy::new(
                "mb",
                url::Url::parse("https://musicbrainz.org/ws/2/").unwrap(),
            ),
            success_ttl: Duration::from_secs(86_400),
            negative_ttl: Duration::from_secs(300),
            rate: None,
        }
    }

    fn stored() -> Entry {
        Entry {
            key: job(1, 5).url,
            value: Bytes::from_static(b"old"),
            media_type: "application/json".to_owned(),
            policy: "api_metadata".to_owned(),
            tags: vec!["artist:x".to_owned()],
            confidence: 0,
            fingerprint: None,
            metadata: Default::default(),
            negative: false,
            created_at: NOW - 10_000,
            updated_at: NOW - 10_000,
            expires_at: Some(NOW - 1),
            revision: 3,
            provenance: None,
        }
    }

    fn run(
        job: &Job,
        fetched: Result<Outcome, Refusal>,
        stored: Option<&Entry>,
    ) -> (JobOutcome, Option<i64>) {
        decide(
            job,
            fetched,
            stored,
            &provider(),
            FAILED_LOOKUP,
            BACKOFF,
            NOW,
        )
    }

    fn transient() -> Result<Outcome, Refusal> {
        Ok(Outcome::Transient {
            reason: "connection reset".to_owned(),
        })
    }

    /// The entry an outcome writes, if any.
    fn entry_of(outcome: &JobOutcome) -> Option<&roadie_store::EntryPut> {
        match outcome {
            JobOutcome::Complete { entry } | JobOutcome::Fail { entry, .. } => entry.as_ref(),
            JobOutcome::RetryLater { .. } => None,
        }
    }

    #[test]
    fn a_2xx_is_stored_under_the_success_ttl_with_its_validators() {
        let fetched = Ok(Outcome::Success {
            status: 200,
            body: Bytes::from_static(b"{}"),
            media_type: "application/json".to_owned(),
            etag: Some("\"v1\"".to_owned()),
            last_modified: None,
        });
        let (outcome, pause) = run(&job(1, 5), fetched, None);
        assert!(
            matches!(outcome, JobOutcome::Complete { entry: Some(_) }),
            "{outcome:?}"
        );
        assert_eq!(pause, None);
        let entry = entry_of(&outcome).unwrap();
        assert_eq!(entry.value, b"{}");
        assert_eq!(entry.expires_at, Some(NOW + 86_400_000));
        assert_eq!(entry.kind, ChangeKind::Fetch);
        assert_eq!(entry.tags, ["artist:x"]);
        let provenance = entry.provenance.as_ref().unwrap();
        assert_eq!(
            (provenance.upstream_status, provenance.etag.as_deref()),
            (200, Some("\"v1\""))
        );
        assert!(!entry.negative);
    }

    #[test]
    fn a_304_extends_the_stored_entry_and_without_one_retries_at_once() {
        let fetched = || {
            Ok(Outcome::NotModified {
                etag: Some("\"v2\"".to_owned()),
                last_modified: None,
            })
        };
        let stored = stored();
        let (outcome, _) = run(&job(1, 5), fetched(), Some(&stored));
        assert!(
            matches!(outcome, JobOutcome::Complete { .. }),
            "{outcome:?}"
        );
        let entry = entry_of(&outcome).unwrap();
        assert_eq!(entry.value, b"old");
        assert_eq!(entry.expires_at, Some(NOW + 86_400_000));
        assert_eq!(entry.provenance.as_ref().unwrap().upstream_status, 304);

        let (outcome, _) = run(&job(1, 5), fetched(), None);
        assert!(
            matches!(
                outcome,
                JobOutcome::RetryLater {
                    run_after: NOW,
                    counts: true,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_404_is_a_negative_entry_for_the_negative_ttl() {
        let (outcome, _) = run(&job(1, 5), Ok(Outcome::NotFound { status: 404 }), None);
        assert!(
            matches!(outcome, JobOutcome::Complete { .. }),
            "{outcome:?}"
        );
        let entry = entry_of(&outcome).unwrap();
        assert!(entry.negative);
        assert_eq!(entry.kind, ChangeKind::Negative);
        assert_eq!(entry.expires_at, Some(NOW + 300_000));
    }

    #[test]
    fn a_pushback_pauses_the_provider_until_retry_after_and_costs_no_attempt() {
        let retry_at = UNIX_EPOCH + Duration::from_millis(u64::try_from(NOW).unwrap() + 30_000);
        let throttled = Ok(Outcome::Throttled {
            status: 429,
            retry_at: Some(retry_at),
        });
        // Even on the last attempt: the provider's state, not the job's failure.
        let (outcome, pause) = run(&job(5, 5), throttled, None);
        assert_eq!(
            outcome,
            JobOutcome::RetryLater {
                error: "upstream answered 429".to_owned(),
                run_after: NOW + 30_000,
                counts: false,
            }
        );
        assert_eq!(pause, Some(NOW + 30_000));
        // Without a usable Retry-After: the job's backoff, no pause.
        let throttled = Ok(Outcome::Throttled {
            status: 503,
            retry_at: None,
        });
        let (outcome, pause) = run(&job(1, 5), throttled, None);
        assert!(
            matches!(outcome, JobOutcome::RetryLater { run_after, counts: false, .. } if run_after == NOW + 4_000),
            "{outcome:?}"
        );
        assert_eq!(pause, None);
    }

    #[test]
    fn transient_failures_retry_with_backoff_then_leave_a_failed_lookup() {
        let (outcome, _) = run(&job(1, 5), transient(), None);
        assert_eq!(
            outcome,
            JobOutcome::RetryLater {
                error: "connection reset".to_owned(),
                run_after: NOW + 4_000,
                counts: true,
            }
        );
        let (outcome, _) = run(&job(5, 5), transient(), None);
        assert!(matches!(outcome, JobOutcome::Fail { .. }), "{outcome:?}");
        let entry = entry_of(&outcome).unwrap();
        assert_eq!(entry.policy, "failed_lookup");
        assert!(entry.negative);
        assert_eq!(entry.expires_at, Some(NOW + 3_600_000));
    }

    #[test]
    fn a_good_stored_entry_is_kept_when_the_lookup_fails_for_good() {
        let stored = stored();
        let (outcome, _) = run(&job(5, 5), transient(), Some(&stored));
        assert!(
            matches!(outcome, JobOutcome::Fail { entry: None, .. }),
            "stale-if-error keeps the stored entry: {outcome:?}"
        );
        let final_4xx = Ok(Outcome::Final {
            status: Some(400),
            reason: "bad request".to_owned(),
        });
        let (outcome, _) = run(&job(1, 5), final_4xx, Some(&stored));
        assert!(
            matches!(outcome, JobOutcome::Fail { entry: None, .. }),
            "{outcome:?}"
        );
    }

    #[test]
    fn other_4xx_fail_at_once_and_refusals_store_nothing() {
        let final_4xx = Ok(Outcome::Final {
            status: Some(400),
            reason: "bad request".to_owned(),
        });
        let (outcome, _) = run(&job(1, 5), final_4xx, None);
        let JobOutcome::Fail { error, entry } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(error, "upstream answered 400: bad request");
        assert_eq!(entry.unwrap().policy, "failed_lookup");
        let refused = Err(Refusal::BadUrl("nope".to_owned()));
        let (outcome, _) = run(&job(1, 5), refused, None);
        assert!(
            matches!(outcome, JobOutcome::Fail { entry: None, .. }),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_zero_failed_lookup_ttl_never_expires() {
        let (outcome, _) = decide(
            &job(5, 5),
            transient(),
            None,
            &provider(),
            Duration::ZERO,
            BACKOFF,
            NOW,
        );
        assert_eq!(entry_of(&outcome).unwrap().expires_at, None);
    }

    #[test]
    fn the_stored_entry_is_read_only_for_the_outcomes_it_changes() {
        let body = || Bytes::from_static(b"{}");
        let outcomes = || {
            vec![
                Ok(Outcome::Success {
                    status: 200,
                    body: body(),
                    media_type: "application/json".to_owned(),
                    etag: None,
                    last_modified: None,
                }),
                Ok(Outcome::NotModified {
                    etag: None,
                    last_modified: None,
                }),
                Ok(Outcome::NotFound { status: 404 }),
                Ok(Outcome::Throttled {
                    status: 429,
                    retry_at: None,
                }),
                transient(),
                Ok(Outcome::Final {
                    status: Some(400),
                    reason: "bad".to_owned(),
                }),
                Err(Refusal::BadUrl("ftp://x".to_owned())),
            ]
        };
        let stored = stored();
        let mut read = Vec::new();
        for job in [job(1, 5), job(5, 5)] {
            for (without, with) in outcomes().into_iter().zip(outcomes()) {
                let needed = needs_stored(&job, &without);
                let name = format!("{without:?} at attempt {}", job.attempt);
                let decided = run(&job, without, None);
                if needed {
                    read.push(name);
                } else {
                    assert_eq!(decided, run(&job, with, Some(&stored)), "{name}");
                }
            }
        }
        // A 304, a final failure, and a transient one on the last attempt.
        assert_eq!(read.len(), 5, "{read:#?}");
    }
}
