//! The rules of Roadie's providers, shared by the server and the worker:
//! what a provider is ([`ProviderPolicy`]), which URLs fall under it
//! ([`resolve_url`], normalised so the result can serve as the cache key),
//! which addresses it may reach ([`is_forbidden`], [`check_address`]), and
//! why a fetch is refused ([`Refusal`]), and the one list of providers that
//! are on, each with its rate and lifetimes ([`from_settings`]). The server checks a Fetch with them
//! before it enqueues; the worker's HTTP client checks every connection and
//! redirect again with the same functions.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use roadie_config::{ConfigError, Settings};
use roadie_store::Rate;
use url::{Host, Url};

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
    /// Largest body accepted; a larger one is a final failure of the job.
    pub max_body_bytes: usize,
    /// Names of the secret query parameters (`providers.NAME.secret_query`):
    /// [`resolve_url`] drops them from every URL, so no cache key, job or
    /// log line carries one.
    pub secret_query_names: Vec<String>,
    /// Their values, where the request is built (the worker): added to the
    /// outgoing URL only, by [`ProviderPolicy::request_url`].
    pub secret_query: Vec<(String, Secret)>,
    /// Secret path segments (`providers.NAME.secret_path`): the base URL
    /// holds `{NAME}` as a whole segment, which stays in every cache key and
    /// job; [`ProviderPolicy::request_url`] puts the value there on the wire
    /// only. Filled where the request is built (the worker).
    pub secret_path: Vec<SecretSegment>,
}

/// What a path segment escapes (the URL standard's path-segment set).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%');

/// One secret path segment: where it is in the base URL's path, its
/// placeholder's name, and its value.
#[derive(Debug, Clone)]
pub struct SecretSegment {
    /// Index of the segment in the base URL's path.
    pub index: usize,
    /// NAME of the `{NAME}` placeholder.
    pub name: String,
    /// The value put on the wire.
    pub value: Secret,
}

/// The index of the `{name}` segment in `base`'s path, if it has one.
pub fn placeholder_index(base: &Url, name: &str) -> Option<usize> {
    let placeholder = format!("%7B{name}%7D");
    base.path_segments()?
        .position(|segment| segment == placeholder || segment == format!("{{{name}}}"))
}

