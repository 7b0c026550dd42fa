//! The deployment's one typed configuration, read by `roadie-server` and
//! `roadie-worker` alike: defaults, then a TOML file (`--config FILE`), then
//! `ROADIE__SECTION__KEY` environment variables. Loaded once, before any
//! port is bound; every error names the setting at fault. Both binaries
//! depend on this crate; the store knows only its connection options
//! ([`StoreSettings::options`]).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

mod auth;
mod server;

pub use auth::{AuthSettings, Role, TokenSettings};
pub use server::{Reflection, ServerSettings, TlsSettings, TransportSettings};

/// A configuration error, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {message}")]
pub struct ConfigError {
    /// Dotted name of the setting, for example `policies.generic.ttl`.
    pub setting: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// Everything `roadie-server` reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[server]`: the gRPC listener.
    pub server: ServerSettings,
    /// `[store]`: the database.
    pub store: StoreSettings,
    /// `[limits]`: request limits.
    pub limits: Limits,
    /// `[maintenance]`: expiry clean-up, eviction and access statistics.
    pub maintenance: MaintenanceSettings,
    /// `[policies.NAME]`: entry policies.
    pub policies: BTreeMap<String, Policy>,
    /// `[providers.NAME]`: upstream APIs.
    pub providers: BTreeMap<String, Provider>,
    /// `[events]`: how library events become invalidations.
    pub events: EventSettings,
    /// `[worker]`: the fetch workers.
    pub worker: WorkerSettings,
    /// `[jobs]`: the job queue.
    pub jobs: JobSettings,
    /// `[watch]`: the change stream and how long its history is kept.
    pub watch: WatchSettings,
    /// `[hot_tier]`: the server's in-memory copy of hot entries.
    pub hot_tier: HotTierSettings,
    /// `[log]`: what the process logs and how.
    pub log: LogSettings,
    /// `[admin]`: the operator's HTTP port (metrics, liveness, readiness).
    pub admin: AdminSettings,
    /// `[auth]`: who may call what.
    pub auth: AuthSettings,
    /// `[snapshots]`: library snapshots.
    pub snapshots: SnapshotSettings,
}

/// `[snapshots]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSettings {
    /// How long a snapshot stays valid once the library has changed since
    /// it was taken (while the library has not changed it stays valid at any
    /// age). A reader may name its own.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most tracks one snapshot may hold, after a whole write or a merge.
    pub max_tracks: u64,
}

impl Default for SnapshotSettings {
    fn default() -> SnapshotSettings {
        SnapshotSettings {
            max_age: Duration::from_secs(DAY),
            max_tracks: 1_000_000,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` for people, `json` (one object per line, with `trace_id` and
    /// `span_id`) for collectors.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `roadie_worker=debug,info`); `RUST_LOG`
    /// overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[admin]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Where `/metrics`, `/livez` and `/readyz` are served over HTTP; off
    /// when unset. Each process needs a port of its own
    /// (`ROADIE__ADMIN__LISTEN`).
    pub listen: Option<SocketAddr>,
    /// How often the server refreshes the metrics only the store knows
    /// (queue depth, the oldest available job, entries and bytes by policy,
    /// paused providers, rate-limit waits), while anything reads metrics.
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
}

impl Default for AdminSettings {
    fn default() -> AdminSettings {
        AdminSettings {
            listen: None,
            sample_interval: Duration::from_secs(10),
        }
    }
}

/// `[watch]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchSettings {
    /// How long a watcher may go without a message before it gets a
    /// progress message with the current revision.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Changes a watcher may fall behind the server's tail of the log before
    /// it is cut off with RESOURCE_EXHAUSTED (it resumes from its revision).
    /// Also the size of the one in-memory ring every watcher reads from.
    pub buffer: usize,
    /// SQLite: how often a server, and an idle worker, check
    /// `PRAGMA data_version` for commits by other processes.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Postgres: how often the server reads the log without a notification,
    /// in case one was lost.
    #[serde(with = "humantime_serde")]
    pub fallback_poll: Duration,
    /// Changes older than this are compacted away.
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
    /// At most this many of the latest changes are kept.
    pub retention_count: u64,
    /// Most Watch streams one client (one remote IP address) may hold open
    /// on a server; past it, Watch answers RESOURCE_EXHAUSTED.
    pub max_per_client: u32,
}

impl Default for WatchSettings {
    fn default() -> WatchSettings {
        WatchSettings {
            progress_interval: Duration::from_secs(5),
            buffer: 4096,
            poll_interval: Duration::from_millis(5),
            fallback_poll: Duration::from_millis(250),
            retention_age: Duration::from_secs(DAY),
            retention_count: 1_000_000,
            max_per_client: 1000,
        }
    }
}

/// `[hot_tier]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HotTierSettings {
    /// Whether `Get` and `BatchGet` answer from memory when they can.
    pub enabled: bool,
    /// Memory the hot tier may hold: keys, values and metadata, in bytes.
    pub max_bytes: u64,
    /// The staleness bound: the hot tier answers only while the server's
    /// tail of the change log has confirmed, within this long, that it has
    /// applied every committed change; otherwise reads go to the store.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
}

impl Default for HotTierSettings {
    fn default() -> HotTierSettings {
        HotTierSettings {
            enabled: true,
            max_bytes: 256 * MIB,
            max_lag: Duration::from_secs(1),
        }
    }
}

/// `[worker]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Jobs one worker process runs at once.
    pub concurrency: u32,
    /// How long a claimed job stays leased without a heartbeat; a worker
    /// that dies leaves its jobs claimable again after this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often held leases are renewed; well under `lease`.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How often an idle worker looks for jobs; also the longest a busy
    /// worker goes without reading the list of due work.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// First retry delay after a transient failure; doubles per attempt, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// After SIGTERM, how long in-flight jobs may finish before they are
    /// cancelled and their leases handed back.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// User-Agent sent upstream unless a provider sets its own.
    pub user_agent: String,
}

/// `[jobs]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Attempts before a job fails.
    pub max_attempts: u32,
    /// How long completed jobs are kept.
    #[serde(with = "humantime_serde")]
    pub keep_completed: Duration,
    /// How long failed and cancelled jobs are kept.
    #[serde(with = "humantime_serde")]
    pub keep_failed: Duration,
}

