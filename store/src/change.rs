//! The change log: one row per change to one entry, in revision order.
//!
//! Revisions are gapless: every write transaction takes the revision row's
//! lock first and numbers its changes after the value it finds, so commit
//! order is revision order, and a reader that sees revision N sees every
//! revision below it. Readers rely on that to prove they missed nothing.
//!
//! After a commit the writer announces its revision: in process through
//! [`Store::committed`], and on Postgres with a debounced NOTIFY on
//! [`CHANGE_CHANNEL`] (not a per-row trigger: one notification covers every
//! commit of the last [`CHANGE_DEBOUNCE`]). SQLite readers in other processes
//! notice commits with [`DataVersion`], a cheap pragma.

use std::time::Duration;

use sqlx::{Any, AnyConnection, Connection, Row, Transaction, any::AnyRow};
use tokio::sync::watch;

use crate::{
    Backend, Store, StoreError,
    sql::{sql, with_rows},
};

/// Postgres channel carrying the latest committed revision of a writer.
pub const CHANGE_CHANNEL: &str = "roadie_changes";

/// The revision a notification on [`CHANGE_CHANNEL`] says its writer
/// committed through; `None` for a payload that names none (a listener's
/// reconnect delivers an empty one), which a reader takes as "look".
pub fn notified_revision(payload: &str) -> Option<u64> {
    payload.parse().ok()
}

/// Shortest gap between two change notifications from one process. The
/// first commit after a quiet spell is announced at once.
pub const CHANGE_DEBOUNCE: Duration = Duration::from_millis(2);

/// Rows deleted per statement by [`Store::change_compact`], so a long
/// compaction never holds SQLite's write lock for long.
const COMPACT_SLICE: u64 = 10_000;

/// What happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// Written by a client's Put.
    Put,
    /// Deleted by a client's Delete.
    Delete,
    /// Deleted by Invalidate or an event rule.
    Invalidate,
    /// Deleted by the expiry clean-up.
    Expire,
    /// Deleted to keep its policy within its size budget.
    Evict,
    /// Written by a successful fetch.
    Fetch,
    /// Written by a fetch as a negative entry.
    Negative,
    /// A library snapshot (the key is its name) was written, merged or
    /// deleted.
    Snapshot,
}

impl serde::Serialize for ChangeKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl ChangeKind {
    /// Every kind, in the order of the API's enum.
    pub const ALL: [ChangeKind; 8] = [
        ChangeKind::Put,
        ChangeKind::Delete,
        ChangeKind::Invalidate,
        ChangeKind::Expire,
        ChangeKind::Evict,
        ChangeKind::Fetch,
        ChangeKind::Negative,
        ChangeKind::Snapshot,
    ];

    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Put => "put",
            ChangeKind::Delete => "delete",
            ChangeKind::Invalidate => "invalidate",
            ChangeKind::Expire => "expire",
            ChangeKind::Evict => "evict",
            ChangeKind::Fetch => "fetch",
            ChangeKind::Negative => "negative",
            ChangeKind::Snapshot => "snapshot",
        }
    }

    /// The kind stored as `name`.
    pub fn parse(name: &str) -> Option<ChangeKind> {
        ChangeKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One row of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Strictly increasing, in commit order.
    pub revision: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The entry's key.
    pub key: String,
    /// The entry's policy.
    pub policy: String,
    /// The entry's tags at the time of the change.
    pub tags: Vec<String>,
    /// The provider that fetched the entry, if any.
    pub provider: Option<String>,
    /// Commit time, milliseconds since the epoch.
    pub at: i64,
}

/// A batch of changes this process's committer committed, handed to the
/// process's tail of the log as they were written, without reading them
/// back ([`Store::own_commits`]).
#[derive(Debug, Clone)]
pub struct Committed {
    /// The batch's changes, in revision order, without gaps.
    pub changes: Vec<Change>,
    /// When the batch's transaction began: every commit that ended before
    /// this moment took a lower revision than the batch's first (the
    /// revision lock orders commits), so a tail whose last change is the
    /// one before the batch's first has, with the batch, every change
    /// committed before it.
    pub began: std::time::Instant,
}

impl Store {
    /// Up to `limit` changes with a revision greater than `after`, oldest first.
    pub async fn change_list_since(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(sql!("change_list_since"))
            .bind(to_i64(after))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(change_from_row).collect()
    }

    /// The oldest revision still in the log; with an empty log, the next
    /// revision to be written. A watcher may resume after any revision from
    /// one below this on.
    pub async fn change_oldest(&self) -> Result<u64, StoreError> {
        let value: i64 = sqlx::query_scalar(sql!("change_oldest"))
            .fetch_one(&self.pool)
            .await?;
        Ok(from_i64(value))
    }

