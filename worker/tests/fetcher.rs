//! The fetcher against a real HTTP upstream on 127.0.0.1 that scripts every
//! outcome. Nothing here connects anywhere but loopback.

#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Response, StatusCode, header};
use axum::middleware::{self, Next};
use axum::routing::get;
use futures::StreamExt;
use roadie_providers::{HeaderSetting, ProviderPolicy, Refusal, Secret};
use roadie_worker::fetcher::{Fetcher, MAX_REDIRECTS, Outcome, Validators};
use url::Url;

const LIMIT: usize = 1024;
const LAST_MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
/// 2037-10-21 07:28:00 UTC.
const RETRY_DATE_SECS: u64 = 2_139_722_880;

/// A scripted upstream; `seen` lists every path it was asked for, so a test
/// can prove a refused request never reached it.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = routes()
            .layer(middleware::from_fn_with_state(seen.clone(), record))
            .with_state(addr);
        // Dropped with the test's runtime.
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { addr, seen }
    }

    /// A provider on this upstream, private addresses allowed (it is on
    /// loopback), with a small body limit.
    fn policy(&self) -> ProviderPolicy {
        self.policy_at(&format!("http://{}/api/", self.addr), true)
    }

    fn policy_at(&self, base: &str, allow_private: bool) -> ProviderPolicy {
        let mut policy = ProviderPolicy::new("test", Url::parse(base).unwrap());
        policy.timeout = Duration::from_secs(5);
        policy.max_body_bytes = LIMIT;
        policy.allow_private = allow_private;
        policy
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn record(
    State(seen): State<Arc<Mutex<Vec<String>>>>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    seen.lock().unwrap().push(request.uri().path().to_owned());
    next.run(request).await
}

fn reply(status: StatusCode, headers: &[(&str, &str)], body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.body(body.into()).unwrap()
}

fn redirect(location: &str) -> Response<Body> {
    reply(StatusCode::FOUND, &[("location", location)], Body::empty())
}

fn routes() -> Router<SocketAddr> {
    Router::new()
        .route(
            "/api/ok",
            get(|| async {
                reply(
                    StatusCode::OK,
                    &[
                        ("content-type", "Application/JSON; charset=utf-8"),
                        ("etag", "\"v1\""),
                        ("last-modified", LAST_MODIFIED),
                    ],
                    r#"{"ok":true}"#,
                )
            }),
        )
        .route(
            "/api/untyped",
            get(|| async { reply(StatusCode::OK, &[], "raw bytes") }),
        )
        .route(
            "/api/empty",
            get(|| async { reply(StatusCode::NO_CONTENT, &[], Body::empty()) }),
        )
        .route(
            "/api/etag",
            get(|headers: HeaderMap| async move {
                if headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v == "\"v1\"")
                {
                    reply(
                        StatusCode::NOT_MODIFIED,
                        &[("etag", "\"v1\"")],
                        Body::empty(),
                    )
                } else {
                    reply(StatusCode::OK, &[("etag", "\"v1\"")], "fresh")
                }
            }),
        )
        .route(
            "/api/since",
            get(|headers: HeaderMap| async move {
                if headers
                    .get(header::IF_MODIFIED_SINCE)
                    .is_some_and(|v| v == LAST_MODIFIED)
                {
                    // No validators repeated: the fetcher keeps the ones it sent.
                    reply(StatusCode::NOT_MODIFIED, &[], Body::empty())
                } else {
                    reply(StatusCode::OK, &[("last-modified", LAST_MODIFIED)], "fresh")
                }
            }),
        )
        .route(
            "/api/always-304",
            get(|| async { reply(StatusCode::NOT_MODIFIED, &[], Body::empty()) }),
        )
        .route(
            "/api/headers",
            get(|headers: HeaderMap| async move {
                let echo = ["x-api-key", "accept", "user-agent"]
                    .iter()
                    .map(|name| {
                        let value = headers.get(*name).and_then(|v| v.to_str().ok());
                        format!("{name}={}\n", value.unwrap_or("-"))
                    })
                    .collect::<String>();
                reply(StatusCode::OK, &[], echo)
            }),
        )
        .route(
            "/api/missing",
            get(|| async { reply(StatusCode::NOT_FOUND, &[], "no such thing") }),
        )
        .route(
            "/api/gone",
            get(|| async { reply(StatusCode::GONE, &[], Body::empty()) }),
        )
        .route(
            "/api/throttled",
            get(|| async { reply(StatusCode::TOO_MANY_REQUESTS, &[("retry-after", "3")], "") }),
        )
        .route(
            "/api/unavailable",
            get(|| async {
                let date = httpdate::fmt_http_date(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(RETRY_DATE_SECS),
                );
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &[("retry-after", &date)],
                    "",
                )
            }),
        )
        .route(
            "/api/garbled",
            get(|| async {
                reply(
                    StatusCode::TOO_MANY_REQUESTS,
                    &[("retry-after", "soon")],
                    "",
                )
            }),
        )
        .route(
            "/api/unavailable-bare",
            get(|| async { reply(StatusCode::SERVICE_UNAVAILABLE, &[], "") }),
        )
        .route(
            "/api/broken",
            get(|| async { reply(StatusCode::INTERNAL_SERVER_ERROR, &[], "oops") }),
        )
        .route(
            "/api/bad-gateway",
            get(|| async { reply(StatusCode::BAD_GATEWAY, &[], "") }),
        )
        .route(
            "/api/bad",
            get(|| async { reply(StatusCode::BAD_REQUEST, &[], "bad request") }),
        )
        .route(
            "/api/forbidden",
            get(|| async { reply(StatusCode::FORBIDDEN, &[], "") }),
        )
        .route(
            // Never answers; the client's timeout has to end the request.
            "/api/slow",
            get(std::future::pending::<Response<Body>>),
        )
        .route(
            // Headers at once, then one chunk, then nothing more.
            "/api/stall",
            get(|| async {
                let first =
                    futures::stream::once(async { Ok::<_, Infallible>(Bytes::from("partial")) });
                reply(
                    StatusCode::OK,
                    &[],
                    Body::from_stream(first.chain(futures::stream::pending())),
                )
            }),
        )
        .route(
            "/api/big",
            get(|| async { reply(StatusCode::OK, &[], vec![b'x'; LIMIT + 1]) }),
        )
        .route(
            // Declares a gigabyte, sends a few bytes, then stalls: only a check
            // of Content-Length before reading answers before the timeout.
            "/api/huge-declared",
            get(|| async {
                let first = futures::stream::once(async { Ok::<_, Infallible>(Bytes::from("xx")) });
                reply(
                    StatusCode::OK,
                    &[("content-length", "1073741824")],
                    Body::from_stream(first.chain(futures::stream::pending())),
                )
            }),
        )
        .route(
            "/api/exact",
            get(|| async { reply(StatusCode::OK, &[], vec![b'x'; LIMIT]) }),
        )
        .route(
            // Chunked, no Content-Length, never ends: only counting stops it.
            "/api/endless",
            get(|| async {
                let chunks = futures::stream::repeat_with(|| {
                    Ok::<_, Infallible>(Bytes::from_static(&[b'x'; 256]))
                });
                reply(StatusCode::OK, &[], Body::from_stream(chunks))
            }),
        )
        .route("/api/redirect", get(|| async { redirect("ok") }))
        .route(
            "/api/redirect-absolute",
            get(|State(addr): State<SocketAddr>| async move {
                redirect(&format!("http://{addr}/api/ok"))
            }),
        )
        .route(
            "/api/chain/{n}",
            get(|Path(n): Path<usize>| async move {
                if n == 0 {
                    reply(StatusCode::OK, &[], "end of chain")
                } else {
                    redirect(&format!("/api/chain/{}", n - 1))
                }
            }),
        )
        .route("/api/escape", get(|| async { redirect("/outside/secret") }))
        .route(
            "/api/escape-traversal",
            get(|| async { redirect("/api/../outside/secret") }),
        )
        .route(
            "/api/escape-host",
            get(|State(addr): State<SocketAddr>| async move {
                redirect(&format!("http://localhost:{}/api/ok", addr.port()))
            }),
        )
        .route(
            "/api/no-location",
            get(|| async { reply(StatusCode::FOUND, &[], Body::empty()) }),
        )
        .route(
            "/outside/secret",
            get(|| async { reply(StatusCode::OK, &[], "must never be fetched") }),
        )
}