impl Default for WorkerSettings {
    fn default() -> WorkerSettings {
        WorkerSettings {
            concurrency: 8,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(20),
            user_agent: concat!(
                "Roadie/",
                env!("CARGO_PKG_VERSION"),
                " (+https://example.invalid/roadie)"
            )
            .to_owned(),
        }
    }
}

impl Default for JobSettings {
    fn default() -> JobSettings {
        JobSettings {
            max_attempts: 5,
            keep_completed: Duration::from_secs(DAY),
            keep_failed: Duration::from_secs(7 * DAY),
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `sqlite://PATH` (created when missing) or `postgres://USER@HOST:PORT/DB`.
    pub url: String,
    /// Pooled connections.
    pub max_connections: u32,
    /// How long a call waits for a connection before answering UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long SQLite waits for another process's write lock.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// SQLite: the size in bytes the write-ahead log is cut back to after
    /// each checkpoint (`PRAGMA journal_size_limit`). Maintenance checkpoints
    /// and truncates it on start and every `maintenance.interval`.
    pub wal_size_limit: u64,
    /// `auto`: every binary applies pending migrations at start; `off`:
    /// only `roadie-server migrate` does (a Kubernetes Job, an init
    /// container), and a binary facing a schema without them refuses to start.
    pub migrate: Migrate,
    /// How long a server or worker keeps trying a store it cannot reach at
    /// start (so compose and Kubernetes may start it before the database),
    /// logging each attempt.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Values of a compressible media type (JSON, XML, text) at least this
    /// long are stored zstd-compressed when that makes them smaller; 0
    /// stores every value as written.
    pub compress_min_bytes: usize,
    /// zstd's level, 1 (fastest) to 19 (smallest).
    pub compress_level: i32,
    /// The most entry writes one transaction takes: every Put waiting at a
    /// moment is committed together (one revision lock, one commit). Job
    /// enqueues are grouped the same way, into one statement, and so are a
    /// worker's finished jobs, into one finishing transaction.
    pub write_batch: usize,
    /// How long a write (or an enqueue, or a worker's finished job) waits
    /// for others to share its commit when fewer than `write_batch` are
    /// waiting; 0 (the default) takes what is there, which costs a lone
    /// writer nothing.
    #[serde(with = "humantime_serde")]
    pub write_wait: Duration,
}

/// The default policy: entries written without one.
pub const GENERIC_POLICY: &str = "generic";
/// The policy of fetched entries when the Fetch names none.
pub const API_METADATA_POLICY: &str = "api_metadata";
/// The policy of the NEGATIVE entry a lookup that failed for good leaves.
pub const FAILED_LOOKUP_POLICY: &str = "failed_lookup";

/// When an entry written at `now` (milliseconds since the epoch) under a
/// configured lifetime expires. In every TTL setting (`policies.*.ttl`,
/// `providers.*.success_ttl`, `.negative_ttl`) `0s` means never expires:
/// `None`.
pub fn expires_at(now: i64, ttl: Duration) -> Option<i64> {
    if ttl.is_zero() {
        return None;
    }
    Some(now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
}

impl Settings {
    /// The server's rule for a port beyond loopback (see
    /// [`ServerSettings::check_exposure`]), with the tokens as one guard.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        self.server.check_exposure(!self.auth.tokens.is_empty())
    }

    /// The settings as they may be shown (`--print-config`, logs): the store
    /// URL's password replaced. Secret header values never live here (only
    /// the names of the variables that hold them).
    pub fn redacted(&self) -> Settings {
        let mut shown = self.clone();
        shown.store.url = roadie_store::redact(&self.store.url);
        shown
    }
}

impl StoreSettings {
    /// The options to open the store with.
    pub fn options(&self) -> roadie_store::StoreOptions {
        roadie_store::StoreOptions {
            url: self.url.clone(),
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
            busy_timeout: self.busy_timeout,
            wal_size_limit: self.wal_size_limit,
            migrate: self.migrate == Migrate::Auto,
            connect_timeout: self.connect_timeout,
            compression: (self.compress_min_bytes > 0).then_some(roadie_store::Compression {
                min_bytes: self.compress_min_bytes,
                level: self.compress_level,
            }),
            batching: roadie_store::Batching {
                max_batch: self.write_batch,
                max_wait: self.write_wait,
            },
        }
    }
}

/// `store.migrate`: who applies the schema's migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Migrate {
    /// Every binary applies pending migrations when it starts.
    #[default]
    Auto,
    /// Only `roadie-server migrate` does; a binary facing a schema without
    /// them refuses to start.
    Off,
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest value accepted by Put, in bytes. The gRPC message limit is
    /// derived from it.
    pub max_value_bytes: usize,
    /// Most keys in one BatchGet.
    pub max_batch_keys: usize,
}

/// `[maintenance]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSettings {
    /// How often expired entries are cleaned and budgets enforced.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long an expired entry is kept, so readers may still take it stale.
    #[serde(with = "humantime_serde")]
    pub keep_stale: Duration,
    /// How often read statistics (for eviction) are written to the store.
    #[serde(with = "humantime_serde")]
    pub access_flush_interval: Duration,
}

