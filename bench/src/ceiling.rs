//! The database's own limit for the durable write a Put makes: one
//! single-row upsert of a new key with its value, each in its own
//! transaction (committed, so flushed as the database's settings say),
//! driven by the same load generator at the same concurrency as Roadie's
//! Put. Two ways through sqlx: the backend's own driver (`PgPool`,
//! `SqlitePool`) and `sqlx::Any`, which the store speaks through; the
//! pair is what `Any` costs on the write path, measured.
//!
//! SQLite is driven as the store drives it (WAL, `synchronous = NORMAL`)
//! through one connection, since SQLite has one writer at a time; Postgres
//! through up to [`PG_CONNECTIONS`] (twice the store's default pool: more
//! adds nothing on this machine's cores, and two such pools beside a
//! server's fit Postgres's default 100 connections).

use std::{str::FromStr as _, sync::Arc};

use bytes::Bytes;
use roadie_store::Backend;
use sqlx::{
    Executor as _,
    any::AnyPoolOptions,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::load::Call;

/// Which sqlx driver runs the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `sqlx::postgres` or `sqlx::sqlite`.
    Native,
    /// `sqlx::Any`, as the store uses.
    Any,
}

impl Driver {
    /// For table rows.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Native => "native driver",
            Driver::Any => "sqlx::Any",
        }
    }
}

const UPSERT: &str = "INSERT INTO bench_kv (key, value, revision) VALUES ($1, $2, $3) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, revision = excluded.revision";

fn create(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "CREATE TABLE IF NOT EXISTS bench_kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, revision BIGINT NOT NULL)"
        }
        Backend::Postgres => {
            "CREATE TABLE IF NOT EXISTS bench_kv (key TEXT PRIMARY KEY, value BYTEA NOT NULL, revision BIGINT NOT NULL)"
        }
    }
}

const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;";

/// Most connections of a Postgres ceiling's pool.
pub const PG_CONNECTIONS: u32 = 32;

fn connections(backend: Backend, concurrency: usize) -> u32 {
    match backend {
        Backend::Sqlite => 1,
        Backend::Postgres => u32::try_from(concurrency)
            .unwrap_or(u32::MAX)
            .min(PG_CONNECTIONS),
    }
}

fn key(slot: usize, seq: u64) -> String {
    format!("bench:put:{slot}:{seq}")
}

fn revision(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The call: one upsert through `$pool`, the same for every driver (the
/// value bound as a `Vec<u8>`, which every driver takes).
macro_rules! upsert_call {
    ($pool:expr, $value:expr) => {{
        let (pool, value) = ($pool, $value);
        let call: Call = Arc::new(move |slot, seq| {
            let (pool, value) = (pool.clone(), value.to_vec());
            Box::pin(async move {
                sqlx::query(UPSERT)
                    .bind(key(slot, seq))
                    .bind(value)
                    .bind(revision(seq))
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        });
        call
    }};
}

/// The upsert of a new key per call on the database at `url` (a table of
/// its own, `bench_kv`, is made there), through `driver`.
pub async fn upsert(
    backend: Backend,
    url: &str,
    driver: Driver,
    concurrency: usize,
    value: Bytes,
) -> anyhow::Result<Call> {
    let max = connections(backend, concurrency);
    match (driver, backend) {
        (Driver::Native, Backend::Postgres) => {
            let pool = PgPoolOptions::new()
                .max_connections(max)
                .min_connections(max)
                .connect(url)
                .await?;
            pool.execute(create(backend)).await?;
            Ok(upsert_call!(pool, value))
        }
        (Driver::Native, Backend::Sqlite) => {
            let options = SqliteConnectOptions::from_str(url)?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(std::time::Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .connect_with(options)
                .await?;
            pool.execute(create(backend)).await?;
            Ok(upsert_call!(pool, value))
        }
        (Driver::Any, _) => {
            sqlx::any::install_default_drivers();
            let sqlite = backend == Backend::Sqlite;
            let pool = AnyPoolOptions::new()
                .max_connections(max)
                .min_connections(if sqlite { 0 } else { max })
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if sqlite {
                            conn.execute(SQLITE_PRAGMAS).await?;
                        }
                        Ok(())
                    })
                })
                .connect(url)
                .await?;
            pool.execute(create(backend)).await?;
            Ok(upsert_call!(pool, value))
        }
    }
}
