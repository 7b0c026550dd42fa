//! One upstream HTTP request for a fetch job, classified into an [`Outcome`].
//!
//! The [`Fetcher`] performs a single GET (following at most
//! [`MAX_REDIRECTS`] redirects that stay under the provider's base URL) and
//! says what happened. It never retries and never sleeps: the job queue
//! decides what a [`Outcome::Transient`] or [`Outcome::Throttled`] means for
//! the job and the provider.
//!
//! It is also where Roadie's promise "never fetch a host no provider
//! declares" is kept:
//!
//! - [`roadie_providers::resolve_url`] accepts only URLs under the
//!   provider's base URL and returns them normalised, so the result can
//!   serve as the cache key;
//! - redirects are followed by hand and only inside the base URL;
//! - private, loopback and link-local addresses are refused unless the
//!   provider allows them. The check runs inside the HTTP client's DNS
//!   resolver, so the address that was vetted is the address connected to
//!   (no DNS rebinding between check and connect), for every hop.
//!
//! Refusals are the caller's or the configuration's fault and come back as
//! `Err(`[`Refusal`]`)`; everything upstream does comes back as `Ok(Outcome)`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use roadie_providers::{ProviderPolicy, Refusal, check_literal_host, is_forbidden, resolve_url};
use tokio::time::Instant;
use tracing::{Instrument, debug};
use url::Url;

/// Most redirects one fetch follows before giving up with [`Outcome::Final`].
pub const MAX_REDIRECTS: usize = 5;

/// Media type recorded when upstream sends no usable `Content-Type`.
pub const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";

/// Validators of a stored entry, sent to revalidate it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// Sent as `If-None-Match`.
    pub etag: Option<String>,
    /// Sent as `If-Modified-Since`.
    pub last_modified: Option<String>,
}

impl Validators {
    fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// What upstream did with one fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer with its body.
    Success {
        /// The 2xx status.
        status: u16,
        /// The whole body, at most `max_body_bytes`.
        body: Bytes,
        /// From `Content-Type`, type and subtype lowercased, parameters kept;
        /// [`DEFAULT_MEDIA_TYPE`] when missing.
        media_type: String,
        /// The `ETag` header, if any.
        etag: Option<String>,
        /// The `Last-Modified` header, if any.
        last_modified: Option<String>,
    },
    /// 304 to a revalidation: the stored entry is still good. The validators
    /// are upstream's new ones, or the ones sent where upstream repeats none.
    NotModified {
        /// The validator to store from now on.
        etag: Option<String>,
        /// The validator to store from now on.
        last_modified: Option<String>,
    },
    /// 404 or 410: cache a NEGATIVE entry.
    NotFound {
        /// 404 or 410.
        status: u16,
    },
    /// 429 or 503: pause the provider until `retry_at` (or the queue's own
    /// backoff when upstream gave no usable `Retry-After`).
    Throttled {
        /// 429 or 503.
        status: u16,
        /// From `Retry-After`, given as delta-seconds or as an HTTP-date.
        retry_at: Option<SystemTime>,
    },
    /// Other 5xx, timeouts, connection errors: retry with backoff.
    Transient {
        /// What went wrong, for the job's last error.
        reason: String,
    },
    /// Other 4xx, an oversized body, a redirect loop: do not retry.
    Final {
        /// Upstream's status, when there was one.
        status: Option<u16>,
        /// What went wrong, for the job's last error.
        reason: String,
    },
}

/// The HTTP client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The user agent contains characters not allowed in a header.
    #[error("the user agent is not a valid header value")]
    UserAgent,
    /// reqwest could not build its client (TLS initialisation).
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Performs upstream requests. Cheap to clone: the clients are shared
/// handles over one connection pool each.
#[derive(Clone, Debug)]
pub struct Fetcher {
    // Two clients because the address check lives in the DNS resolver, which
    // is fixed per client, while `allow_private` is per provider.
    strict: reqwest::Client,
    permissive: reqwest::Client,
    /// `http.client.request.duration`.
    upstream: opentelemetry::metrics::Histogram<f64>,
}