/// How entries of a policy are invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invalidation {
    /// By TTL only.
    Time,
    /// By library events only (the TTL is a backstop).
    Event,
    /// By a differing fingerprint on read.
    Fingerprint,
    /// By events and by TTL.
    Hybrid,
}

impl Invalidation {
    /// True when library events may invalidate entries of this strategy.
    pub fn follows_events(self) -> bool {
        matches!(self, Invalidation::Event | Invalidation::Hybrid)
    }
}

/// `[policies.NAME]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Lifetime of a fresh entry; `0s` means entries never expire.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// The invalidation strategy.
    pub invalidation: Invalidation,
    /// Size budget in bytes; past it, least valuable entries are evicted.
    pub max_bytes: u64,
    /// Eviction stops at this fraction of the budget.
    pub cleanup_threshold: f64,
}

/// `[providers.NAME]`: an upstream API the worker may fetch from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Provider {
    /// Every fetched URL must fall under this one. Empty: the provider is
    /// off (nothing is fetched from it, and Fetch says how to turn it on).
    pub base_url: String,
    /// Requests per second for the whole deployment.
    pub rate_per_second: f64,
    /// Requests that may go at once after an idle spell.
    pub burst: u32,
    /// Upstream request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Lifetime of a successful response.
    #[serde(with = "humantime_serde")]
    pub success_ttl: Duration,
    /// Lifetime of a cached 404.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Whether the base URL may resolve to private or loopback addresses.
    pub allow_private: bool,
    /// Headers sent with every request, for example a User-Agent.
    pub headers: BTreeMap<String, String>,
    /// Secret headers: header name → the NAME of an environment variable
    /// holding the value (API keys); values are never logged.
    pub secret_headers: BTreeMap<String, String>,
    /// Secret query parameters: parameter name → the NAME of an environment
    /// variable holding the value (Last.fm's `api_key`). Added by the worker
    /// to the outgoing request only: never part of the cache key, the job,
    /// a log line or a span; a client's own value for one is dropped.
    pub secret_query: BTreeMap<String, String>,
    /// Secret path segments: NAME → the NAME of an environment variable
    /// holding the value, for APIs that take a key in the path. `base_url`
    /// holds `{NAME}` as a whole segment, which stays in every cache key and
    /// job; the worker puts the value there in the outgoing request only.
    pub secret_path: BTreeMap<String, String>,
    /// Largest response body accepted, in bytes; 0 means `limits.max_value_bytes`.
    pub max_body_bytes: usize,
}