fn fetcher() -> Fetcher {
    Fetcher::new("roadie-test/1").unwrap()
}

/// One fetch, bounded so a broken timeout fails the test instead of hanging it.
async fn fetch(
    policy: &ProviderPolicy,
    path: &str,
    validators: &Validators,
) -> Result<Outcome, Refusal> {
    let url = roadie_providers::resolve_url(policy, path).unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        fetcher().fetch(policy, &url, validators),
    )
    .await
    .expect("the fetch did not end")
}

async fn fetch_plain(policy: &ProviderPolicy, path: &str) -> Result<Outcome, Refusal> {
    fetch(policy, path, &Validators::default()).await
}

#[tokio::test]
async fn success_carries_body_media_type_and_validators() {
    let upstream = Upstream::start().await;
    let outcome = fetch_plain(&upstream.policy(), "ok").await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Success {
            status: 200,
            body: Bytes::from(r#"{"ok":true}"#),
            media_type: "application/json; charset=utf-8".into(),
            etag: Some("\"v1\"".into()),
            last_modified: Some(LAST_MODIFIED.into()),
        }
    );
}

#[tokio::test]
async fn success_without_content_type_is_octet_stream() {
    let upstream = Upstream::start().await;
    let Outcome::Success {
        media_type,
        body,
        etag,
        last_modified,
        ..
    } = fetch_plain(&upstream.policy(), "untyped").await.unwrap()
    else {
        panic!("not a success")
    };
    assert_eq!(media_type, "application/octet-stream");
    assert_eq!(body, "raw bytes");
    assert_eq!((etag, last_modified), (None, None));
}

