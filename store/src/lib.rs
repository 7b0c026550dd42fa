//! Roadie's database layer, shared by `roadie-server` and `roadie-worker`.
//!
//! One [`Store`] handle speaks to either backend through sqlx's `Any`
//! driver: SQLite (the embedded default, one WAL file) or Postgres (for more
//! than one host). Queries live in `sql/*.sql`, one file per operation; they
//! are written once in the dialect both backends share (`$N` parameters,
//! `ON CONFLICT`, `RETURNING`), and only where a dialect forces it does an
//! operation carry one text per backend.
//!
//! Every write bumps the change-log revision and appends one row per changed
//! entry to `changes` in the same transaction; nothing else writes entries.
//!
//! The store operations know nothing of gRPC or configuration files: callers
//! hand them validated values and a clock reading (`now`, milliseconds since the epoch),
//! which keeps time-dependent rules testable.
//!
//! # Layout
//! - [`entry`]: the cache operations (`entry_get`, `entry_put`, …).
//! - [`change`]: the change log (`change_list_since`, revisions).
//! - [`job`]: the fetch-job queue (`job_enqueue`, `job_claim`, …).
//! - [`rate`]: per-provider GCRA limits, spent at claim time.
//! - [`notify`]: Postgres NOTIFY/LISTEN between processes.
//! - [`error`]: [`StoreError`], the one place `sqlx::Error` is inspected.

pub mod change;
mod commit;
mod compress;
mod enqueue;
pub mod entry;
pub mod error;
pub mod job;
mod kept;
pub mod notify;
pub mod rate;
pub mod snapshot;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::Once,
    time::Duration,
};

use sqlx::{
    AnyPool, Connection, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

pub use change::{
    CHANGE_CHANNEL, Change, ChangeKind, Committed, DataVersion, PollPace, notified_revision,
};
pub use commit::{Batching, WriteBatches, gather};
pub use compress::{Compression, compressible};
pub use enqueue::FirstLook;
pub use entry::{
    Access, DeleteResult, Entry, EntryFilter, EntryPut, Eviction, Freshness, PolicyUsage,
    Provenance, PutResult, Selector,
};
pub use error::StoreError;
pub use job::{
    Claim, Finish, Job, JobFinish, JobNew, JobOutcome, JobState, ProviderState, QueueDepth,
    WAIT_PRIORITY,
};
pub use kept::REPLAN;
pub use notify::{JOB_CHANNEL, WORK_CHANNEL};
pub use rate::{Rate, Rates};
pub use snapshot::{Merged, SNAPSHOT_POLICY, SnapshotDelta, SnapshotMeta, Track};

/// A connection pool's state at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Connections open.
    pub open: u32,
    /// Of them, idle.
    pub idle: u32,
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file in WAL mode.
    Sqlite,
    /// A Postgres database, shareable by many hosts.
    Postgres,
}

impl Backend {
    /// The backend a store URL names, or `None` for an unknown scheme.
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// Lower-case name, as reported in `Stats`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// The name OpenTelemetry's database conventions give it
    /// (`db.system.name`).
    pub fn system_name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }
}

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://path/to/file.db` or `postgres://user@host:port/db`.
    pub url: String,
    /// Upper bound of pooled connections.
    pub max_connections: u32,
    /// How long an operation waits for a connection before the store counts
    /// as unavailable: keeps a dead database from hanging callers.
    pub acquire_timeout: Duration,
    /// How long SQLite waits on another process's write lock.
    pub busy_timeout: Duration,
    /// SQLite: the size the WAL file is cut back to after a checkpoint.
    pub wal_size_limit: u64,
    /// Apply pending migrations at connect; when false, a database whose
    /// schema lacks one is refused (`roadie-server migrate` applies them).
    pub migrate: bool,
    /// How long [`Store::connect_retrying`] keeps trying a database that
    /// cannot be reached, so processes may start before it.
    pub connect_timeout: Duration,
    /// Which values are stored compressed; `None`: none.
    pub compression: Option<Compression>,
    /// How entry writes are grouped into transactions (`commit`).
    pub batching: Batching,
}