/// Which library event a rule reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A track was added.
    TrackAdded,
    /// A track was removed.
    TrackRemoved,
    /// A track's tags changed.
    TrackModified,
    /// A track's fingerprint changed.
    FingerprintChanged,
    /// The library was synchronised.
    LibrarySync,
    /// A user asked for an invalidation.
    ManualInvalidation,
}

/// What a rule does when none of its tags could be filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unscoped {
    /// Nothing: the event lacked what the rule needs.
    #[default]
    Skip,
    /// Invalidate the whole of each selected policy.
    All,
}

/// `[[events.rules]]`: one event → invalidation rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    /// The event this rule reacts to.
    pub on: EventKind,
    /// Policies whose entries it invalidates.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Also every policy whose invalidation strategy is one of these.
    #[serde(default)]
    pub strategies: Vec<Invalidation>,
    /// Tag templates scoping the invalidation; `{track}`, `{artist}`,
    /// `{album}`, `{old_artist}`, `{old_album}` are filled from the event and
    /// a template with an empty placeholder is dropped. Empty: whole policies.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Use only the first template that could be filled in.
    #[serde(default)]
    pub first_tag_only: bool,
    /// What to do when templates were given but none could be filled in.
    #[serde(default)]
    pub if_unscoped: Unscoped,
}

/// `[events]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// The rules, applied in order; only policies whose invalidation follows
    /// events (`event` or `hybrid`) are ever touched.
    pub rules: Vec<EventRule>,
}

const MIB: u64 = 1024 * 1024;
const DAY: u64 = 24 * 60 * 60;
/// Ten years as humantime counts them (365.25 days a year), so the default
/// prints back as "10years".
const TEN_YEARS: u64 = 315_576_000;

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            server: ServerSettings::default(),
            store: StoreSettings::default(),
            limits: Limits::default(),
            maintenance: MaintenanceSettings::default(),
            policies: default_policies(),
            providers: default_providers(),
            events: EventSettings::default(),
            worker: WorkerSettings::default(),
            jobs: JobSettings::default(),
            watch: WatchSettings::default(),
            hot_tier: HotTierSettings::default(),
            log: LogSettings::default(),
            admin: AdminSettings::default(),
            auth: AuthSettings::default(),
            snapshots: SnapshotSettings::default(),
        }
    }
}

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings {
            url: "sqlite://./data/roadie.db".to_owned(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            busy_timeout: Duration::from_secs(5),
            wal_size_limit: roadie_store::WAL_SIZE_LIMIT,
            migrate: Migrate::Auto,
            connect_timeout: Duration::from_secs(60),
            compress_min_bytes: roadie_store::Compression::default().min_bytes,
            compress_level: roadie_store::Compression::default().level,
            write_batch: roadie_store::Batching::default().max_batch,
            write_wait: roadie_store::Batching::default().max_wait,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_value_bytes: 8 * 1024 * 1024,
            max_batch_keys: 1000,
        }
    }
}

impl Default for MaintenanceSettings {
    fn default() -> MaintenanceSettings {
        MaintenanceSettings {
            interval: Duration::from_secs(60),
            keep_stale: Duration::from_secs(DAY),
            access_flush_interval: Duration::from_secs(30),
        }
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            ttl: Duration::from_secs(300),
            invalidation: Invalidation::Time,
            max_bytes: 30 * MIB,
            cleanup_threshold: 0.8,
        }
    }
}

impl Provider {
    /// The base URL when the provider is on: `Ok(None)` for an empty
    /// `base_url` (the provider is off), `Err` saying what is wrong when it
    /// is set but names no http(s) host. The one rule of a usable provider,
    /// for validation here and for `roadie_providers::from_settings`.
    pub fn base(&self) -> Result<Option<url::Url>, &'static str> {
        if self.base_url.is_empty() {
            return Ok(None);
        }
        url::Url::parse(&self.base_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .map(Some)
            .ok_or("must be an http:// or https:// URL with a host (or empty: the provider is off)")
    }
}

impl Default for Provider {
    fn default() -> Provider {
        Provider {
            base_url: String::new(),
            rate_per_second: 1.0,
            burst: 1,
            timeout: Duration::from_secs(30),
            success_ttl: Duration::from_secs(7 * DAY),
            negative_ttl: Duration::from_secs(DAY),
            allow_private: false,
            headers: BTreeMap::new(),
            secret_headers: BTreeMap::new(),
            secret_query: BTreeMap::new(),
            secret_path: BTreeMap::new(),
            max_body_bytes: 0,
        }
    }
}