#[tokio::test]
async fn no_content_is_an_empty_success() {
    let upstream = Upstream::start().await;
    assert!(matches!(
        fetch_plain(&upstream.policy(), "empty").await.unwrap(),
        Outcome::Success { status: 204, ref body, .. } if body.is_empty()
    ));
}

#[tokio::test]
async fn configured_headers_are_sent_and_secrets_stay_hidden() {
    let upstream = Upstream::start().await;
    let policy = upstream
        .policy()
        .with_header(
            "X-Api-Key",
            HeaderSetting::Secret(Secret::new("s3cr3t-key")),
        )
        .unwrap()
        .with_header("Accept", HeaderSetting::Plain("application/json".into()))
        .unwrap();
    let Outcome::Success { body, .. } = fetch_plain(&policy, "headers").await.unwrap() else {
        panic!("not a success")
    };
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        "x-api-key=s3cr3t-key\naccept=application/json\nuser-agent=roadie-test/1\n"
    );
    let debug = format!("{policy:?} {:?}", fetcher());
    assert!(!debug.contains("s3cr3t"), "{debug}");
}

#[tokio::test]
async fn a_provider_user_agent_replaces_the_default() {
    let upstream = Upstream::start().await;
    let policy = upstream
        .policy()
        .with_header(
            "User-Agent",
            HeaderSetting::Plain("tagger/2 (me@example.org)".into()),
        )
        .unwrap();
    let Outcome::Success { body, .. } = fetch_plain(&policy, "headers").await.unwrap() else {
        panic!("not a success")
    };
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("user-agent=tagger/2 (me@example.org)\n")
    );
}