impl StoreOptions {
    /// Options with the defaults for `url`.
    pub fn new(url: impl Into<String>) -> StoreOptions {
        StoreOptions {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            busy_timeout: Duration::from_secs(5),
            wal_size_limit: WAL_SIZE_LIMIT,
            migrate: true,
            connect_timeout: Duration::from_secs(60),
            compression: Some(Compression::default()),
            batching: Batching::default(),
        }
    }
}

/// A cheap-to-clone handle on the database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    // SQLite's write-ahead log file, for its size; none for Postgres and
    // in-memory databases.
    wal: Option<PathBuf>,
    // For LISTEN, which needs a connection of its own outside the pool.
    url: String,
    // The latest revision this process committed; see `change`.
    committed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    // The latest revision a statement of this process notified itself.
    notified: std::sync::Arc<std::sync::atomic::AtomicU64>,
    // Which values are written compressed (`compress`).
    compression: Option<Compression>,
    // Where entry writes go to be grouped into one commit (`commit`).
    committer: commit::Committer,
    // Where job enqueues go to be grouped into one statement (`enqueue`).
    enqueuer: enqueue::Enqueuer,
    // How writes are grouped, for the batched writers outside the store.
    batching: Batching,
    // The connections a worker's claims and its finishes keep (`kept`).
    claims: kept::Kept,
    finishes: kept::Kept,
}

/// The default size SQLite cuts its WAL file back to after a checkpoint
/// (`PRAGMA journal_size_limit`): without a limit the file keeps the size of
/// the largest burst of writes it ever held.
pub const WAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// How long a pooled connection may sit idle and still be handed out
/// without a ping first: longer, and a database restart or a dropped
/// connection may have ended it meanwhile.
pub(crate) const TRUSTED_IDLE: Duration = Duration::from_secs(1);