impl Default for EventSettings {
    fn default() -> EventSettings {
        EventSettings {
            rules: default_rules(),
        }
    }
}

fn default_policies() -> BTreeMap<String, Policy> {
    let policy = |ttl_secs: u64, invalidation, mib: u64| Policy {
        ttl: Duration::from_secs(ttl_secs),
        invalidation,
        max_bytes: mib * MIB,
        cleanup_threshold: 0.8,
    };
    BTreeMap::from([
        (
            "track_metadata".to_owned(),
            policy(TEN_YEARS, Invalidation::Event, 100),
        ),
        (
            API_METADATA_POLICY.to_owned(),
            policy(TEN_YEARS, Invalidation::Event, 30),
        ),
        (
            FAILED_LOOKUP_POLICY.to_owned(),
            policy(3600, Invalidation::Time, 5),
        ),
        (
            "album_year".to_owned(),
            policy(30 * DAY, Invalidation::Hybrid, 20),
        ),
        (
            "negative_result".to_owned(),
            policy(30 * DAY, Invalidation::Time, 10),
        ),
        (
            GENERIC_POLICY.to_owned(),
            policy(300, Invalidation::Time, 30),
        ),
    ])
}

fn default_providers() -> BTreeMap<String, Provider> {
    let provider =
        |base_url: &str, rate_per_second: f64, success_days: u64, negative_secs: u64| Provider {
            base_url: base_url.to_owned(),
            rate_per_second,
            success_ttl: Duration::from_secs(success_days * DAY),
            negative_ttl: Duration::from_secs(negative_secs),
            ..Provider::default()
        };
    let mut providers = BTreeMap::from([
        (
            "musicbrainz".to_owned(),
            provider("https://musicbrainz.org/ws/2/", 1.0, 30, 300),
        ),
        (
            "coverartarchive".to_owned(),
            provider("https://coverartarchive.org/", 1.0, 30, DAY),
        ),
        (
            "discogs".to_owned(),
            provider("https://api.discogs.com/", 55.0 / 60.0, 7, DAY),
        ),
        (
            "lastfm".to_owned(),
            provider("https://ws.audioscrobbler.com/2.0/", 5.0, 7, DAY),
        ),
        (
            "theaudiodb".to_owned(),
            provider("https://www.theaudiodb.com/api/v1/json/", 0.5, 7, DAY),
        ),
        (
            "fanarttv".to_owned(),
            provider("https://webservice.fanart.tv/v3/", 0.5, 30, DAY),
        ),
        (
            "wikimedia".to_owned(),
            provider("https://commons.wikimedia.org/", 10.0, 7, DAY),
        ),
        // "Any CDN": off until a deployment names the CDN's base URL.
        ("images".to_owned(), provider("", 5.0, 14, 3600)),
    ]);
    if let Some(musicbrainz) = providers.get_mut("musicbrainz") {
        musicbrainz.timeout = Duration::from_secs(15);
    }
    providers
}

fn default_rules() -> Vec<EventRule> {
    let rule = |on, policies: &[&str], tags: &[&str]| EventRule {
        on,
        policies: policies.iter().map(|p| (*p).to_owned()).collect(),
        strategies: vec![],
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        first_tag_only: false,
        if_unscoped: Unscoped::Skip,
    };
    vec![
        rule(
            EventKind::TrackRemoved,
            &["track_metadata"],
            &["track:{track}"],
        ),
        rule(
            EventKind::TrackRemoved,
            &["api_metadata"],
            &["artist:{artist}", "album:{artist}/{album}"],
        ),
        rule(
            EventKind::TrackModified,
            &["track_metadata"],
            &["track:{track}"],
        ),
        // The library tool's TRACK_MODIFIED carries the OLD artist/album: the
        // cached API data belongs to what the track was, not what it became.
        rule(
            EventKind::TrackModified,
            &["api_metadata"],
            &["artist:{old_artist}", "album:{old_artist}/{old_album}"],
        ),
        rule(
            EventKind::FingerprintChanged,
            &["track_metadata"],
            &["track:{track}"],
        ),
        rule(EventKind::LibrarySync, &["album_year"], &[]),
        EventRule {
            on: EventKind::ManualInvalidation,
            policies: vec![],
            strategies: vec![Invalidation::Event, Invalidation::Hybrid],
            tags: vec![
                "album:{artist}/{album}".to_owned(),
                "artist:{artist}".to_owned(),
            ],
            first_tag_only: true,
            if_unscoped: Unscoped::All,
        },
    ]
}