impl ProviderPolicy {
    /// Timeout used by [`ProviderPolicy::new`] (the providers' default; MusicBrainz's is 15 s).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Body limit used by [`ProviderPolicy::new`] (the default `limits.max_value_bytes`).
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
            secret_query_names: Vec::new(),
            secret_query: Vec::new(),
            secret_path: Vec::new(),
        }
    }

    /// The URL to put on the wire for `url` (one [`resolve_url`] gave):
    /// `url` with the secret query parameters added. Never log it.
    pub fn request_url(&self, url: &Url) -> Url {
        let mut wire = url.clone();
        if !self.secret_path.is_empty() {
            let path: Vec<String> = wire
                .path()
                .split('/')
                .enumerate()
                .map(|(at, segment)| {
                    // `at` counts the empty piece before the leading '/'.
                    let index = at.wrapping_sub(1);
                    match self.secret_path.iter().find(|secret| {
                        secret.index == index && segment == format!("%7B{}%7D", secret.name)
                    }) {
                        Some(secret) => {
                            utf8_percent_encode(secret.value.expose(), SEGMENT).to_string()
                        }
                        None => segment.to_owned(),
                    }
                })
                .collect();
            wire.set_path(&path.join("/"));
        }
        if !self.secret_query.is_empty() {
            let mut pairs = wire.query_pairs_mut();
            for (name, value) in &self.secret_query {
                pairs.append_pair(name, value.expose());
            }
        }
        wire
    }

    /// `url` (an answer's Location, say) with every secret the provider
    /// knows put back as its placeholder (path segments) or dropped (query
    /// parameters), fit for a log line, a job's error or a cache key.
    pub fn conceal(&self, url: &Url) -> Url {
        let mut shown = url.clone();
        if !self.secret_path.is_empty() {
            let path: Vec<String> = shown
                .path()
                .split('/')
                .map(|segment| {
                    let decoded = percent_decode_str(segment).decode_utf8_lossy();
                    match self
                        .secret_path
                        .iter()
                        .find(|secret| secret.value.expose() == decoded)
                    {
                        Some(secret) => format!("%7B{}%7D", secret.name),
                        None => segment.to_owned(),
                    }
                })
                .collect();
            shown.set_path(&path.join("/"));
        }
        drop_secret_query(&mut shown, &self.secret_query_names);
        shown
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
        "{host} ({addr}) is {}, which the provider may not reach (providers.NAME.allow_private)",
        range_name(*addr)
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
    // `//host/x` (or the same with backslashes, which URLs read as slashes)
    // is a reference to another host, not a path: refused, never rewritten
    // into a path below the base.
    if ["//", "\\\\", "/\\", "\\/"]
        .iter()
        .any(|p| path_or_url.starts_with(p))
    {
        return Err(Refusal::BadUrl(format!(
            "{:?} begins with two slashes: a reference to another host, not a path",
            path_or_url.chars().take(64).collect::<String>()
        )));
    }
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
    // The worker adds these; a client's own value is dropped, so no key,
    // job or log line carries it.
    drop_secret_query(&mut url, &policy.secret_query_names);
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

/// How long a host that passed [`check_address`] is taken to pass it
/// still, by [`CheckedHosts`].
pub const CHECKED_HOST_TTL: Duration = Duration::from_secs(60);

/// Hosts that passed [`check_address`] lately, each for
/// [`CHECKED_HOST_TTL`]: a caller that must know before it acts (a waited
/// Fetch that reads its entry and enqueues its job in one statement) can
/// tell without resolving the host, and without making a cache hit wait
/// for a lookup. The worker checks every address it connects to in any
/// case, so a host that moved to a private address within the TTL is
/// still refused there.
#[derive(Debug, Clone)]
pub struct CheckedHosts {
    passed: moka::sync::Cache<String, ()>,
}

impl Default for CheckedHosts {
    fn default() -> CheckedHosts {
        CheckedHosts {
            passed: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CHECKED_HOST_TTL)
                .build(),
        }
    }
}

impl CheckedHosts {
    /// [`check_address`], remembering a host that passed.
    pub async fn check(&self, policy: &ProviderPolicy, url: &Url) -> Result<(), Refusal> {
        check_address(policy, url).await?;
        if let Some(Host::Domain(host)) = url.host() {
            self.passed.insert(host.to_owned(), ());
        }
        Ok(())
    }