static MIGRATOR_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static MIGRATOR_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl Store {
    /// [`Store::connect`], tried again with backoff (100 ms doubling to 5 s)
    /// while the database cannot be reached, for at most
    /// `options.connect_timeout`, logging each failed attempt. Anything but
    /// an unreachable database (a bad URL, a schema it refuses) fails at once.
    pub async fn connect_retrying(options: &StoreOptions) -> Result<Store, StoreError> {
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            match Store::connect(options).await {
                Err(StoreError::Unavailable(error))
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::warn!(
                        store = %redact(&options.url),
                        attempt,
                        retry_in = ?pause,
                        %error,
                        "the store cannot be reached yet"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// Opens the database, creating the SQLite file and its directory when
    /// missing, and applies pending migrations (unless `options.migrate` is
    /// off). A schema newer than this binary knows is refused either way.
    pub async fn connect(options: &StoreOptions) -> Result<Store, StoreError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let backend = Backend::from_url(&options.url).ok_or_else(|| {
            StoreError::Config(format!(
                "unsupported store url scheme: {}",
                redact(&options.url)
            ))
        })?;
        let url = match backend {
            Backend::Sqlite => sqlite_url(&options.url)?,
            Backend::Postgres => options.url.clone(),
        };
        let connect_options = AnyConnectOptions::from_str(&url)?;
        let busy_ms = options.busy_timeout.as_millis();
        let wal_limit = options.wal_size_limit;
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // sqlx pings every connection as it goes back to the pool; one
            // handed out again within `TRUSTED_IDLE` was alive a moment ago,
            // and a second ping before each use would add a round trip to
            // every step of every call (eight on a Fetch that waits).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > TRUSTED_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // synchronous=NORMAL is durable across process crashes in WAL mode;
                        // foreign_keys makes entry_tags follow deleted entries.
                        conn.execute(
                            format!(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {busy_ms}; \
                                 PRAGMA journal_size_limit = {wal_limit};"
                            )
                            .as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .after_release(|conn, _meta| {
                Box::pin(async move {
                    // A transaction dropped without COMMIT queues its ROLLBACK; the
                    // ping runs it. If the connection still counts itself inside a
                    // transaction, that ROLLBACK failed: SQLite had already rolled
                    // back (a full disk fails COMMIT so), and every later BEGIN on
                    // it would be a SAVEPOINT inside a transaction that never
                    // commits, acknowledging writes that are never stored. Such a
                    // connection is closed, never reused.
                    if conn.is_in_transaction() {
                        conn.ping().await?;
                    }
                    let reusable = !conn.is_in_transaction();
                    if !reusable {
                        tracing::warn!(
                            "closing a store connection whose transaction did not end cleanly"
                        );
                    }
                    Ok(reusable)
                })
            })
            .connect_with(connect_options)
            .await?;
        let migrator = match backend {
            Backend::Sqlite => &MIGRATOR_SQLITE,
            Backend::Postgres => &MIGRATOR_POSTGRES,
        };
        // Postgres migrations take an advisory lock; SQLite's take none, so
        // processes starting together on a new file would race to create it.
        let _lock = match backend {
            Backend::Sqlite => migration_lock(&url).await?,
            Backend::Postgres => None,
        };
        check_schema(&pool, migrator, options.migrate).await?;
        if options.migrate {
            migrator.run(&pool).await?;
        }
        let (committed, announced) = tokio::sync::watch::channel(0);
        let notified = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        if backend == Backend::Postgres {
            change::spawn_notifier(pool.clone(), announced, notified.clone());
        }
        let wal = match backend {
            Backend::Sqlite => sqlite_path(&url).map(|path| PathBuf::from(format!("{path}-wal"))),
            Backend::Postgres => None,
        };
        let committed = std::sync::Arc::new(committed);
        let committer = commit::Committer::start(
            pool.clone(),
            backend,
            options.compression,
            committed.clone(),
            options.batching,
        )?;
        let enqueuer = enqueue::Enqueuer::start(pool.clone(), backend, options.batching);
        Ok(Store {
            pool,
            backend,
            wal,
            url,
            committed,
            notified,
            compression: options.compression,
            committer,
            enqueuer,
            batching: options.batching,
            claims: kept::Kept::default(),
            finishes: kept::Kept::default(),
        })
    }

    /// What the group commit has done since this store opened: its
    /// transactions, the writes they carried, the batches split.
    pub fn write_batches(&self) -> WriteBatches {
        self.committer.counts()
    }

    /// How this store groups writes (`store.write_batch`, `store.write_wait`):
    /// with [`gather`], the rule for a writer that batches outside the store,
    /// such as a worker's finished jobs.
    pub fn batching(&self) -> Batching {
        self.batching
    }

    /// The backend this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool now: connections open and idle.
    pub fn pool_usage(&self) -> PoolUsage {
        PoolUsage {
            open: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
        }
    }

    /// Whether the database answers a trivial query now; the time it
    /// waited for a pooled connection first.
    pub async fn ping(&self) -> Result<std::time::Duration, StoreError> {
        let asked = std::time::Instant::now();
        let mut conn = self.pool.acquire().await?;
        let waited = asked.elapsed();
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        Ok(waited)
    }

    /// SQLite: writes a consistent copy of the whole database to `path` (a
    /// new file) while the store stays in use (`VACUUM INTO`: one read
    /// transaction, so the copy is the database at one commit). Postgres
    /// has its own tool for that, `pg_dump`; asking here is a configuration
    /// error saying so.
    pub async fn backup_to(&self, path: &std::path::Path) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Config(
                "a Postgres store is backed up with pg_dump (see the README's Backup section)"
                    .to_owned(),
            ));
        }
        if path.exists() {
            return Err(StoreError::Config(format!(
                "{} exists already; a backup goes to a new file",
                path.display()
            )));
        }
        let target = path
            .to_str()
            .ok_or_else(|| StoreError::Config("the backup path is not UTF-8".to_owned()))?;
        sqlx::query(sql::sql!("backup_into"))
            .bind(target)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Checkpoints SQLite's write-ahead log into the database and truncates
    /// it (`wal_checkpoint(TRUNCATE)`), waiting up to the busy timeout for
    /// readers and writers. Without it the WAL grows under steady load and
    /// across crashes. Returns false when it could not finish (a reader held
    /// old pages); nothing to do on Postgres.
    pub async fn checkpoint(&self) -> Result<bool, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(true);
        }
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
            .await?;
        let busy: i32 = sqlx::Row::try_get(&row, 0)?;
        Ok(busy == 0)
    }

    /// The size of SQLite's write-ahead log file in bytes; `None` on Postgres.
    pub fn wal_bytes(&self) -> Option<u64> {
        let wal = self.wal.as_ref()?;
        // No file: nothing written since the last clean close.
        Some(std::fs::metadata(wal).map_or(0, |m| m.len()))
    }

    /// Whether [`Self::close`] has begun: nothing can be read or written
    /// through this store again.
    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        // Marked closed first, so no connection is kept again.
        let closing = self.pool.close();
        self.claims.release();
        self.finishes.release();
        closing.await;
    }
}