/// The placeholders a tag template may use.
pub const PLACEHOLDERS: [&str; 5] = ["track", "artist", "album", "old_artist", "old_album"];

impl Settings {
    /// Loads defaults, then `file` (if any), then `ROADIE__…` variables from
    /// `env` (pass `std::env::vars()` in production), and validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let defaults = config::Config::try_from(&Settings::default())
            .map_err(|e| ConfigError::new("defaults", e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::new(
                    "--config",
                    format!("{} is not a readable file", file.display()),
                ));
            }
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        let env: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("ROADIE__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("ROADIE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let settings: Settings = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError::new(setting_of(&e), e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The `[watch]` and `[hot_tier]` part of [`Settings::validate`].
    fn validate_watch(&self) -> Result<(), ConfigError> {
        let watch = &self.watch;
        for (setting, value) in [
            ("watch.progress_interval", watch.progress_interval),
            ("watch.poll_interval", watch.poll_interval),
            ("watch.fallback_poll", watch.fallback_poll),
            ("watch.retention_age", watch.retention_age),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(setting, "must be longer than 0s"));
            }
        }
        if watch.buffer == 0 || watch.buffer > 1_000_000 {
            return Err(ConfigError::new(
                "watch.buffer",
                "must be between 1 and 1000000",
            ));
        }
        if watch.max_per_client == 0 {
            return Err(ConfigError::new(
                "watch.max_per_client",
                "must be at least 1",
            ));
        }
        if watch.retention_count == 0 {
            return Err(ConfigError::new(
                "watch.retention_count",
                "must be at least 1",
            ));
        }
        let hot = &self.hot_tier;
        if hot.enabled && hot.max_bytes == 0 {
            return Err(ConfigError::new("hot_tier.max_bytes", "must be at least 1"));
        }
        // The tail confirms it is caught up once per poll; the bound must
        // leave room for a few polls or the hot tier would rarely answer.
        let poll = watch.poll_interval.max(watch.fallback_poll);
        if hot.enabled && hot.max_lag < poll * 2 {
            return Err(ConfigError::new(
                "hot_tier.max_lag",
                format!(
                    "must be at least twice the longer of watch.poll_interval and \
                     watch.fallback_poll ({:?})",
                    poll * 2
                ),
            ));
        }
        Ok(())
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.auth.validate()?;
        if roadie_store::Backend::from_url(&self.store.url).is_none() {
            return Err(ConfigError::new(
                "store.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if !(1..=10_000).contains(&self.store.write_batch) {
            return Err(ConfigError::new(
                "store.write_batch",
                "must be between 1 and 10000",
            ));
        }
        if self.store.write_wait > Duration::from_secs(1) {
            return Err(ConfigError::new("store.write_wait", "must be at most 1s"));
        }
        if !(1..=19).contains(&self.store.compress_level) {
            return Err(ConfigError::new(
                "store.compress_level",
                "must be between 1 and 19",
            ));
        }
        if self.store.max_connections == 0 {
            return Err(ConfigError::new(
                "store.max_connections",
                "must be at least 1",
            ));
        }
        if self.limits.max_value_bytes == 0 || self.limits.max_value_bytes > 256 * 1024 * 1024 {
            return Err(ConfigError::new(
                "limits.max_value_bytes",
                "must be between 1 and 268435456",
            ));
        }
        if self.limits.max_batch_keys == 0 || self.limits.max_batch_keys > 100_000 {
            return Err(ConfigError::new(
                "limits.max_batch_keys",
                "must be between 1 and 100000",
            ));
        }
        for (setting, value) in [
            ("maintenance.interval", self.maintenance.interval),
            (
                "maintenance.access_flush_interval",
                self.maintenance.access_flush_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(setting, "must be longer than 0s"));
            }
        }
        if !self.policies.contains_key(GENERIC_POLICY) {
            return Err(ConfigError::new(
                "policies.generic",
                "the default policy must stay configured",
            ));
        }
        for (name, policy) in &self.policies {
            if !is_policy_name(name) {
                return Err(ConfigError::new(
                    format!("policies.{name}"),
                    "names are 1 to 64 of a-z, 0-9 and _",
                ));
            }
            if !(policy.cleanup_threshold > 0.0 && policy.cleanup_threshold <= 1.0) {
                return Err(ConfigError::new(
                    format!("policies.{name}.cleanup_threshold"),
                    "must be greater than 0 and at most 1",
                ));
            }
            if policy.max_bytes == 0 {
                return Err(ConfigError::new(
                    format!("policies.{name}.max_bytes"),
                    "must be at least 1",
                ));
            }
        }
        for (name, provider) in &self.providers {
            let setting = |field: &str| format!("providers.{name}.{field}");
            let base = provider
                .base()
                .map_err(|message| ConfigError::new(setting("base_url"), message))?;
            for segment in provider.secret_path.keys() {
                let placeholder = format!("%7B{segment}%7D");
                let held = base.as_ref().is_some_and(|base| {
                    base.path_segments()
                        .is_some_and(|mut segments| segments.any(|s| s == placeholder))
                });
                if !held {
                    return Err(ConfigError::new(
                        setting(&format!("secret_path.{segment}")),
                        format!("base_url has no {{{segment}}} path segment to fill"),
                    ));
                }
            }
            if !(provider.rate_per_second.is_finite() && provider.rate_per_second > 0.0) {
                return Err(ConfigError::new(
                    setting("rate_per_second"),
                    "must be a positive number",
                ));
            }
            if provider.burst == 0 {
                return Err(ConfigError::new(setting("burst"), "must be at least 1"));
            }
            if provider.timeout.is_zero() {
                return Err(ConfigError::new(
                    setting("timeout"),
                    "must be longer than 0s",
                ));
            }
        }
        let worker = &self.worker;
        if worker.concurrency == 0 || worker.concurrency > 1024 {
            return Err(ConfigError::new(
                "worker.concurrency",
                "must be between 1 and 1024",
            ));
        }
        if worker.lease < Duration::from_secs(1) {
            return Err(ConfigError::new("worker.lease", "must be at least 1s"));
        }
        if worker.heartbeat.is_zero() || worker.heartbeat * 2 > worker.lease {
            return Err(ConfigError::new(
                "worker.heartbeat",
                "must be longer than 0s and at most half of worker.lease",
            ));
        }
        if worker.poll_interval.is_zero() {
            return Err(ConfigError::new(
                "worker.poll_interval",
                "must be longer than 0s",
            ));
        }
        self.validate_watch()?;
        if self.admin.sample_interval.is_zero() {
            return Err(ConfigError::new(
                "admin.sample_interval",
                "must be longer than 0s",
            ));
        }
        if self.jobs.max_attempts == 0 || self.jobs.max_attempts > 100 {
            return Err(ConfigError::new(
                "jobs.max_attempts",
                "must be between 1 and 100",
            ));
        }
        for (i, rule) in self.events.rules.iter().enumerate() {
            let setting = |field: &str| format!("events.rules[{i}].{field}");
            if rule.policies.is_empty() && rule.strategies.is_empty() {
                return Err(ConfigError::new(
                    setting("policies"),
                    "name policies or strategies",
                ));
            }
            for policy in &rule.policies {
                match self.policies.get(policy) {
                    None => {
                        return Err(ConfigError::new(
                            setting("policies"),
                            format!("unknown policy {policy:?}"),
                        ));
                    }
                    Some(p) if !p.invalidation.follows_events() => {
                        return Err(ConfigError::new(
                            setting("policies"),
                            format!(
                                "policy {policy:?} is invalidated by {:?}, not by events",
                                p.invalidation
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
            for tag in &rule.tags {
                if let Some(bad) = unknown_placeholder(tag) {
                    return Err(ConfigError::new(
                        setting("tags"),
                        format!(
                            "unknown placeholder {{{bad}}} in {tag:?}; known: {}",
                            PLACEHOLDERS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Policy and provider names: 1 to 64 of `a-z`, `0-9`, `_`.
pub fn is_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The first `{name}` in `template` that is not a known placeholder.
fn unknown_placeholder(template: &str) -> Option<String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Some(rest[start..].to_owned());
        };
        let name = &rest[start + 1..start + len];
        if !PLACEHOLDERS.contains(&name) {
            return Some(name.to_owned());
        }
        rest = &rest[start + len + 1..];
    }
    None
}

/// The setting a `config` error is about, when it says.
fn setting_of(error: &config::ConfigError) -> String {
    let text = error.to_string();
    match text.rsplit_once("for key `") {
        Some((_, rest)) => rest.split('`').next().unwrap_or("").to_owned(),
        None => match text.split_once("unknown field `") {
            Some((_, rest)) => rest.split('`').next().unwrap_or("").to_owned(),
            None => "configuration".to_owned(),
        },
    }
}

impl fmt::Display for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Invalidation::Time => "time",
            Invalidation::Event => "event",
            Invalidation::Fingerprint => "fingerprint",
            Invalidation::Hybrid => "hybrid",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_design() {
        let settings = Settings::load(None, env(&[])).expect("defaults load");
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(settings.store.url, "sqlite://./data/roadie.db");
        assert_eq!(settings.policies["generic"].ttl, Duration::from_secs(300));
        assert_eq!(settings.policies["track_metadata"].max_bytes, 100 * MIB);
        assert_eq!(
            settings.policies["album_year"].invalidation,
            Invalidation::Hybrid
        );
        assert_eq!(
            settings.providers["musicbrainz"].timeout,
            Duration::from_secs(15)
        );
        assert_eq!(
            settings.providers["discogs"].timeout,
            Duration::from_secs(30)
        );
        assert_eq!(settings.limits.max_batch_keys, 1000);
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("roadie.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:6000\"\n[policies.generic]\nttl = \"1h\"\n[policies.images]\nmax_bytes = 1000\n",
        )
        .expect("write");
        let settings = Settings::load(
            Some(&file),
            env(&[
                ("ROADIE__SERVER__LISTEN", "127.0.0.1:7000"),
                ("ROADIE__POLICIES__TRACK_METADATA__MAX_BYTES", "42"),
                ("ROADIE__STORE__URL", "postgres://u@h/db"),
                ("ROADIE_SERVER", "ignored: not a setting"),
            ]),
        )
        .expect("load");
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(settings.policies["generic"].ttl, Duration::from_secs(3600));
        // A partial table keeps the other fields of the default.
        assert_eq!(settings.policies["generic"].max_bytes, 30 * MIB);
        assert_eq!(settings.policies["images"].max_bytes, 1000);
        assert_eq!(settings.policies["images"].ttl, Duration::from_secs(300));
        assert_eq!(settings.policies["track_metadata"].max_bytes, 42);
        assert_eq!(settings.store.url, "postgres://u@h/db");
    }

    #[test]
    fn a_zero_ttl_never_expires() {
        assert_eq!(expires_at(1_000, Duration::ZERO), None);
        assert_eq!(expires_at(1_000, Duration::from_secs(2)), Some(3_000));
        assert_eq!(
            expires_at(i64::MAX - 1, Duration::from_secs(1)),
            Some(i64::MAX)
        );
    }

    #[test]
    fn errors_name_the_setting() {
        let cases = [
            (
                ("ROADIE__SERVER__LISTEN", "not an address"),
                "server.listen",
            ),
            (("ROADIE__STORE__URL", "mysql://x"), "store.url"),
            (
                ("ROADIE__POLICIES__GENERIC__TTL", "soon"),
                "policies.generic.ttl",
            ),
            (
                ("ROADIE__POLICIES__GENERIC__CLEANUP_THRESHOLD", "1.5"),
                "policies.generic.cleanup_threshold",
            ),
            (
                ("ROADIE__LIMITS__MAX_BATCH_KEYS", "0"),
                "limits.max_batch_keys",
            ),
            (
                ("ROADIE__PROVIDERS__LASTFM__RATE_PER_SECOND", "-1"),
                "providers.lastfm.rate_per_second",
            ),
            // A base URL that names no host cannot work: an error, not a warning.
            (
                ("ROADIE__PROVIDERS__IMAGES__BASE_URL", "https://"),
                "providers.images.base_url",
            ),
            (
                (
                    "ROADIE__PROVIDERS__DISCOGS__BASE_URL",
                    "ftp://api.discogs.com/",
                ),
                "providers.discogs.base_url",
            ),
        ];
        for ((key, value), setting) in cases {
            let error = Settings::load(None, env(&[(key, value)])).expect_err(key);
            assert_eq!(error.setting, setting, "{key}={value}: {error}");
            assert!(error.to_string().contains(setting), "{error}");
        }
        let error = Settings::load(None, env(&[("ROADIE__SERVER__LISTN", "x")])).expect_err("typo");
        assert!(error.to_string().contains("listn"), "{error}");
    }

    #[test]
    fn rules_are_checked_against_policies_and_placeholders() {
        let mut settings = Settings::default();
        settings.events.rules[0].tags = vec!["track:{trak}".to_owned()];
        let error = settings.validate().expect_err("bad placeholder");
        assert_eq!(error.setting, "events.rules[0].tags");
        let mut settings = Settings::default();
        settings.events.rules[0].policies = vec!["generic".to_owned()];
        let error = settings.validate().expect_err("time policy");
        assert!(error.message.contains("not by events"), "{error}");
    }
}
