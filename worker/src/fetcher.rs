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
//! - [`Fetcher::resolve_url`] accepts only URLs under the provider's base URL
//!   and returns them normalised, so the result can serve as the cache key;
//! - redirects are followed by hand and only inside the base URL;
//! - private, loopback and link-local addresses are refused unless the
//!   provider allows them. The check runs inside the HTTP client's DNS
//!   resolver, so the address that was vetted is the address connected to
//!   (no DNS rebinding between check and connect), for every hop.
//!
//! Refusals are the caller's or the configuration's fault and come back as
//! `Err(`[`Refusal`]`)`; everything upstream does comes back as `Ok(Outcome)`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;
use tracing::debug;
use url::{Host, Url};

/// Most redirects one fetch follows before giving up with [`Outcome::Final`].
pub const MAX_REDIRECTS: usize = 5;

/// Media type recorded when upstream sends no usable `Content-Type`.
pub const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";

/// A secret header value (an API key or token), read from the environment by
/// the caller. Its `Debug` output is `***`, so it cannot leak through logs or
/// error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself; call only where it is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

/// The value of a configured provider header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderSetting {
    /// A value that may be shown in logs (for example an `Accept` header).
    Plain(String),
    /// A value that must never be shown (API keys, tokens).
    Secret(Secret),
}

/// A configured header that cannot be sent. The message names the header,
/// never its value.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The header name is not a valid HTTP header name.
    #[error("provider {provider}: {name:?} is not a valid header name")]
    HeaderName {
        /// The provider being configured.
        provider: String,
        /// The offending name.
        name: String,
    },
    /// The value contains characters not allowed in a header value.
    #[error("provider {provider}: the value of header {name} is not a valid header value")]
    HeaderValue {
        /// The provider being configured.
        provider: String,
        /// The header whose value is invalid.
        name: String,
    },
}

/// What the fetcher needs to know about one provider.
#[derive(Clone, Debug)]
pub struct ProviderPolicy {
    /// The provider's name, e.g. `musicbrainz`; used in logs.
    pub name: String,
    /// Every fetched URL must fall under this one: same scheme, host and
    /// port, and a path below this path (treated as a directory).
    pub base_url: Url,
    /// Budget for the whole fetch: connecting, every redirect hop and reading
    /// the body.
    pub timeout: Duration,
    /// Headers sent with every request to this provider. Secret values are
    /// marked sensitive (see [`ProviderPolicy::with_header`]), which makes
    /// `Debug` print `Sensitive` instead of the value.
    pub headers: HeaderMap,
    /// Allow private, loopback and link-local addresses (test providers).
    pub allow_private: bool,
    /// Largest body accepted; a larger one is [`Outcome::Final`].
    pub max_body_bytes: usize,
}

impl ProviderPolicy {
    /// Timeout used by [`ProviderPolicy::new`] (DESIGN: 30 s except MusicBrainz).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Body limit used by [`ProviderPolicy::new`] (DESIGN: values up to 8 MiB).
    pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