#[tokio::test]
async fn a_matching_etag_revalidates_to_not_modified() {
    let upstream = Upstream::start().await;
    let policy = upstream.policy();
    let current = Validators {
        etag: Some("\"v1\"".into()),
        last_modified: None,
    };
    assert_eq!(
        fetch(&policy, "etag", &current).await.unwrap(),
        Outcome::NotModified {
            etag: Some("\"v1\"".into()),
            last_modified: None,
        }
    );
    let outdated = Validators {
        etag: Some("\"v0\"".into()),
        last_modified: None,
    };
    assert!(matches!(
        fetch(&policy, "etag", &outdated).await.unwrap(),
        Outcome::Success { ref etag, .. } if etag.as_deref() == Some("\"v1\"")
    ));
    // Without validators there is nothing to match: a full download.
    assert!(matches!(
        fetch_plain(&policy, "etag").await.unwrap(),
        Outcome::Success { .. }
    ));
}

#[tokio::test]
async fn last_modified_revalidates_with_if_modified_since() {
    let upstream = Upstream::start().await;
    let validators = Validators {
        etag: None,
        last_modified: Some(LAST_MODIFIED.into()),
    };
    assert_eq!(
        fetch(&upstream.policy(), "since", &validators)
            .await
            .unwrap(),
        Outcome::NotModified {
            etag: None,
            last_modified: Some(LAST_MODIFIED.into()),
        }
    );
}

#[tokio::test]
async fn not_modified_without_validators_is_final() {
    let upstream = Upstream::start().await;
    assert!(matches!(
        fetch_plain(&upstream.policy(), "always-304").await.unwrap(),
        Outcome::Final {
            status: Some(304),
            ..
        }
    ));
}

#[tokio::test]
async fn not_found_and_gone() {
    let upstream = Upstream::start().await;
    let policy = upstream.policy();
    assert_eq!(
        fetch_plain(&policy, "missing").await.unwrap(),
        Outcome::NotFound { status: 404 }
    );
    assert_eq!(
        fetch_plain(&policy, "gone").await.unwrap(),
        Outcome::NotFound { status: 410 }
    );
}

#[tokio::test]
async fn too_many_requests_with_retry_after_seconds() {
    let upstream = Upstream::start().await;
    let before = SystemTime::now();
    let outcome = fetch_plain(&upstream.policy(), "throttled").await.unwrap();
    let after = SystemTime::now();
    let Outcome::Throttled {
        status: 429,
        retry_at: Some(retry_at),
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(retry_at >= before + Duration::from_secs(3), "{retry_at:?}");
    assert!(retry_at <= after + Duration::from_secs(3), "{retry_at:?}");
}

#[tokio::test]
async fn service_unavailable_with_retry_after_date() {
    let upstream = Upstream::start().await;
    assert_eq!(
        fetch_plain(&upstream.policy(), "unavailable")
            .await
            .unwrap(),
        Outcome::Throttled {
            status: 503,
            retry_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(RETRY_DATE_SECS)),
        }
    );
}

#[tokio::test]
async fn throttled_without_a_usable_retry_after() {
    let upstream = Upstream::start().await;
    let policy = upstream.policy();
    assert_eq!(
        fetch_plain(&policy, "garbled").await.unwrap(),
        Outcome::Throttled {
            status: 429,
            retry_at: None,
        }
    );
    assert_eq!(
        fetch_plain(&policy, "unavailable-bare").await.unwrap(),
        Outcome::Throttled {
            status: 503,
            retry_at: None,
        }
    );
}