    /// Whether `url` is known to pass [`check_address`] without a lookup:
    /// an address or a policy that needs none, or a host that passed within
    /// [`CHECKED_HOST_TTL`].
    pub fn passes(&self, policy: &ProviderPolicy, url: &Url) -> bool {
        if check_literal_host(policy, url).is_err() {
            return false;
        }
        match url.host() {
            Some(Host::Domain(host)) if !policy.allow_private => self.passed.contains_key(host),
            _ => true,
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
/// Drops the query parameters named in `names` from `url`.
fn drop_secret_query(url: &mut Url, names: &[String]) {
    if names.is_empty() || url.query().is_none() {
        return;
    }
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(name, _)| !names.iter().any(|s| s == name))
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    url.set_query(None);
    if !kept.is_empty() {
        url.query_pairs_mut().extend_pairs(kept);
    }
}

fn hides_dot_segment(segment: &str) -> bool {
    let decoded = segment
        .to_ascii_lowercase()
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace("%2e", ".");
    decoded.contains('/') && decoded.split(['/', '\\']).any(|p| p == "." || p == "..")
}

/// Hosts given as IP literals never reach the DNS resolver, so they are
/// checked here, on every hop.
pub fn check_literal_host(policy: &ProviderPolicy, url: &Url) -> Result<(), Refusal> {
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

/// Every range no provider may reach unless it allows private addresses,
/// with what it is: one table, checked on every address a provider's host
/// resolves to (the worker's resolver, so every redirect too) and on
/// literal hosts. IPv4 addresses embedded in IPv6 (mapped `::ffff:a.b.c.d`
/// and NAT64 `64:ff9b::a.b.c.d`) are checked as the IPv4 address they carry.
const FORBIDDEN_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, and broadcast"),
    (
        "::/96",
        "unspecified, loopback and IPv4-compatible (deprecated)",
    ),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001:2::/48", "benchmarking"),
    ("2001:10::/28", "ORCHID (deprecated)"),
    ("2001:20::/28", "ORCHIDv2"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

/// [`FORBIDDEN_RANGES`], parsed once.
static FORBIDDEN: std::sync::LazyLock<Vec<(IpNet, &'static str)>> =
    std::sync::LazyLock::new(|| {
        FORBIDDEN_RANGES
            .iter()
            .filter_map(|&(range, what)| Some((range.parse().ok()?, what)))
            .collect()
    });

/// IPv6 prefixes whose last 32 bits are an IPv4 address that the network
/// reaches: mapped (`::ffff:0:0/96`) and the well-known NAT64 prefix
/// (`64:ff9b::/96`, public IPv4 as seen from an IPv6-only network).
fn embedded_v4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = addr.segments();
    let mapped = segments[..5].iter().all(|&s| s == 0) && segments[5] == 0xffff;
    let nat64 = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (mapped || nat64).then(|| Ipv4Addr::from_bits(addr.to_bits() as u32))
}

/// "in 10.0.0.0/8 (private)", for refusals.
fn range_name(addr: IpAddr) -> String {
    match forbidden_range(addr) {
        Some((range, what)) => format!("in {range} ({what})"),
        None => "a forbidden address".to_owned(),
    }
}

/// The forbidden range `addr` falls in, and what that range is; `None` for
/// an address a provider may reach.
pub fn forbidden_range(addr: IpAddr) -> Option<(IpNet, &'static str)> {
    let addr = match addr {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    FORBIDDEN
        .iter()
        .find(|(range, _)| range.contains(&addr))
        .copied()
}

/// Whether no provider may reach `addr` unless it allows private addresses
/// (see [`FORBIDDEN_RANGES`]).
pub fn is_forbidden(addr: IpAddr) -> bool {
    forbidden_range(addr).is_some()
}

/// A provider as both binaries use it: the rules of its URLs and addresses,
/// its limit for the whole deployment, and how long what it answers lives.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Base URL, headers, timeout, address rules, body limit.
    pub policy: ProviderPolicy,
    /// Lifetime of a successful response.
    pub success_ttl: Duration,
    /// Lifetime of a cached 404.
    pub negative_ttl: Duration,
    /// The provider's limit for the whole deployment; `None`: unlimited.
    pub rate: Option<Rate>,
}

/// Every provider of `settings` that is on, by name: the one place that
/// decides whether a provider is usable, and builds its policy, rate and
/// lifetimes. A provider with an empty `base_url` is off and not listed; a
/// `base_url` that is set but unusable is a configuration error naming the
/// setting (`Settings::validate` finds it at load). Headers are the
/// worker's to add: the server sends no requests and holds no secrets.
pub fn from_settings(settings: &Settings) -> Result<BTreeMap<String, Provider>, ConfigError> {
    let mut providers = BTreeMap::new();
    for (name, provider) in &settings.providers {
        let base = provider.base().map_err(|message| ConfigError {
            setting: format!("providers.{name}.base_url"),
            message: message.to_owned(),
        })?;
        let Some(base_url) = base else {
            continue;
        };
        let mut policy = ProviderPolicy::new(name.clone(), base_url);
        policy.timeout = provider.timeout;
        policy.allow_private = provider.allow_private;
        policy.secret_query_names = provider.secret_query.keys().cloned().collect();
        policy.max_body_bytes = match provider.max_body_bytes {
            0 => settings.limits.max_value_bytes,
            bytes => bytes,
        };
        providers.insert(
            name.clone(),
            Provider {
                policy,
                success_ttl: provider.success_ttl,
                negative_ttl: provider.negative_ttl,
                rate: Some(Rate::new(provider.rate_per_second, provider.burst)),
            },
        );
    }
    Ok(providers)
}

/// Why `name` cannot be fetched from, when it is not among the providers
/// that are on: unknown, or configured but off.
pub fn unavailable(settings: &Settings, name: &str, quoted: &str) -> String {
    if settings.providers.contains_key(name) {
        format!("provider {quoted} is off: set providers.{name}.base_url to fetch from it")
    } else {
        format!("unknown provider {quoted}")
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
        resolve_url(&policy(base), input).map(String::from)
    }

    const MB: &str = "https://musicbrainz.org/ws/2/";

    #[tokio::test]
    async fn a_host_passes_without_a_lookup_only_after_its_check_passed() {
        let hosts = CheckedHosts::default();
        let strict = policy(MB);
        let url = |s: &str| Url::parse(s).unwrap();
        // Literal addresses need no lookup: decided at once.
        assert!(hosts.passes(&strict, &url("http://93.184.216.34/x")));
        assert!(!hosts.passes(&strict, &url("http://10.0.0.1/x")));
        // A name is known only once its check passed.
        let unknown = url("http://no-such-host.invalid/x");
        assert!(!hosts.passes(&strict, &unknown));
        hosts.check(&strict, &unknown).await.unwrap();
        assert!(
            hosts.passes(&strict, &unknown),
            "a name that does not resolve is the worker's to report"
        );
        // One that resolves to loopback fails its check and stays unknown.
        let local = url("http://localhost/x");
        assert!(hosts.check(&strict, &local).await.is_err());
        assert!(!hosts.passes(&strict, &local));
        // A provider that may reach private addresses needs no check.
        let open = ProviderPolicy {
            allow_private: true,
            ..policy(MB)
        };
        assert!(hosts.passes(&open, &local));
    }

    #[test]
    fn a_path_joins_below_the_base() {
        let want = "https://musicbrainz.org/ws/2/artist/x?fmt=json";
        assert_eq!(resolve(MB, "artist/x?fmt=json").unwrap(), want);
        assert_eq!(resolve(MB, "/artist/x?fmt=json").unwrap(), want);
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
            "//evil.example/x",
            "\\\\evil.example\\x",
            "/\\evil.example/x",
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
        // A scheme-relative reference names another host: refused, not
        // rewritten into a path (which made `//evil.org/x` and `evil.org/x`
        // one cache key).
        assert!(matches!(
            resolve(MB, "//evil.org/x"),
            Err(Refusal::BadUrl(_))
        ));
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
    fn secret_query_parameters_are_only_on_the_wire() {
        let mut p = policy("https://ws.audioscrobbler.com/2.0/");
        p.secret_query_names = vec!["api_key".to_owned()];
        p.secret_query = vec![("api_key".to_owned(), Secret::new("s3cr3t"))];
        // A client's own value is dropped from the key; other parameters stay.
        let key = resolve_url(&p, "?method=artist.getinfo&api_key=mine&artist=Cher").unwrap();
        assert_eq!(
            key.as_str(),
            "https://ws.audioscrobbler.com/2.0/?method=artist.getinfo&artist=Cher"
        );
        let only = resolve_url(&p, "x?api_key=mine").unwrap();
        assert_eq!(only.as_str(), "https://ws.audioscrobbler.com/2.0/x");
        assert_eq!(
            p.request_url(&key).as_str(),
            "https://ws.audioscrobbler.com/2.0/?method=artist.getinfo&artist=Cher&api_key=s3cr3t"
        );
        assert!(!format!("{p:?}").contains("s3cr3t"));
    }

    #[test]
    fn secret_path_segments_are_only_on_the_wire() {
        let base = Url::parse("https://api.example/v1/{key}/").expect("base");
        assert_eq!(placeholder_index(&base, "key"), Some(1));
        assert_eq!(placeholder_index(&base, "other"), None);
        let mut p = ProviderPolicy::new("p", base);
        p.secret_path = vec![SecretSegment {
            index: 1,
            name: "key".to_owned(),
            value: Secret::new("s3cr3t"),
        }];
        let key = resolve_url(&p, "artist/1?fmt=json").expect("resolved");
        assert_eq!(
            key.as_str(),
            "https://api.example/v1/%7Bkey%7D/artist/1?fmt=json"
        );
        let wire = p.request_url(&key);
        assert_eq!(
            wire.as_str(),
            "https://api.example/v1/s3cr3t/artist/1?fmt=json"
        );
        // A client's own `{key}` segment further down is not filled in.
        let deeper = resolve_url(&p, "x/%7Bkey%7D").expect("resolved");
        assert!(!p.request_url(&deeper).as_str().ends_with("s3cr3t"));
        // An echo of the wire URL (a redirect) is concealed again.
        assert_eq!(p.conceal(&wire).as_str(), key.as_str());
        assert!(!format!("{p:?}").contains("s3cr3t"));
    }

    #[test]
    fn the_range_table_parses_whole() {
        assert_eq!(FORBIDDEN.len(), FORBIDDEN_RANGES.len());
    }

    /// One address inside every range of the table, and its IPv4-mapped
    /// and NAT64 forms for the IPv4 ranges.
    #[test]
    fn every_forbidden_range_is_refused() {
        let cases = [
            ("0.1.2.3", "0.0.0.0/8"),
            ("0.0.0.0", "0.0.0.0/8"),
            ("10.1.2.3", "10.0.0.0/8"),
            ("100.64.0.1", "100.64.0.0/10"),
            ("100.127.255.255", "100.64.0.0/10"),
            ("127.255.0.9", "127.0.0.0/8"),
            ("169.254.169.254", "169.254.0.0/16"),
            ("172.31.255.255", "172.16.0.0/12"),
            ("192.0.0.170", "192.0.0.0/24"),
            ("192.0.2.1", "192.0.2.0/24"),
            ("192.88.99.1", "192.88.99.0/24"),
            ("192.168.1.1", "192.168.0.0/16"),
            ("198.18.0.1", "198.18.0.0/15"),
            ("198.19.255.255", "198.18.0.0/15"),
            ("198.51.100.7", "198.51.100.0/24"),
            ("203.0.113.9", "203.0.113.0/24"),
            ("224.0.0.1", "224.0.0.0/4"),
            ("240.0.0.1", "240.0.0.0/4"),
            ("255.255.255.255", "240.0.0.0/4"),
            ("::", "::/96"),
            ("::1", "::/96"),
            ("::127.0.0.1", "::/96"),
            ("::8.8.8.8", "::/96"),
            ("64:ff9b:1::1", "64:ff9b:1::/48"),
            ("100::1", "100::/64"),
            ("2001::1", "2001::/32"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32"),
            ("2001:2::1", "2001:2::/48"),
            ("2001:10::1", "2001:10::/28"),
            ("2001:20::1", "2001:20::/28"),
            ("2001:db8::1", "2001:db8::/32"),
            ("2002:c0a8:101::1", "2002::/16"),
            ("2002:808:808::1", "2002::/16"),
            ("3fff::1", "3fff::/20"),
            ("fc00::1", "fc00::/7"),
            ("fd12:3456::1", "fc00::/7"),
            ("fe80::1", "fe80::/10"),
            ("febf::1", "fe80::/10"),
            ("fec0::1", "fec0::/10"),
            ("ff02::1", "ff00::/8"),
        ];
        let mut covered = std::collections::BTreeSet::new();
        for (addr, range) in cases {
            let ip: IpAddr = addr.parse().unwrap();
            let found = forbidden_range(ip).map(|(net, _)| net.to_string());
            assert_eq!(found.as_deref(), Some(range), "{addr}");
            covered.insert(range);
            if let IpAddr::V4(v4) = ip {
                for embedded in [
                    v4.to_ipv6_mapped(),
                    Ipv6Addr::from_bits((0x0064_ff9b_u128 << 96) | u128::from(v4.to_bits())),
                ] {
                    let found =
                        forbidden_range(IpAddr::V6(embedded)).map(|(net, _)| net.to_string());
                    assert_eq!(
                        found.as_deref(),
                        Some(range),
                        "{embedded} (carrying {addr})"
                    );
                }
            }
        }
        let table: std::collections::BTreeSet<&str> =
            FORBIDDEN_RANGES.iter().map(|(range, _)| *range).collect();
        assert_eq!(covered, table, "a range of the table has no case");
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
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "2a00:1450::1",
            "2001:200::1",
            // Public IPv4, mapped and through NAT64: reachable.
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(
                !is_forbidden(ip),
                "{addr} refused: {:?}",
                forbidden_range(ip)
            );
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
}