    /// A policy with no headers, the default timeout and body limit, and
    /// private addresses refused.
    pub fn new(name: impl Into<String>, base_url: Url) -> ProviderPolicy {
        ProviderPolicy {
            name: name.into(),
            base_url,
            timeout: Self::DEFAULT_TIMEOUT,
            headers: HeaderMap::new(),
            allow_private: false,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Adds a header sent with every request; a [`HeaderSetting::Secret`]
    /// value is marked sensitive so it is never printed.
    pub fn with_header(
        mut self,
        name: &str,
        value: HeaderSetting,
    ) -> Result<ProviderPolicy, PolicyError> {
        let header_name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| PolicyError::HeaderName {
                provider: self.name.clone(),
                name: name.to_owned(),
            })?;
        let invalid_value = |_| PolicyError::HeaderValue {
            provider: self.name.clone(),
            name: name.to_owned(),
        };
        let header_value = match &value {
            HeaderSetting::Plain(plain) => HeaderValue::from_str(plain).map_err(invalid_value)?,
            HeaderSetting::Secret(secret) => {
                let mut v = HeaderValue::from_str(secret.expose()).map_err(invalid_value)?;
                v.set_sensitive(true);
                v
            }
        };
        self.headers.append(header_name, header_value);
        Ok(self)
    }
}

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

/// A fetch Roadie will not make. These are the caller's or the
/// configuration's fault, not upstream's: the server maps the URL variants to
/// INVALID_ARGUMENT and the address and redirect ones to PERMISSION_DENIED.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a usable http(s) URL: unparsable, another scheme, credentials in
    /// it, a provider base URL that cannot be a base, an encoded dot segment.
    #[error("bad URL: {0}")]
    BadUrl(String),
    /// A well-formed URL that does not fall under the provider's base URL.
    #[error("{url} is outside the provider's base URL {base}")]
    OutsideProvider {
        /// The refused URL.
        url: String,
        /// The provider's base URL.
        base: String,
    },
    /// The host is, or resolves only to, an address the provider may not
    /// reach (private, loopback, link-local, …).
    #[error(
        "{host} ({addr}) is a private, loopback or link-local address, and the provider does not allow those"
    )]
    PrivateAddress {
        /// The host from the URL.
        host: String,
        /// The first refused address.
        addr: IpAddr,
    },
    /// Upstream redirected to a URL that is itself refused (usually because
    /// it leaves the provider's base URL).
    #[error("redirect from {from} to {location} refused: {cause}")]
    Redirect {
        /// The URL that answered with the redirect.
        from: String,
        /// The target, resolved against `from`.
        location: String,
        /// Why the target is refused.
        cause: Box<Refusal>,
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
        })
    }

    /// Turns a path (joined below the provider's base URL) or a full URL
    /// (which must fall under it) into the URL to fetch.
    ///
    /// A path is always relative to the base, with or without a leading `/`:
    /// for base `https://musicbrainz.org/ws/2/`, `artist/x` and `/artist/x`
    /// both give `https://musicbrainz.org/ws/2/artist/x`. A full URL must
    /// have the base's scheme, host and port, and a path below the base's.
    /// The result is normalised (lowercase host, default port dropped, dot
    /// segments resolved, no fragment, no empty query), so equal resources
    /// give equal strings and the result can serve as the cache key.
    pub fn resolve_url(policy: &ProviderPolicy, path_or_url: &str) -> Result<Url, Refusal> {
        let base = base_directory(&policy.base_url)?;
        let mut url = match Url::parse(path_or_url) {
            Ok(url) if is_http(url.scheme()) => url,
            Ok(url) if path_or_url.contains("://") => {
                return Err(Refusal::BadUrl(format!(
                    "scheme {:?} is not http or https",
                    url.scheme()
                )));
            }
            // Anything else is a path, even `tag:rock`, which parses as a URL
            // with scheme `tag`; the `./` keeps `join` from reading it so.
            Ok(_) | Err(url::ParseError::RelativeUrlWithoutBase) => {
                let path = path_or_url.trim_start_matches(['/', '\\']);
                base.join(&format!("./{path}"))
                    .map_err(|e| Refusal::BadUrl(e.to_string()))?
            }
            Err(e) => return Err(Refusal::BadUrl(e.to_string())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::BadUrl(
                "credentials in URLs are not allowed".into(),
            ));
        }
        let same_origin = url.scheme() == base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default();
        let base_path = base.path();
        let below = url.path().starts_with(base_path)
            || (base_path != "/" && url.path() == base_path.trim_end_matches('/'));
        if !same_origin || !below {
            return Err(Refusal::OutsideProvider {
                url: url.to_string(),
                base: base.to_string(),
            });
        }
        if url
            .path_segments()
            .into_iter()
            .flatten()
            .any(hides_dot_segment)
        {
            return Err(Refusal::BadUrl(format!(
                "{url} has a percent-encoded `..` or `.` path segment"
            )));
        }
        url.set_fragment(None);
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(url)
    }

    /// Refuses `url` up front when its host is, or resolves only to, an
    /// address the provider may not reach: what a server checks before it
    /// enqueues a fetch, so the caller hears PERMISSION_DENIED at once. The
    /// worker's resolver checks again on every connection.
    pub async fn check_address(policy: &ProviderPolicy, url: &Url) -> Result<(), Refusal> {
        check_literal_host(policy, url)?;
        if policy.allow_private {
            return Ok(());
        }
        let Some(Host::Domain(host)) = url.host() else {
            return Ok(());
        };
        // A name that does not resolve now is the worker's to report.
        let Ok(resolved) = tokio::net::lookup_host((host, 0)).await else {
            return Ok(());
        };
        let resolved: Vec<SocketAddr> = resolved.collect();
        match resolved.iter().find(|a| is_forbidden(a.ip())) {
            Some(first) if resolved.iter().all(|a| is_forbidden(a.ip())) => {
                Err(Refusal::PrivateAddress {
                    host: host.to_owned(),
                    addr: first.ip(),
                })
            }
            _ => Ok(()),
        }
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
        let mut current = Self::resolve_url(policy, url.as_str())?;
        let mut redirects = 0;
        loop {
            check_literal_host(policy, &current)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(timed_out(policy));
            }
            let request = client
                .get(current.clone())
                .timeout(remaining)
                .headers(policy.headers.clone())
                .headers(conditional_headers(validators));
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => return send_failed(policy, &error),
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
            else {
                return Ok(Outcome::Final {
                    status: Some(status.as_u16()),
                    reason: format!("upstream answered {status} without a usable Location"),
                });
            };
            let next = Self::resolve_url(policy, location.as_str()).map_err(|cause| {
                Refusal::Redirect {
                    from: current.to_string(),
                    location: location.to_string(),
                    cause: Box::new(cause),
                }
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

fn is_http(scheme: &str) -> bool {
    scheme == "http" || scheme == "https"
}

/// The provider's base URL as a directory: path ending in `/`, no query or
/// fragment, so that joining and prefix checks work on whole segments.
fn base_directory(base: &Url) -> Result<Url, Refusal> {
    if !is_http(base.scheme()) || base.host().is_none() {
        return Err(Refusal::BadUrl(format!(
            "provider base URL {base} is not an http(s) URL with a host"
        )));
    }
    let mut dir = base.clone();
    dir.set_query(None);
    dir.set_fragment(None);
    if !dir.path().ends_with('/') {
        let path = format!("{}/", dir.path());
        dir.set_path(&path);
    }
    Ok(dir)
}

/// True for a segment like `..%2Fadmin` that a server decoding `%2F` before
/// routing would read as a `..` or `.` segment. The URL parser already
/// resolves `%2e%2e` on its own; it keeps encoded slashes, and must (a title
/// like `AC%2FDC` is legitimate).
fn hides_dot_segment(segment: &str) -> bool {
    let decoded = segment
        .to_ascii_lowercase()
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace("%2e", ".");
    decoded.contains('/') && decoded.split(['/', '\\']).any(|p| p == "." || p == "..")
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

/// Hosts given as IP literals never reach the DNS resolver, so they are
/// checked here, on every hop.
fn check_literal_host(policy: &ProviderPolicy, url: &Url) -> Result<(), Refusal> {
    if policy.allow_private {
        return Ok(());
    }
    let addr = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if is_forbidden(addr) {
        return Err(Refusal::PrivateAddress {
            host: url.host_str().unwrap_or_default().to_owned(),
            addr,
        });
    }
    Ok(())
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

/// Addresses no provider may reach unless it allows private addresses:
/// loopback, private (RFC 1918), CGNAT, link-local, unique-local,
/// unspecified, "this network", broadcast and multicast, in IPv4 and IPv6,
/// including IPv4 addresses embedded in IPv6 (mapped `::ffff:a.b.c.d` and
/// the deprecated compatible `::a.b.c.d`).
fn is_forbidden(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(addr: Ipv4Addr) -> bool {
    let [a, b, ..] = addr.octets();
    addr.is_loopback()
        || addr.is_private()
        || addr.is_link_local()
        || addr.is_broadcast()
        || addr.is_multicast()
        || a == 0 // 0.0.0.0/8, "this network", includes unspecified
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, CGNAT
}

fn is_forbidden_v6(addr: Ipv6Addr) -> bool {
    let first = addr.segments()[0];
    if addr.is_loopback() || addr.is_unspecified() || addr.is_multicast() {
        return true;
    }
    if let Some(v4) = addr.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    // ::a.b.c.d (IPv4-compatible, deprecated): the first 96 bits are zero.
    if addr.segments()[..6].iter().all(|&s| s == 0) {
        return is_forbidden_v4(Ipv4Addr::from_bits(addr.to_bits() as u32));
    }
    (first & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (first & 0xffc0) == 0xfec0 // fec0::/10, deprecated site-local
        || (first & 0xfe00) == 0xfc00 // fc00::/7, unique-local
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

    fn policy(base: &str) -> ProviderPolicy {
        ProviderPolicy::new("test", Url::parse(base).unwrap())
    }

    fn resolve(base: &str, input: &str) -> Result<String, Refusal> {
        Fetcher::resolve_url(&policy(base), input).map(String::from)
    }

    const MB: &str = "https://musicbrainz.org/ws/2/";

    #[test]
    fn a_path_joins_below_the_base() {
        let want = "https://musicbrainz.org/ws/2/artist/x?fmt=json";
        assert_eq!(resolve(MB, "artist/x?fmt=json").unwrap(), want);
        assert_eq!(resolve(MB, "/artist/x?fmt=json").unwrap(), want);
        assert_eq!(resolve(MB, "//artist/x?fmt=json").unwrap(), want);
        // A base without a trailing slash is still a directory.
        assert_eq!(
            resolve("https://musicbrainz.org/ws/2", "artist/x?fmt=json").unwrap(),
            want
        );
        assert_eq!(resolve(MB, "").unwrap(), MB);
    }

    #[test]
    fn a_path_that_looks_like_a_scheme_stays_a_path() {
        assert_eq!(
            resolve(MB, "tag:rock").unwrap(),
            "https://musicbrainz.org/ws/2/tag:rock"
        );
    }

    #[test]
    fn a_full_url_must_fall_under_the_base() {
        assert_eq!(
            resolve(MB, "https://musicbrainz.org/ws/2/artist/x").unwrap(),
            "https://musicbrainz.org/ws/2/artist/x"
        );
        assert_eq!(
            resolve(MB, "https://musicbrainz.org/ws/2").unwrap(),
            "https://musicbrainz.org/ws/2"
        );
        for outside in [
            "http://musicbrainz.org/ws/2/artist/x",       // scheme
            "https://evil.org/ws/2/artist/x",             // host
            "https://musicbrainz.org.evil.org/ws/2/x",    // host suffix trick
            "https://musicbrainz.org:8443/ws/2/artist/x", // port
            "https://musicbrainz.org/ws/20/artist/x",     // prefix not on a segment boundary
            "https://musicbrainz.org/ws/",                // above the base
            "https://musicbrainz.org/admin",
        ] {
            assert!(
                matches!(resolve(MB, outside), Err(Refusal::OutsideProvider { .. })),
                "{outside} was accepted"
            );
        }
    }

    #[test]
    fn traversal_out_of_the_base_is_refused() {
        for attempt in [
            "../../admin",
            "artist/../../../admin",
            "/../admin",
            "%2e%2e/%2e%2e/admin",
            "%2E%2E/%2e./admin",
            ".%2e/.%2e/admin",
            "https://musicbrainz.org/ws/2/../../admin",
            "https://musicbrainz.org/ws/2/%2e%2e/%2e%2e/admin",
            "https:\\\\evil.org\\ws\\2\\x",
            "https://evil.org%2f@musicbrainz.org.evil.org/ws/2/",
        ] {
            let got = resolve(MB, attempt);
            assert!(
                matches!(
                    got,
                    Err(Refusal::OutsideProvider { .. } | Refusal::BadUrl(_))
                ),
                "{attempt} gave {got:?}"
            );
        }
        // Dot segments that stay inside are resolved away.
        assert_eq!(
            resolve(MB, "artist/x/../y").unwrap(),
            "https://musicbrainz.org/ws/2/artist/y"
        );
        // Scheme-relative-looking paths stay on the provider's host.
        for path in ["//evil.org/x", "\\\\evil.org/x", "/\\evil.org/x"] {
            assert_eq!(
                resolve(MB, path).unwrap(),
                "https://musicbrainz.org/ws/2/evil.org/x",
                "{path}"
            );
        }
    }

    #[test]
    fn encoded_slashes_hiding_dot_segments_are_refused() {
        for attempt in [
            "..%2f..%2fadmin",
            "x/..%2F..%2Fadmin",
            "..%5cadmin",
            "%2e%2e%2fadmin",
        ] {
            assert!(
                matches!(resolve(MB, attempt), Err(Refusal::BadUrl(_))),
                "{attempt} accepted"
            );
        }
        // An encoded slash in a name is fine.
        assert_eq!(
            resolve(
                "https://en.wikipedia.org/api/rest_v1/",
                "page/summary/AC%2FDC"
            )
            .unwrap(),
            "https://en.wikipedia.org/api/rest_v1/page/summary/AC%2FDC"
        );
    }

    #[test]
    fn credentials_and_other_schemes_are_refused() {
        for bad in [
            "https://user:pw@musicbrainz.org/ws/2/x",
            "https://user@musicbrainz.org/ws/2/x",
            "ftp://musicbrainz.org/ws/2/x",
            "file:///etc/passwd",
            "https://[::1/x",
        ] {
            assert!(
                matches!(resolve(MB, bad), Err(Refusal::BadUrl(_))),
                "{bad} accepted"
            );
        }
        assert!(matches!(
            resolve("https://me:pw@musicbrainz.org/ws/2/", "x"),
            Err(Refusal::BadUrl(_))
        ));
        assert!(matches!(
            resolve("ftp://musicbrainz.org/", "x"),
            Err(Refusal::BadUrl(_))
        ));
    }

    #[test]
    fn resolved_urls_are_normalised_for_use_as_keys() {
        assert_eq!(
            resolve(MB, "HTTPS://MusicBrainz.ORG:443/ws/2/./artist/x#top").unwrap(),
            "https://musicbrainz.org/ws/2/artist/x"
        );
        assert_eq!(
            resolve(MB, "artist/x?").unwrap(),
            "https://musicbrainz.org/ws/2/artist/x"
        );
        assert_eq!(
            resolve(MB, "artist/a b").unwrap(),
            "https://musicbrainz.org/ws/2/artist/a%20b"
        );
        // The same URL twice gives the same key.
        let once = resolve(MB, "artist/x").unwrap();
        assert_eq!(resolve(MB, &once).unwrap(), once);
    }

    #[test]
    fn numeric_host_tricks_normalise_to_the_literal() {
        let base = "http://127.0.0.1:8080/api/";
        assert_eq!(
            resolve(base, "http://2130706433:8080/api/x").unwrap(),
            "http://127.0.0.1:8080/api/x"
        );
        assert_eq!(
            resolve(base, "http://0x7f.1:8080/api/x").unwrap(),
            "http://127.0.0.1:8080/api/x"
        );
    }

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
    fn forbidden_addresses() {
        for addr in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "ff02::1",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(is_forbidden(ip), "{addr} allowed");
        }
    }

    #[test]
    fn public_addresses() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.255.0.1",
            "11.0.0.1",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2a00:1450::1",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(!is_forbidden(ip), "{addr} refused");
        }
    }

    #[test]
    fn literal_hosts_are_checked_unless_private_is_allowed() {
        let mut p = policy("http://127.0.0.1:9/api/");
        let url = Url::parse("http://127.0.0.1:9/api/x").unwrap();
        assert!(matches!(
            check_literal_host(&p, &url),
            Err(Refusal::PrivateAddress { addr, .. }) if addr == IpAddr::V4(Ipv4Addr::LOCALHOST)
        ));
        let v6 = Url::parse("http://[::ffff:7f00:1]:9/api/x").unwrap();
        assert!(check_literal_host(&p, &v6).is_err());
        let named = Url::parse("http://example.org/api/x").unwrap();
        assert!(check_literal_host(&p, &named).is_ok());
        p.allow_private = true;
        assert!(check_literal_host(&p, &url).is_ok());
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
    fn secrets_never_show_in_debug_output() {
        let secret = Secret::new("hunter2-api-key");
        assert_eq!(format!("{secret:?}"), "***");
        let setting = HeaderSetting::Secret(secret.clone());
        assert!(!format!("{setting:?}").contains("hunter2"));
        let p = policy(MB)
            .with_header("Authorization", HeaderSetting::Secret(secret))
            .unwrap()
            .with_header("Accept", HeaderSetting::Plain("application/json".into()))
            .unwrap();
        let debug = format!("{p:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("application/json"), "{debug}");
        assert!(p.headers["authorization"].is_sensitive());
        assert!(!p.headers["accept"].is_sensitive());
    }

    #[test]
    fn bad_headers_are_named_without_their_value() {
        let err = policy(MB)
            .with_header("Bad Name", HeaderSetting::Plain("x".into()))
            .unwrap_err();
        assert!(matches!(err, PolicyError::HeaderName { .. }));
        let err = policy(MB)
            .with_header(
                "X-Key",
                HeaderSetting::Secret(Secret::new("line\nbreak-secret")),
            )
            .unwrap_err();
        assert!(matches!(err, PolicyError::HeaderValue { .. }));
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(err.to_string().contains("X-Key"), "{err}");
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