    /// Removes the oldest changes: those committed before `now - max_age`,
    /// and all but the latest `max_count`. Always a prefix of the log, even
    /// when writers' clocks disagree. Returns how many were removed.
    pub async fn change_compact(
        &self,
        max_age: Duration,
        max_count: u64,
        now: i64,
    ) -> Result<u64, StoreError> {
        let current = self.revision_current().await?;
        let cutoff = now.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let young: Option<i64> = sqlx::query_scalar(sql!("change_age_horizon"))
            .bind(cutoff)
            .fetch_optional(&self.pool)
            .await?;
        let by_age = young.map_or(current, |first| from_i64(first).saturating_sub(1));
        let target = by_age.max(current.saturating_sub(max_count));
        let mut removed = 0;
        loop {
            let oldest = self.change_oldest().await?;
            if oldest > target {
                return Ok(removed);
            }
            let through = target.min(oldest.saturating_add(COMPACT_SLICE - 1));
            let done = sqlx::query(sql!("change_delete_through"))
                .bind(to_i64(through))
                .execute(&self.pool)
                .await?;
            removed += done.rows_affected();
        }
    }

    /// The latest revision committed through this handle (or its clones),
    /// changing after every commit that wrote changes.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// The batches of Puts this process commits, each as it committed
    /// (Deletes, invalidations and every other write are only announced on
    /// [`Self::committed`]). A receiver that falls behind misses batches:
    /// the log has them.
    pub fn own_commits(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<Committed>> {
        self.committer.own_commits()
    }

    /// Announces that a transaction up to `revision` has committed.
    pub(crate) fn announce(&self, revision: u64) {
        announce(&self.committed, revision);
    }

    /// [`Self::announce`] for a transaction whose statement sent its own
    /// notification on [`CHANGE_CHANNEL`] (a worker's finish on Postgres):
    /// the notifier sends none for it.
    pub(crate) fn announce_notified(&self, revision: u64) {
        self.notified
            .fetch_max(revision, std::sync::atomic::Ordering::AcqRel);
        announce(&self.committed, revision);
    }

    /// A connection of its own for [`DataVersion`] (SQLite); `None` on
    /// Postgres, which notifies instead.
    pub async fn data_version(&self) -> Result<Option<DataVersion>, StoreError> {
        if self.backend != crate::Backend::Sqlite {
            return Ok(None);
        }
        let conn = AnyConnection::connect(&self.url).await?;
        Ok(Some(DataVersion { conn }))
    }

    /// The latest revision (0 before the first change).
    pub async fn revision_current(&self) -> Result<u64, StoreError> {
        let value: i64 = sqlx::query_scalar(sql!("revision_get"))
            .fetch_one(&self.pool)
            .await?;
        Ok(from_i64(value))
    }
}

/// SQLite's `PRAGMA data_version`: a number that changes whenever another
/// connection (of this process or any other) commits to the database.
/// Reading it costs no I/O, so polling it often is cheap.
#[derive(Debug)]
pub struct DataVersion {
    conn: AnyConnection,
}

impl DataVersion {
    /// The current value; compare with the previous one.
    pub async fn read(&mut self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(&mut self.conn)
            .await?)
    }
}

/// How long a reader of [`DataVersion`] waits before reading it again:
/// `every` while nothing moves, and a fifth of that (at least a
/// millisecond) for [`BUSY_FOR`] after it last moved. A reader follows a
/// burst of commits closely (a Fetch waiting on a worker's result, a worker
/// fed a job at a time) and costs little while the database is quiet.
#[derive(Debug, Clone)]
pub struct PollPace {
    every: Duration,
    moved_at: Option<tokio::time::Instant>,
}

/// How long a reader keeps its quick pace after `data_version` last moved.
pub const BUSY_FOR: Duration = Duration::from_millis(250);

impl PollPace {
    /// A pace of `every` while quiet.
    pub fn new(every: Duration) -> PollPace {
        PollPace {
            every,
            moved_at: None,
        }
    }

    /// `data_version` moved just now.
    pub fn moved(&mut self) {
        self.moved_at = Some(tokio::time::Instant::now());
    }

    /// The wait before the next read.
    pub fn next(&self) -> Duration {
        match self.moved_at {
            Some(at) if at.elapsed() < BUSY_FOR => (self.every / 5)
                .max(Duration::from_millis(1))
                .min(self.every),
            _ => self.every,
        }
    }
}

/// Sends one NOTIFY per burst of commits on Postgres, until the last handle
/// on the store is dropped; none for a revision a statement has already
/// notified (`notified`, see [`Store::announce_notified`]).
pub(crate) fn spawn_notifier(
    pool: sqlx::AnyPool,
    mut committed: watch::Receiver<u64>,
    notified: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    tokio::spawn(async move {
        while committed.changed().await.is_ok() {
            if pool.is_closed() {
                return;
            }
            let revision = *committed.borrow_and_update();
            if revision <= notified.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            let sent = sqlx::query(sql!("notify"))
                .bind(CHANGE_CHANNEL)
                // What `notified_revision` reads back.
                .bind(revision.to_string())
                .execute(&pool)
                .await;
            if let Err(error) = sent {
                tracing::warn!(%error, "cannot notify watchers; they will poll");
            }
            tokio::time::sleep(CHANGE_DEBOUNCE).await;
        }
    });
}