/// Makes a SQLite URL create its file (and the file's directory) on first use.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && !path.is_empty()
        && let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|error| {
            StoreError::Config(format!("cannot create {}: {error}", dir.display()))
        })?;
    }
    let query = if query.split('&').any(|p| p.starts_with("mode=")) {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// The file of a SQLite URL as `sqlite_url` wrote it; `None` in memory.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.trim_start_matches("sqlite://");
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// Refuses a database that has a migration this binary does not know (a
/// newer Roadie migrated it), and, when `migrate` is off, one that lacks a
/// migration this binary needs.
async fn check_schema(
    pool: &AnyPool,
    migrator: &sqlx::migrate::Migrator,
    migrate: bool,
) -> Result<(), StoreError> {
    // A database never migrated has no table yet: everything is pending.
    let applied: Vec<i64> = sqlx::query_scalar(sql::sql!("schema_versions"))
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    let newest_known = known.iter().copied().max().unwrap_or(0);
    if let Some(newer) = applied.iter().filter(|v| !known.contains(v)).max() {
        return Err(StoreError::Schema(format!(
            "the database has migration {newer}, newer than this binary knows (up to \
             {newest_known}): a newer Roadie migrated it; run that version, or restore a backup"
        )));
    }
    let pending: Vec<i64> = known.into_iter().filter(|v| !applied.contains(v)).collect();
    if !migrate && !pending.is_empty() {
        return Err(StoreError::Schema(format!(
            "the database lacks migrations {pending:?} and store.migrate is \"off\": run \
             `roadie-server migrate` first"
        )));
    }
    Ok(())
}

/// An exclusive lock on `<file>.migrate-lock` beside a SQLite file, held
/// while migrating; released when dropped. None for in-memory databases.
async fn migration_lock(url: &str) -> Result<Option<std::fs::File>, StoreError> {
    let Some(path) = sqlite_path(url) else {
        return Ok(None);
    };
    let lock_path = format!("{path}.migrate-lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| StoreError::Config(format!("cannot open {lock_path}: {error}")))?;
    let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|error| StoreError::Config(format!("migration lock: {error}")))?
        .map_err(|error| StoreError::Config(format!("cannot lock {lock_path}: {error}")))?;
    Ok(Some(locked))
}

/// The URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_their_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/roadie.db");
        let url = sqlite_url(&format!("sqlite://{}", path.display())).expect("url");
        assert_eq!(url, format!("sqlite://{}?mode=rwc", path.display()));
        assert!(path.parent().expect("parent").is_dir());
        assert_eq!(
            sqlite_url("sqlite::memory:").expect("url"),
            "sqlite://:memory:?mode=rwc"
        );
        assert!(
            sqlite_url("sqlite://x.db?mode=ro")
                .expect("url")
                .ends_with("?mode=ro")
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("sqlite://./data/roadie.db"),
            "sqlite://./data/roadie.db"
        );
    }
}