impl Fetcher {
    /// Builds the HTTP clients: rustls, no proxy, no automatic redirects or
    /// retries, `user_agent` unless a provider configures its own.
    pub fn new(user_agent: &str) -> Result<Fetcher, BuildError> {
        let user_agent = HeaderValue::from_str(user_agent).map_err(|_| BuildError::UserAgent)?;
        let build = |allow_private: bool| {
            reqwest::Client::builder()
                .user_agent(user_agent.clone())
                .redirect(reqwest::redirect::Policy::none())
                .retry(reqwest::retry::never())
                // A proxy would resolve the host itself, past the address check.
                .no_proxy()
                .dns_resolver(VettingResolver { allow_private })
                .build()
                .map_err(BuildError::Client)
        };
        Ok(Fetcher {
            strict: build(false)?,
            permissive: build(true)?,
            upstream: crate::metrics::upstream_duration(),
        })
    }

    /// Fetches `url` for `policy`, revalidating with `validators` when they
    /// hold any, and classifies the answer. One request, plus at most
    /// [`MAX_REDIRECTS`] redirects inside the base URL, all within
    /// `policy.timeout`.
    #[tracing::instrument(name = "fetcher.fetch", skip_all, fields(provider = %policy.name, url = %url))]
    pub async fn fetch(
        &self,
        policy: &ProviderPolicy,
        url: &Url,
        validators: &Validators,
    ) -> Result<Outcome, Refusal> {
        let deadline = Instant::now() + policy.timeout;
        let client = if policy.allow_private {
            &self.permissive
        } else {
            &self.strict
        };
        let mut current = resolve_url(policy, url.as_str())?;
        let mut redirects = 0;
        loop {
            check_literal_host(policy, &current)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(timed_out(policy));
            }
            // One client span per request; the provider sees its traceparent.
            let span = tracing::info_span!(
                "GET",
                otel.kind = "client",
                http.request.method = "GET",
                server.address = current.host_str().unwrap_or_default(),
                http.response.status_code = tracing::field::Empty,
            );
            let mut trace = HeaderMap::new();
            roadie_telemetry::propagation::inject(&span, &mut trace);
            // `current` never carries a secret; only the wire URL does.
            let request = client
                .get(policy.request_url(&current))
                .timeout(remaining)
                .headers(policy.headers.clone())
                .headers(conditional_headers(validators))
                .headers(trace);
            let sent = std::time::Instant::now();
            let answered = request.send().instrument(span.clone()).await;
            let code = answered
                .as_ref()
                .map_or(0, |r| i64::from(r.status().as_u16()));
            span.record("http.response.status_code", code);
            self.upstream.record(
                sent.elapsed().as_secs_f64(),
                &[
                    opentelemetry::KeyValue::new("roadie.provider", policy.name.clone()),
                    opentelemetry::KeyValue::new("http.request.method", "GET"),
                    opentelemetry::KeyValue::new("http.response.status_code", code),
                ],
            );
            let response = match answered {
                Ok(response) => response,
                // Without the URL, which carries the secret parameters.
                Err(error) => return send_failed(policy, &error.without_url()),
            };
            let status = response.status();
            debug!(status = status.as_u16(), url = %current, "upstream answered");
            if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
                return Ok(classify(response, policy, validators).await);
            }
            let Some(location) = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| current.join(v).ok())
                // An echo of a secret (the wire URL) is concealed at once.
                .map(|location| policy.conceal(&location))
            else {
                return Ok(Outcome::Final {
                    status: Some(status.as_u16()),
                    reason: format!("upstream answered {status} without a usable Location"),
                });
            };
            let next =
                resolve_url(policy, location.as_str()).map_err(|cause| Refusal::Redirect {
                    from: current.to_string(),
                    location: location.to_string(),
                    cause: Box::new(cause),
                })?;
            if redirects == MAX_REDIRECTS {
                return Ok(Outcome::Final {
                    status: Some(status.as_u16()),
                    reason: format!("more than {MAX_REDIRECTS} redirects"),
                });
            }
            redirects += 1;
            debug!(to = %next, "following redirect");
            current = next;
        }
    }
}

