//! The change log: one row per change to one entry, in revision order.

use sqlx::{Row, any::AnyRow};

use crate::{Store, StoreError, entry::parse_tags, sql::sql};

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
}

impl ChangeKind {
    /// Every kind, in the order of the API's enum.
    pub const ALL: [ChangeKind; 7] = [
        ChangeKind::Put,
        ChangeKind::Delete,
        ChangeKind::Invalidate,
        ChangeKind::Expire,
        ChangeKind::Evict,
        ChangeKind::Fetch,
        ChangeKind::Negative,
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

    /// The latest revision (0 before the first change).
    pub async fn revision_current(&self) -> Result<u64, StoreError> {
        let value: i64 = sqlx::query_scalar(sql!("revision_get"))
            .fetch_one(&self.pool)
            .await?;
        Ok(from_i64(value))
    }
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
