//! [`StoreError`] and the single conversion from `sqlx::Error`.

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connection refused or lost, pool
    /// exhausted past its acquire timeout, database busy). Retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database has no room for the write (SQLite: the disk or the
    /// filesystem is full; Postgres: `disk_full`). Nothing was written; reads
    /// go on, and writes succeed again once space is freed.
    #[error("store full: {0}")]
    Full(String),
    /// A uniqueness rule refused the change (for example a second unfinished
    /// job for one URL).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store URL or options are unusable.
    #[error("store configuration: {0}")]
    Config(String),
    /// The database's schema is not the one this binary runs on.
    #[error("store schema: {0}")]
    Schema(String),
    /// Stored data that does not decode (a bug or a hand-edited row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Anything else the database said.
    #[error(transparent)]
    Database(sqlx::Error),
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        use sqlx::Error as E;
        match &error {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                StoreError::Unavailable(error.to_string())
            }
            E::Protocol(_) => StoreError::Unavailable(error.to_string()),
            E::Configuration(_) => StoreError::Config(error.to_string()),
            E::ColumnDecode { .. }
            | E::Decode(_)
            | E::ColumnNotFound(_)
            | E::TypeNotFound { .. } => StoreError::Corrupt(error.to_string()),
            E::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                StoreError::Conflict(db.message().to_owned())
            }
            E::Database(db) => match db.code().as_deref() {
                // Postgres: connection exceptions (08xxx), shutting down (57P0x),
                // too many connections (53300), database missing (3D000).
                Some(code)
                    if code.starts_with("08")
                        || code.starts_with("57P0")
                        || code == "53300"
                        || code == "3D000" =>
                {
                    StoreError::Unavailable(error.to_string())
                }
                // Postgres: disk_full (53100).
                Some("53100") => StoreError::Full(error.to_string()),
                // SQLite: SQLITE_FULL (13), with extended codes.
                Some(code)
                    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                        && sqlite_primary(code) == Some(13) =>
                {
                    StoreError::Full(error.to_string())
                }
                // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended codes,
                // once the busy timeout has run out.
                Some(code)
                    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                        && is_sqlite_busy(code) =>
                {
                    StoreError::Unavailable(error.to_string())
                }
                _ => StoreError::Database(error),
            },
            _ => StoreError::Database(error),
        }
    }
}

/// The primary result code of a SQLite (extended) result code.
fn sqlite_primary(code: &str) -> Option<i32> {
    code.parse::<i32>().ok().map(|c| c & 0xff)
}

fn is_sqlite_busy(code: &str) -> bool {
    matches!(sqlite_primary(code), Some(5 | 6))
}