fn conditional_headers(validators: &Validators) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // A stored validator came from upstream; one that is no longer a valid
    // header value is skipped, which only costs a full download.
    let mut put = |name: HeaderName, value: &Option<String>| {
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    };
    put(header::IF_NONE_MATCH, &validators.etag);
    put(header::IF_MODIFIED_SINCE, &validators.last_modified);
    headers
}

fn timed_out(policy: &ProviderPolicy) -> Outcome {
    Outcome::Transient {
        reason: format!("timed out after {:?}", policy.timeout),
    }
}

/// Classifies a request that produced no response.
fn send_failed(policy: &ProviderPolicy, error: &reqwest::Error) -> Result<Outcome, Refusal> {
    if let Some(refused) = find_cause::<AddressRefused>(error) {
        return Err(Refusal::PrivateAddress {
            host: refused.host.clone(),
            addr: refused.addr,
        });
    }
    if error.is_timeout() {
        return Ok(timed_out(policy));
    }
    let what = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    Ok(Outcome::Transient {
        reason: format!("{what}: {}", error_chain(error)),
    })
}

fn find_cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// `outer: inner: …`, without the URL reqwest puts in its own message (the
/// job already names it).
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn classify(
    response: reqwest::Response,
    policy: &ProviderPolicy,
    validators: &Validators,
) -> Outcome {
    let status = response.status();
    let code = status.as_u16();
    let text = |name: HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match code {
        200..=299 => {
            let media_type = text(header::CONTENT_TYPE)
                .and_then(|v| normalise_media_type(&v))
                .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.to_owned());
            let etag = text(header::ETAG);
            let last_modified = text(header::LAST_MODIFIED);
            match read_body(response, policy).await {
                Ok(body) => Outcome::Success {
                    status: code,
                    body,
                    media_type,
                    etag,
                    last_modified,
                },
                Err(outcome) => outcome,
            }
        }
        304 if validators.is_empty() => Outcome::Final {
            status: Some(code),
            reason: "upstream answered 304 Not Modified to a request without validators".into(),
        },
        304 => Outcome::NotModified {
            etag: text(header::ETAG).or_else(|| validators.etag.clone()),
            last_modified: text(header::LAST_MODIFIED).or_else(|| validators.last_modified.clone()),
        },
        404 | 410 => Outcome::NotFound { status: code },
        429 | 503 => Outcome::Throttled {
            status: code,
            retry_at: text(header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(&v, SystemTime::now())),
        },
        500..=599 => Outcome::Transient {
            reason: format!("upstream answered {status}"),
        },
        _ => Outcome::Final {
            status: Some(code),
            reason: format!("upstream answered {status}"),
        },
    }
}

/// Reads the body chunk by chunk, giving up as soon as it passes the limit,
/// so an endless or huge body costs at most `max_body_bytes` of memory.
async fn read_body(
    mut response: reqwest::Response,
    policy: &ProviderPolicy,
) -> Result<Bytes, Outcome> {
    let limit = policy.max_body_bytes;
    let status = Some(response.status().as_u16());
    let too_large = |detail: String| Outcome::Final {
        status,
        reason: format!("body exceeds the limit of {limit} bytes ({detail})"),
    };
    let declared = response.content_length();
    if let Some(length) = declared
        && length > limit as u64
    {
        return Err(too_large(format!("Content-Length is {length} bytes")));
    }
    let capacity = declared.map_or(0, |length| usize::try_from(length).unwrap_or(limit));
    let mut body = BytesMut::with_capacity(capacity.min(limit));
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if chunk.len() > limit - body.len() {
                    return Err(too_large(format!(
                        "stopped reading at {} bytes",
                        body.len() + chunk.len()
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(error) if error.is_timeout() => {
                return Err(Outcome::Transient {
                    reason: format!("timed out after {:?} reading the body", policy.timeout),
                });
            }
            Err(error) => {
                return Err(Outcome::Transient {
                    reason: format!("reading the body failed: {}", error_chain(&error)),
                });
            }
        }
    }
}

/// `Text/HTML; charset=UTF-8` → `text/html; charset=UTF-8`; `None` when
/// there is no `type/subtype`.
fn normalise_media_type(value: &str) -> Option<String> {
    let (essence, params) = match value.split_once(';') {
        Some((essence, params)) => (essence, Some(params)),
        None => (value, None),
    };
    let essence = essence.trim();
    let (kind, subtype) = essence.split_once('/')?;
    if kind.is_empty() || subtype.is_empty() || essence.contains(char::is_whitespace) {
        return None;
    }
    let mut media_type = essence.to_ascii_lowercase();
    if let Some(params) = params.map(str::trim).filter(|p| !p.is_empty()) {
        media_type.push_str("; ");
        media_type.push_str(params);
    }
    Some(media_type)
}

/// `Retry-After` as delta-seconds (`120`) or as an HTTP-date; `None` when it
/// is neither (or out of range), leaving the delay to the queue's backoff.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = value.parse().ok()?;
        return now.checked_add(Duration::from_secs(seconds));
    }
    httpdate::parse_http_date(value).ok()
}