fn change_from_row(row: &AnyRow) -> Result<Change, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(Change {
        revision: from_i64(row.try_get("revision")?),
        kind: ChangeKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown change kind {kind:?}")))?,
        key: row.try_get("key")?,
        policy: row.try_get("policy")?,
        tags: parse_tags(&row.try_get::<String, _>("tags")?)?,
        provider: row.try_get("provider")?,
        at: row.try_get("at")?,
    })
}

/// Revisions are stored as BIGINT; they never come near `i64::MAX`.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn from_i64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

// The change-log writes, called inside every write transaction.

/// Tells this process's watchers of `committed` that `revision` committed.
pub(crate) fn announce(committed: &tokio::sync::watch::Sender<u64>, revision: u64) {
    if revision > 0 {
        committed.send_if_modified(|latest| {
            let newer = revision > *latest;
            *latest = (*latest).max(revision);
            newer
        });
    }
}

/// Takes the revision counter's lock (every write does, first) and returns
/// the latest revision.
pub(crate) async fn revision_lock(tx: &mut Transaction<'_, Any>) -> Result<u64, StoreError> {
    let value: i64 = sqlx::query_scalar(sql!("revision_lock"))
        .fetch_one(&mut **tx)
        .await?;
    Ok(from_i64(value))
}

/// Sets the revision counter to the last revision this transaction wrote.
pub(crate) async fn revision_set(
    tx: &mut Transaction<'_, Any>,
    revision: u64,
) -> Result<(), StoreError> {
    sqlx::query(sql!("revision_set"))
        .bind(to_i64(revision))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Appends one change to the log, in the transaction of the write it records.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn change_insert(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    revision: u64,
    kind: ChangeKind,
    key: &str,
    policy: &str,
    tags_json: &str,
    provider: Option<&str>,
    at: i64,
) -> Result<(), StoreError> {
    let row = ChangeRow {
        revision,
        kind,
        key,
        policy,
        tags: tags_json,
        provider,
        at,
    };
    let text = with_rows(backend, sql!("change_insert"), 1, CHANGE_WIDTH);
    row.bind_to(sqlx::query(&text)).execute(&mut **tx).await?;
    Ok(())
}

/// One row of the change log (`change_insert.sql`).
#[derive(serde::Serialize)]
pub(crate) struct ChangeRow<'a> {
    pub revision: u64,
    pub kind: ChangeKind,
    pub key: &'a str,
    pub policy: &'a str,
    pub tags: &'a str,
    pub provider: Option<&'a str>,
    pub at: i64,
}

/// Placeholders of one row of `change_insert.sql`.
pub(crate) const CHANGE_WIDTH: usize = 7;

/// Where a change row's revision is among them (first).
pub(crate) const CHANGE_REVISION_AT: usize = 0;

impl ChangeRow<'_> {
    /// Binds the row's [`CHANGE_WIDTH`] values, in the statement's column order.
    pub(crate) fn bind_to<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        query
            .bind(to_i64(self.revision))
            .bind(self.kind.as_str())
            .bind(self.key)
            .bind(self.policy)
            .bind(self.tags)
            .bind(self.provider)
            .bind(self.at)
    }
}

/// An entry's tags as stored (a JSON array).
pub(crate) fn parse_tags(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("tags: {e}")))
}

#[cfg(test)]
mod tests {
    use super::sql;

    /// The age horizon walks the log in revision order from its oldest
    /// row, reading little more than what compaction removes: never every
    /// young change, sorted (what SQLite did while an index on `at` stood).
    #[tokio::test]
    async fn the_age_horizon_walks_the_log_in_revision_order() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        crate::MIGRATOR_SQLITE.run(&pool).await.expect("migrations");
        // Rows of id, parent, an unused column and the step's detail.
        let plan: Vec<String> = sqlx::query(&format!(
            "EXPLAIN QUERY PLAN {}",
            sql!("change_age_horizon")
        ))
        .bind(0_i64)
        .fetch_all(&pool)
        .await
        .expect("plan")
        .iter()
        .map(|row| sqlx::Row::get::<String, _>(row, 3))
        .collect();
        assert!(
            plan.iter().all(|step| !step.contains("TEMP B-TREE")),
            "the horizon sorts the log: {plan:?}"
        );
        assert!(
            plan.iter()
                .any(|step| step.contains("sqlite_autoindex_changes_1")),
            "the horizon does not walk the log by revision: {plan:?}"
        );
    }
}