#[tokio::test]
async fn other_server_errors_are_transient() {
    let upstream = Upstream::start().await;
    let policy = upstream.policy();
    for (path, code) in [("broken", "500"), ("bad-gateway", "502")] {
        let outcome = fetch_plain(&policy, path).await.unwrap();
        assert!(
            matches!(outcome, Outcome::Transient { ref reason } if reason.contains(code)),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn other_client_errors_are_final() {
    let upstream = Upstream::start().await;
    let policy = upstream.policy();
    for (path, code) in [("bad", 400), ("forbidden", 403)] {
        let outcome = fetch_plain(&policy, path).await.unwrap();
        assert!(
            matches!(outcome, Outcome::Final { status: Some(s), .. } if s == code),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_upstream_times_out_as_transient() {
    let upstream = Upstream::start().await;
    let mut policy = upstream.policy();
    policy.timeout = Duration::from_millis(300);
    let outcome = fetch_plain(&policy, "slow").await.unwrap();
    assert!(
        matches!(outcome, Outcome::Transient { ref reason } if reason.contains("timed out")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_body_that_stalls_times_out_as_transient() {
    let upstream = Upstream::start().await;
    let mut policy = upstream.policy();
    policy.timeout = Duration::from_millis(300);
    let outcome = fetch_plain(&policy, "stall").await.unwrap();
    assert!(
        matches!(outcome, Outcome::Transient { ref reason } if reason.contains("timed out")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_transient() {
    // Bind and release a port so nothing listens on it.
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let upstream = Upstream::start().await;
    let policy = upstream.policy_at(&format!("http://127.0.0.1:{port}/api/"), true);
    let outcome = fetch_plain(&policy, "ok").await.unwrap();
    assert!(
        matches!(outcome, Outcome::Transient { ref reason } if reason.contains("connection failed")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_declared_oversized_body_is_final() {
    let upstream = Upstream::start().await;
    let outcome = fetch_plain(&upstream.policy(), "big").await.unwrap();
    assert!(
        matches!(outcome, Outcome::Final { status: Some(200), ref reason } if reason.contains("Content-Length is 1025 bytes") && reason.contains("limit of 1024 bytes")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_reading_it() {
    let upstream = Upstream::start().await;
    let mut policy = upstream.policy();
    policy.timeout = Duration::from_secs(10);
    let started = std::time::Instant::now();
    let outcome = fetch_plain(&policy, "huge-declared").await.unwrap();
    assert!(
        matches!(outcome, Outcome::Final { status: Some(200), ref reason } if reason.contains("Content-Length is 1073741824 bytes")),
        "{outcome:?}"
    );
    assert!(started.elapsed() < policy.timeout);
}

#[tokio::test]
async fn an_endless_body_is_cut_off_at_the_limit() {
    let upstream = Upstream::start().await;
    let outcome = fetch_plain(&upstream.policy(), "endless").await.unwrap();
    let Outcome::Final {
        status: Some(200),
        ref reason,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    // Reading stops at the first chunk past the limit; a chunk is at most one
    // read buffer, far below this bound.
    let read: usize = reason
        .split("stopped reading at ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{reason}"));
    assert!(read > LIMIT && read <= LIMIT + 64 * 1024, "{reason}");
}

#[tokio::test]
async fn a_body_exactly_at_the_limit_is_accepted() {
    let upstream = Upstream::start().await;
    assert!(matches!(
        fetch_plain(&upstream.policy(), "exact").await.unwrap(),
        Outcome::Success { ref body, .. } if body.len() == LIMIT
    ));
}

#[tokio::test]
async fn redirects_inside_the_base_are_followed() {
    let upstream = Upstream::start().await;
    let policy = upstream.policy();
    for path in ["redirect", "redirect-absolute"] {
        assert!(
            matches!(
                fetch_plain(&policy, path).await.unwrap(),
                Outcome::Success { ref body, .. } if body == r#"{"ok":true}"#
            ),
            "{path}"
        );
    }
    let chain = format!("chain/{MAX_REDIRECTS}");
    assert!(matches!(
        fetch_plain(&policy, &chain).await.unwrap(),
        Outcome::Success { ref body, .. } if body == "end of chain"
    ));
}

#[tokio::test]
async fn too_many_redirects_are_final() {
    let upstream = Upstream::start().await;
    let chain = format!("chain/{}", MAX_REDIRECTS + 1);
    let outcome = fetch_plain(&upstream.policy(), &chain).await.unwrap();
    assert!(
        matches!(outcome, Outcome::Final { status: Some(302), ref reason } if reason.contains("redirects")),
        "{outcome:?}"
    );
    // The first request and exactly MAX_REDIRECTS more.
    assert_eq!(upstream.seen().len(), MAX_REDIRECTS + 1);
}

#[tokio::test]
async fn a_redirect_without_location_is_final() {
    let upstream = Upstream::start().await;
    assert!(matches!(
        fetch_plain(&upstream.policy(), "no-location")
            .await
            .unwrap(),
        Outcome::Final {
            status: Some(302),
            ..
        }
    ));
}

#[tokio::test]
async fn redirects_out_of_the_base_are_refused() {
    let upstream = Upstream::start().await;
    let policy = upstream.policy();
    let addr = upstream.addr;
    for (path, target) in [
        ("escape", format!("http://{addr}/outside/secret")),
        ("escape-traversal", format!("http://{addr}/outside/secret")),
        (
            "escape-host",
            format!("http://localhost:{}/api/ok", addr.port()),
        ),
    ] {
        let refusal = fetch_plain(&policy, path).await.unwrap_err();
        let Refusal::Redirect {
            ref location,
            ref cause,
            ..
        } = refusal
        else {
            panic!("{refusal:?}")
        };
        assert_eq!(*location, target);
        assert!(
            matches!(**cause, Refusal::OutsideProvider { .. }),
            "{cause:?}"
        );
        assert!(refusal.to_string().contains(&target), "{refusal}");
    }
    assert!(
        !upstream.seen().iter().any(|p| p.starts_with("/outside")),
        "{:?}",
        upstream.seen()
    );
}

#[tokio::test]
async fn loopback_literal_is_refused_unless_private_is_allowed() {
    let upstream = Upstream::start().await;
    let base = format!("http://{}/api/", upstream.addr);
    let strict = upstream.policy_at(&base, false);
    assert_eq!(
        fetch_plain(&strict, "ok").await.unwrap_err(),
        Refusal::PrivateAddress {
            host: "127.0.0.1".into(),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    );
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());

    let permissive = upstream.policy_at(&base, true);
    assert!(matches!(
        fetch_plain(&permissive, "ok").await.unwrap(),
        Outcome::Success { .. }
    ));
    assert_eq!(upstream.seen(), ["/api/ok"]);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_private_is_allowed() {
    let upstream = Upstream::start().await;
    let base = format!("http://localhost:{}/api/", upstream.addr.port());
    let strict = upstream.policy_at(&base, false);
    let refusal = fetch_plain(&strict, "ok").await.unwrap_err();
    assert!(
        matches!(refusal, Refusal::PrivateAddress { ref host, addr } if host == "localhost" && addr.is_loopback()),
        "{refusal:?}"
    );
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());

    let permissive = upstream.policy_at(&base, true);
    assert!(matches!(
        fetch_plain(&permissive, "ok").await.unwrap(),
        Outcome::Success { .. }
    ));
}

#[tokio::test]
async fn a_url_outside_the_provider_is_refused_before_any_request() {
    let upstream = Upstream::start().await;
    let policy = upstream.policy();
    let outside = Url::parse(&format!("http://{}/outside/secret", upstream.addr)).unwrap();
    let refusal = fetcher()
        .fetch(&policy, &outside, &Validators::default())
        .await
        .unwrap_err();
    assert!(
        matches!(refusal, Refusal::OutsideProvider { .. }),
        "{refusal:?}"
    );
    assert!(upstream.seen().is_empty());
}