/// Raised inside the resolver and found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to refused addresses (first: {addr})")]
struct AddressRefused {
    host: String,
    addr: IpAddr,
}

/// The clients' DNS resolver: the addresses it returns are the only ones the
/// client connects to, so vetting them here closes the gap a separate check
/// before the request would leave (DNS rebinding), on every redirect hop too.
#[derive(Debug)]
struct VettingResolver {
    allow_private: bool,
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if allow_private {
                return Ok(Box::new(resolved.into_iter()) as Addrs);
            }
            // A host with public and private addresses keeps its public ones.
            let (vetted, refused): (Vec<_>, Vec<_>) =
                resolved.into_iter().partition(|a| !is_forbidden(a.ip()));
            match refused.first() {
                Some(first) if vetted.is_empty() => Err(Box::new(AddressRefused {
                    host,
                    addr: first.ip(),
                }) as _),
                _ => Ok(Box::new(vetted.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn retry_after_as_delta_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after("3", now),
            Some(now + Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(now));
    }

    #[test]
    fn retry_after_as_http_date() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
    }

    #[test]
    fn garbled_retry_after_is_none() {
        let now = SystemTime::UNIX_EPOCH;
        for garbled in [
            "",
            "soon",
            "-5",
            "3.5",
            "+3",
            "99999999999999999999999",
            "Sun, 06 Nov 1994",
        ] {
            assert_eq!(parse_retry_after(garbled, now), None, "{garbled:?}");
        }
    }

    #[test]
    fn media_types() {
        assert_eq!(
            normalise_media_type("Application/JSON; charset=utf-8").unwrap(),
            "application/json; charset=utf-8"
        );
        assert_eq!(normalise_media_type("image/jpeg").unwrap(), "image/jpeg");
        assert_eq!(normalise_media_type(" text/plain ;").unwrap(), "text/plain");
        assert_eq!(normalise_media_type("nonsense"), None);
        assert_eq!(normalise_media_type("/json"), None);
        assert_eq!(normalise_media_type(""), None);
    }

    #[test]
    fn conditional_headers_from_validators() {
        let headers = conditional_headers(&Validators {
            etag: Some("\"v1\"".into()),
            last_modified: Some("Sun, 06 Nov 1994 08:49:37 GMT".into()),
        });
        assert_eq!(headers[header::IF_NONE_MATCH], "\"v1\"");
        assert_eq!(
            headers[header::IF_MODIFIED_SINCE],
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert!(conditional_headers(&Validators::default()).is_empty());
        let garbled = conditional_headers(&Validators {
            etag: Some("a\nb".into()),
            last_modified: None,
        });
        assert!(garbled.is_empty());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_loopback_addresses() {
        let strict = VettingResolver {
            allow_private: false,
        };
        let err = match strict.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved"),
            Err(err) => err,
        };
        assert!(err.downcast_ref::<AddressRefused>().is_some(), "{err}");
        let permissive = VettingResolver {
            allow_private: true,
        };
        let addrs: Vec<_> = permissive
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert!(!addrs.is_empty());
    }
}
