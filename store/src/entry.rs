//! Cache entries: reads, conditional writes, deletions by selector, eviction.

use std::collections::BTreeMap;

use bytes::Bytes;
use sqlx::{Any, AnyConnection, Row, Transaction, any::AnyRow};

use crate::{
    Backend, Store, StoreError,
    change::{
        CHANGE_REVISION_AT, CHANGE_WIDTH, Change, ChangeKind, ChangeRow, change_insert, from_i64,
        parse_tags, revision_lock, revision_set, to_i64,
    },
    compress::{self, Compression},
    sql::{MAX_PARAMS, sql, sqlite_rows_with, with_rows},
};

/// Where a fetched entry came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The provider's configured name.
    pub provider: String,
    /// The upstream HTTP status.
    pub upstream_status: u16,
    /// The upstream ETag.
    pub etag: Option<String>,
    /// The upstream Last-Modified.
    pub last_modified: Option<String>,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The cached bytes; shared, so the hot tier hands out copies without copying them.
    pub value: Bytes,
    /// Media type of `value`.
    pub media_type: String,
    /// Policy name.
    pub policy: String,
    /// Tags, in the order written.
    pub tags: Vec<String>,
    /// 0 to 100.
    pub confidence: u8,
    /// Fingerprint of the source, if any.
    pub fingerprint: Option<String>,
    /// The caller's string map.
    pub metadata: BTreeMap<String, String>,
    /// A cached "not found" or "failed".
    pub negative: bool,
    /// First written, ms since the epoch.
    pub created_at: i64,
    /// Last written, ms since the epoch.
    pub updated_at: i64,
    /// End of freshness, ms since the epoch; `None`: never.
    pub expires_at: Option<i64>,
    /// Revision of the last write.
    pub revision: u64,
    /// Set for fetched entries.
    pub provenance: Option<Provenance>,
}

impl Entry {
    /// Bytes the entry counts against its policy's budget.
    pub fn size(&self) -> u64 {
        self.value.len() as u64
    }

    /// True once `now` is past the entry's expiry.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// A write, with its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPut {
    /// The key.
    pub key: String,
    /// The bytes.
    pub value: Vec<u8>,
    /// Media type.
    pub media_type: String,
    /// Policy name (validated by the caller).
    pub policy: String,
    /// Tags, replacing the stored ones.
    pub tags: Vec<String>,
    /// 0 to 100.
    pub confidence: u8,
    /// Fingerprint of the source.
    pub fingerprint: Option<String>,
    /// String map.
    pub metadata: BTreeMap<String, String>,
    /// Store as a negative entry.
    pub negative: bool,
    /// End of freshness; `None`: never.
    pub expires_at: Option<i64>,
    /// Provenance of fetched entries.
    pub provenance: Option<Provenance>,
    /// Drop this write when the stored entry has a higher confidence.
    pub keep_higher_confidence: bool,
    /// Write only when the stored revision equals this (0: only when absent).
    pub if_revision: Option<u64>,
    /// The change kind to log (`Put`, `Fetch` or `Negative`).
    pub kind: ChangeKind,
    /// The clock, ms since the epoch.
    pub now: i64,
}

impl EntryPut {
    /// The entry the store holds once this write landed at `revision` on a
    /// row first written at `created_at`: what a read would answer, without
    /// the read.
    pub fn landed(self, revision: u64, created_at: i64) -> Entry {
        Entry {
            key: self.key,
            value: Bytes::from(self.value),
            media_type: self.media_type,
            policy: self.policy,
            tags: self.tags,
            confidence: self.confidence,
            fingerprint: self.fingerprint,
            metadata: self.metadata,
            negative: self.negative,
            created_at,
            updated_at: self.now,
            expires_at: self.expires_at,
            revision,
            provenance: self.provenance,
        }
    }

    /// The change-log row this write leaves when it lands at `revision`,
    /// its tags as the JSON array `tags`: what the log holds.
    pub(crate) fn change_row<'a>(&'a self, revision: u64, tags: &'a str) -> ChangeRow<'a> {
        ChangeRow {
            revision,
            kind: self.kind,
            key: &self.key,
            policy: &self.policy,
            tags,
            provider: self.provenance.as_ref().map(|p| p.provider.as_str()),
            at: self.now,
        }
    }

    /// The same change as a reader of the log gets it ([`Self::change_row`]).
    pub(crate) fn change(&self, revision: u64) -> Change {
        Change {
            revision,
            kind: self.kind,
            key: self.key.clone(),
            policy: self.policy.clone(),
            tags: self.tags.clone(),
            provider: self.provenance.as_ref().map(|p| p.provider.clone()),
            at: self.now,
        }
    }
}

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    /// Written at this revision.
    Written {
        /// The new revision.
        revision: u64,
        /// The entry's first write (kept from a row the write replaced), ms
        /// since the epoch: with the write itself, the whole entry as the
        /// store now holds it ([`EntryPut::landed`]).
        created_at: i64,
    },
    /// Dropped: the stored entry has a higher confidence.
    KeptHigherConfidence {
        /// The stored entry's revision.
        revision: u64,
        /// The stored entry's confidence.
        confidence: u8,
    },
    /// Dropped: the stored revision is not the expected one.
    RevisionMismatch {
        /// The stored revision (0: absent).
        revision: u64,
    },
}

/// What a conditional delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteResult {
    /// Deleted at this revision.
    Deleted {
        /// The revision of the deletion.
        revision: u64,
    },
    /// There was no such entry.
    Absent,
    /// Not deleted: the stored revision is not the expected one.
    RevisionMismatch {
        /// The stored revision.
        revision: u64,
    },
}

/// Which entries an invalidation removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Exactly this key.
    Key(String),
    /// Exactly these keys (an eviction's chunk).
    Keys(Vec<String>),
    /// Every key starting with this prefix.
    KeyPrefix(String),
    /// Every entry carrying this tag.
    Tag(String),
    /// Every entry under this policy.
    Policy(String),
    /// Every entry under this policy carrying this tag.
    PolicyTag {
        /// Policy name.
        policy: String,
        /// Tag.
        tag: String,
    },
    /// Everything.
    All,
    /// Negative entries past their expiry, and other entries expired before
    /// `stale_before` (kept until then so readers may still take them stale).
    Expired {
        /// The clock.
        now: i64,
        /// Expired entries older than this go.
        stale_before: i64,
    },
}

/// An entry's state at a moment, as a listing filters on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Not negative, not expired.
    Fresh,
    /// Not negative, expired.
    Stale,
    /// A cached "not found" or "failed", expired or not.
    Negative,
}

/// Which entries a listing takes; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Keys starting with this.
    pub key_prefix: String,
    /// Entries carrying this tag.
    pub tag: String,
    /// Entries under this policy.
    pub policy: String,
    /// Entries fetched by this provider.
    pub provider: String,
    /// Entries in this state.
    pub freshness: Option<Freshness>,
}

/// Entries and bytes stored under one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyUsage {
    /// Policy name.
    pub policy: String,
    /// Entry count.
    pub entries: u64,
    /// Bytes of values as stored (compressed or not): what budgets count.
    pub bytes: u64,
    /// Bytes of values as written, before compression.
    pub raw_bytes: u64,
}

/// The least valuable entries an eviction pass reads at a time.
const EVICTION_CHUNK: i64 = 128;

/// What an eviction pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Entries evicted.
    pub count: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Bytes the policy holds after the pass, as it counted them.
    pub held: u64,
}

/// Access statistics for one key, flushed in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The key read.
    pub key: String,
    /// The latest read, ms since the epoch.
    pub at: i64,
    /// Reads since the last flush.
    pub count: u64,
}

impl Store {
    /// The entry under `key`, whatever its freshness.
    pub async fn entry_get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let row = sqlx::query(sql!("entry_get"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// The entries found among `keys`, in no particular order.
    pub async fn entry_get_many(&self, keys: &[String]) -> Result<Vec<Entry>, StoreError> {
        // Chunked to stay well inside every backend's parameter limit.
        let mut entries = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let params = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let text = sql!("entry_get_many").replace("KEYS", &params);
            let mut query = sqlx::query(&text);
            for key in chunk {
                query = query.bind(key);
            }
            for row in query.fetch_all(&self.pool).await? {
                entries.push(entry_from_row(&row)?);
            }
        }
        Ok(entries)
    }

    /// Up to `limit` entries matching `filter` with keys after `after`, in
    /// bytewise key order (both backends), judged fresh or stale at `now`;
    /// values left empty unless `with_values`.
    pub async fn entry_list(
        &self,
        filter: &EntryFilter,
        after: &str,
        limit: u32,
        with_values: bool,
        now: i64,
    ) -> Result<Vec<Entry>, StoreError> {
        let freshness = match filter.freshness {
            None => 0_i64,
            Some(Freshness::Fresh) => 1,
            Some(Freshness::Stale) => 2,
            Some(Freshness::Negative) => 3,
        };
        let rows = sqlx::query(sql!(self.backend, "entry_list"))
            .bind(after)
            .bind(filter.key_prefix.as_str())
            .bind(prefix_end(&filter.key_prefix).unwrap_or_default())
            .bind(filter.tag.as_str())
            .bind(filter.policy.as_str())
            .bind(filter.provider.as_str())
            .bind(freshness)
            .bind(now)
            .bind(i64::from(with_values))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Writes an entry unless its conditions say otherwise. Goes through
    /// the process's group commit (`commit`): answered after the commit of
    /// the batch it joined.
    #[tracing::instrument(target = "roadie_store::db", name = "db entry_put", skip_all, fields(otel.kind = "client", db.system.name = self.backend.system_name(), db.operation.name = "entry_put"))]
    pub async fn entry_put(&self, put: &EntryPut) -> Result<PutResult, StoreError> {
        self.committer.put(put.clone()).await
    }

    /// Deletes one entry, optionally only at an expected revision. Goes
    /// through the group commit, like `entry_put`.
    pub async fn entry_delete(
        &self,
        key: &str,
        if_revision: Option<u64>,
        now: i64,
    ) -> Result<DeleteResult, StoreError> {
        self.committer
            .delete(Delete {
                key: key.to_owned(),
                if_revision,
                now,
            })
            .await
    }

    /// Deletes every entry `selector` matches, logging one change of `kind`
    /// per entry. Returns the count and the last revision (0 if none).
    pub async fn entry_invalidate(
        &self,
        selector: &Selector,
        kind: ChangeKind,
        now: i64,
    ) -> Result<(u64, u64), StoreError> {
        let (counts, last) = self
            .entry_invalidate_each(std::slice::from_ref(selector), kind, now)
            .await?;
        Ok((counts.iter().sum(), last))
    }

    /// Deletes every entry each selector matches, in order, in one commit
    /// (a library event's rules land together or not at all): the count
    /// each selector removed, and the last revision (0 if none). Goes
    /// through the group commit, like `entry_put`.
    pub async fn entry_invalidate_each(
        &self,
        selectors: &[Selector],
        kind: ChangeKind,
        now: i64,
    ) -> Result<(Vec<u64>, u64), StoreError> {
        if selectors.is_empty() {
            return Ok((Vec::new(), 0));
        }
        self.committer
            .invalidate(Invalidation {
                selectors: selectors.to_vec(),
                kind,
                now,
            })
            .await
    }

    /// A random fresh, non-negative entry carrying `tag`; empty `policy` or
    /// `provider` mean "any".
    pub async fn entry_random(
        &self,
        tag: &str,
        policy: &str,
        provider: &str,
        now: i64,
    ) -> Result<Option<Entry>, StoreError> {
        let row = sqlx::query(sql!("entry_random"))
            .bind(tag)
            .bind(now)
            .bind(policy)
            .bind(provider)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// Entries and bytes per policy found in the store.
    pub async fn entry_usage(&self) -> Result<Vec<PolicyUsage>, StoreError> {
        let rows = sqlx::query(sql!("entry_usage"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(PolicyUsage {
                    policy: row.try_get("policy")?,
                    entries: from_i64(row.try_get("entries")?),
                    bytes: from_i64(row.try_get("bytes")?),
                    raw_bytes: from_i64(row.try_get("raw_bytes")?),
                })
            })
            .collect()
    }

    /// When `policy` holds more than `budget` bytes, evicts its least
    /// valuable entries until it holds at most `target` bytes.
    ///
    /// A chunk at a time, each chunk its own transaction: the revision lock,
    /// and so every writer, waits on one chunk, never on a whole pass. The
    /// policy is counted once, under the first chunk's lock; a pass that
    /// finds another pass's evictions of the policy between its chunks
    /// leaves the rest to that one, so passes of several servers at once
    /// evict past the target by a chunk at most.
    pub async fn entry_evict(
        &self,
        policy: &str,
        budget: u64,
        target: u64,
        now: i64,
    ) -> Result<Eviction, StoreError> {
        // A cheap read first: most passes find the policy within budget and
        // should not take the write lock at all.
        let bytes: i64 = sqlx::query_scalar(sql!("entry_policy_bytes"))
            .bind(policy)
            .fetch_one(&self.pool)
            .await?;
        let mut eviction = Eviction {
            held: from_i64(bytes),
            ..Eviction::default()
        };
        if eviction.held <= budget {
            return Ok(eviction);
        }
        // The revision this pass's last chunk committed.
        let mut last = None;
        loop {
            let mut tx = self.pool.begin().await?;
            let base = revision_lock(&mut tx).await?;
            match last {
                None => {
                    let bytes: i64 = sqlx::query_scalar(sql!("entry_policy_bytes"))
                        .bind(policy)
                        .fetch_one(&mut *tx)
                        .await?;
                    eviction.held = from_i64(bytes);
                    if eviction.held <= budget {
                        return Ok(eviction);
                    }
                }
                Some(last) if base > last => {
                    let evicted: i64 = sqlx::query_scalar(sql!("change_evicted_since"))
                        .bind(to_i64(last))
                        .bind(to_i64(base))
                        .bind(policy)
                        .fetch_one(&mut *tx)
                        .await?;
                    if evicted > 0 {
                        break;
                    }
                }
                Some(_) => {}
            }
            // The least valuable, read from the index where the last chunk
            // left off (its rows are gone), removed with their change rows
            // in one statement each.
            let candidates = sqlx::query(sql!("entry_lru"))
                .bind(policy)
                .bind(EVICTION_CHUNK)
                .fetch_all(&mut *tx)
                .await?;
            let mut keys = Vec::new();
            let mut bytes = 0;
            for row in &candidates {
                if eviction.held.saturating_sub(bytes) <= target {
                    break;
                }
                bytes += from_i64(row.try_get("size_bytes")?);
                keys.push(row.try_get::<String, _>("key")?);
            }
            if keys.is_empty() {
                break;
            }
            let chosen = keys.len() as u64;
            let invalidation = Invalidation {
                selectors: vec![Selector::Keys(keys)],
                kind: ChangeKind::Evict,
                now,
            };
            let removed: u64 = entries_invalidate_at(&mut tx, self.backend, &invalidation, base)
                .await?
                .iter()
                .sum();
            if removed != chosen {
                // Cannot happen while every writer takes the revision lock.
                return Err(StoreError::Corrupt(format!(
                    "eviction chose {chosen} entries but removed {removed}"
                )));
            }
            revision_set(&mut tx, base + removed).await?;
            tx.commit().await?;
            self.announce(base + removed);
            eviction.count += removed;
            eviction.bytes += bytes;
            eviction.held = eviction.held.saturating_sub(bytes);
            last = Some(base + removed);
            if eviction.held <= target {
                break;
            }
        }
        Ok(eviction)
    }

    /// Records reads for eviction. Not a change: no revision, no log row.
    pub async fn entry_touch(&self, accesses: &[Access]) -> Result<(), StoreError> {
        let mut sorted: Vec<&Access> = accesses.iter().collect();
        // One lock order for every server flushing at once.
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        // One statement per chunk, each its own transaction: row locks are
        // held for one statement, not for the whole flush, so a write of the
        // same keys waits a moment at most (and on Postgres a touch never
        // waits for a write: see the statement).
        for chunk in sorted.chunks(MAX_PARAMS / 3) {
            let text = with_rows(
                self.backend,
                sql!(self.backend, "entry_touch"),
                chunk.len(),
                3,
            );
            let mut query = sqlx::query(&text);
            for access in chunk {
                query = query
                    .bind(&access.key)
                    .bind(access.at)
                    .bind(to_i64(access.count));
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }
}

/// Writes `puts` in `tx` as one batch, in order: the revision lock,
/// [`entries_put_at`], and the counter moved to the last revision written
/// (on Postgres, a batch that [`writes_alone`] in one statement that does
/// all three). A worker's finishing transaction on SQLite takes the lock
/// with a statement of its own: inside it, the lock taken by the write's
/// query cost the queue on SQLite 15 % of its jobs a second (BENCHMARKS).
pub(crate) async fn entries_put_in(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    puts: &[&EntryPut],
    compression: Option<&Compression>,
) -> Result<Vec<PutResult>, StoreError> {
    let mut counter = 0;
    if backend == Backend::Postgres && writes_alone(puts) {
        return entries_put_at(tx, backend, puts, compression, Lock::Taken, &mut counter).await;
    }
    let base = revision_lock(tx).await?;
    counter = base;
    let results = entries_put_at(
        tx,
        backend,
        puts,
        compression,
        Lock::Held(base),
        &mut counter,
    )
    .await?;
    if let Some(last) = last_written(&results).filter(|last| *last > counter) {
        revision_set(tx, last).await?;
    }
    Ok(results)
}

/// The highest revision `results` wrote, if any wrote.
pub(crate) fn last_written(results: &[PutResult]) -> Option<u64> {
    results
        .iter()
        .filter_map(|r| match r {
            PutResult::Written { revision, .. } => Some(*revision),
            _ => None,
        })
        .max()
}

/// A delete for the group commit (`Store::entry_delete`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delete {
    pub key: String,
    pub if_revision: Option<u64>,
    pub now: i64,
}

/// An invalidation for the group commit (`Store::entry_invalidate_each`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalidation {
    pub selectors: Vec<Selector>,
    pub kind: ChangeKind,
    pub now: i64,
}

/// Runs `delete` inside `tx`, which holds the revision lock at `base`:
/// when it lands, revision `base + 1` and its change row. Leaves the
/// revision counter to the caller.
pub(crate) async fn entry_delete_at(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    delete: &Delete,
    base: u64,
) -> Result<DeleteResult, StoreError> {
    if let Some(expected) = delete.if_revision {
        let stored: Option<i64> = sqlx::query_scalar(sql!("entry_meta"))
            .bind(&delete.key)
            .fetch_optional(&mut **tx)
            .await?;
        match stored.map(from_i64) {
            None => return Ok(DeleteResult::Absent),
            Some(actual) if actual != expected => {
                return Ok(DeleteResult::RevisionMismatch { revision: actual });
            }
            Some(_) => {}
        }
    }
    let Some(row) = sqlx::query(sql!("entry_delete"))
        .bind(&delete.key)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(DeleteResult::Absent);
    };
    let revision = base + 1;
    let policy: String = row.try_get("policy")?;
    let tags: String = row.try_get("tags")?;
    let provider: Option<String> = row.try_get("provider")?;
    change_insert(
        tx,
        backend,
        revision,
        ChangeKind::Delete,
        &delete.key,
        &policy,
        &tags,
        provider.as_deref(),
        delete.now,
    )
    .await?;
    Ok(DeleteResult::Deleted { revision })
}

/// Runs `invalidation` inside `tx`, which holds the revision lock at
/// `base`: the entries each selector matches go, in order, taking
/// revisions `base + 1` upwards, each with its change row. The count each
/// selector removed; leaves the revision counter to the caller.
pub(crate) async fn entries_invalidate_at(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    invalidation: &Invalidation,
    base: u64,
) -> Result<Vec<u64>, StoreError> {
    let mut counts = Vec::with_capacity(invalidation.selectors.len());
    let mut last = base;
    for selector in &invalidation.selectors {
        // Writers are serialised by the revision lock, so both statements
        // see the same set of entries.
        let (condition, binds) = selector_condition(backend, selector, 4);
        let text = sql!("entry_invalidate_log").replace("SELECTOR", &condition);
        let mut log = sqlx::query(&text)
            .bind(to_i64(last))
            .bind(invalidation.kind.as_str())
            .bind(invalidation.now);
        for bind in &binds {
            log = bind.bind_to(log);
        }
        let logged = log.execute(&mut **tx).await?.rows_affected();

        let (condition, binds) = selector_condition(backend, selector, 1);
        let text = sql!("entry_invalidate_delete").replace("SELECTOR", &condition);
        let mut delete = sqlx::query(&text);
        for bind in &binds {
            delete = bind.bind_to(delete);
        }
        let deleted = delete.execute(&mut **tx).await?.rows_affected();
        if deleted != logged {
            // Cannot happen while every writer takes the revision lock;
            // refuse to commit a log that disagrees with the entries.
            return Err(StoreError::Corrupt(format!(
                "invalidation logged {logged} changes but deleted {deleted} entries"
            )));
        }
        last += deleted;
        counts.push(deleted);
    }
    Ok(counts)
}

/// Why `put` must not be written over `stored` (its revision and
/// confidence; `None`: absent), or `None` when it may be: the one place
/// `if_revision` and keep-higher-confidence are judged.
fn refused(put: &EntryPut, stored: Option<(u64, u8)>) -> Option<PutResult> {
    if let Some(expected) = put.if_revision {
        let actual = stored.map_or(0, |(revision, _)| revision);
        if actual != expected {
            return Some(PutResult::RevisionMismatch { revision: actual });
        }
    }
    match stored {
        Some((revision, confidence))
            if put.keep_higher_confidence && confidence > put.confidence =>
        {
            Some(PutResult::KeptHigherConfidence {
                revision,
                confidence,
            })
        }
        _ => None,
    }
}

/// Whether `put` has a condition to judge against what the store holds.
fn conditional(put: &EntryPut) -> bool {
    put.if_revision.is_some() || put.keep_higher_confidence
}

/// Whether `puts` may go to [`entries_put_at`] without the revision lock
/// held before: a batch with no condition to judge (it lands whole
/// whatever the store holds), whose one statement (Postgres) or one query
/// (SQLite) takes the lock itself.
pub(crate) fn writes_alone(puts: &[&EntryPut]) -> bool {
    !puts.iter().copied().any(conditional)
}

/// Writes `puts` on `conn`, however many they are: on Postgres in one
/// statement of one text ([`write_at_once`]), on SQLite with one statement
/// of each kind ([`write_step_by_step`]). Each put is judged in order against the store as
/// the ones before it left it; those that land take the next revisions, in
/// order; each key's row ends as its last write left it (created when the
/// first write of a key absent before created it), and every landed write
/// has its change row.
///
/// `lock` says how the write stands to the revision lock ([`Lock`]);
/// `counter` ends as the value the counter holds after the write where the
/// write moved it (Postgres's one statement, SQLite's one query; when no
/// put lands, moving it is left to the caller).
pub(crate) async fn entries_put_at(
    conn: &mut AnyConnection,
    backend: Backend,
    puts: &[&EntryPut],
    compression: Option<&Compression>,
    lock: Lock<'_>,
    counter: &mut u64,
) -> Result<Vec<PutResult>, StoreError> {
    let base = match lock {
        Lock::Held(base) => Some(base),
        Lock::Taken | Lock::TakenAfter(_) => None,
    };
    if base.is_none() && !writes_alone(puts) {
        return Err(StoreError::Corrupt(
            "a batch that needs the revision lock was written without it".to_owned(),
        ));
    }
    // What the store holds for every key the batch names, when a write of
    // the batch has a condition to judge against it: a batch of
    // unconditional writes (every fetch result, most Puts) skips the read,
    // one round trip less under the revision lock: such a batch lands whole.
    let mut keys: Vec<&str> = if puts.iter().copied().any(conditional) {
        puts.iter().map(|p| p.key.as_str()).collect()
    } else {
        Vec::new()
    };
    keys.sort_unstable();
    keys.dedup();
    let mut state: std::collections::HashMap<&str, (u64, u8)> = std::collections::HashMap::new();
    for chunk in keys.chunks(MAX_PARAMS) {
        let text = with_rows(backend, sql!("entry_meta_many"), 1, chunk.len());
        let mut query = sqlx::query(&text);
        for key in chunk {
            query = query.bind(*key);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let key: String = row.try_get("key")?;
            if let Ok(at) = chunk.binary_search(&key.as_str()) {
                let found = chunk[at];
                let stored = (
                    from_i64(row.try_get("revision")?),
                    confidence_from(row.try_get("confidence")?),
                );
                state.insert(found, stored);
            }
        }
    }

    // Judge in arrival order; the last landed write of each key is its row.
    let mut results = Vec::with_capacity(puts.len());
    let mut landed: Vec<(usize, u64)> = Vec::new();
    let mut last_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut first_at: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    // Without the lock the revisions counted here are offsets from the
    // counter's value, which the statement adds.
    let mut revision = base.unwrap_or(0);
    for (index, put) in puts.iter().enumerate() {
        let key = put.key.as_str();
        if let Some(refusal) = refused(put, state.get(key).copied()) {
            results.push(refusal);
            continue;
        }
        revision += 1;
        state.insert(key, (revision, put.confidence));
        landed.push((index, revision));
        last_of.insert(key, landed.len() - 1);
        first_at.entry(key).or_insert(put.now);
        // The row's created_at is known once it is written (below).
        results.push(PutResult::Written {
            revision,
            created_at: 0,
        });
    }
    if landed.is_empty() {
        return Ok(results);
    }

    let mut finals: Vec<usize> = last_of.values().copied().collect();
    finals.sort_unstable();
    let mut rows = Vec::with_capacity(finals.len());
    for at in finals {
        let (index, revision) = landed[at];
        let put = puts[index];
        let key = put.key.as_str();
        // Used only by a row the batch creates (see `entry_upsert`).
        let created_at = first_at[key];
        let (stored, encoding) = compress::encode(&put.value, &put.media_type, compression);
        rows.push(UpsertRow {
            put,
            revision,
            created_at,
            tags: serde_json::to_string(&put.tags)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            metadata: serde_json::to_string(&put.metadata)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            stored,
            encoding,
        });
    }

    // Rows lock in key order, the order every other writer of many entries
    // takes (`entry_touch`): two such transactions never wait on each other
    // in a circle (Postgres would break the deadlock only after its
    // deadlock_timeout, a second, and fail the batch).
    rows.sort_unstable_by(|a, b| a.put.key.cmp(&b.put.key));

    // One change row per landed write, in revision order.
    let change_tags: Vec<String> = landed
        .iter()
        .map(|&(index, _)| serde_json::to_string(&puts[index].tags))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let changes: Vec<ChangeRow<'_>> = landed
        .iter()
        .zip(&change_tags)
        .map(|(&(index, revision), tags)| puts[index].change_row(revision, tags))
        .collect();

    match backend {
        Backend::Postgres => {
            let shift =
                write_at_once(conn, &rows, &changes, lock, revision, &mut results, puts).await?;
            *counter = shift + revision;
        }
        Backend::Sqlite => {
            let shift =
                write_step_by_step(conn, &rows, &changes, lock, revision, &mut results, puts)
                    .await?;
            *counter = shift + revision;
        }
    }
    Ok(results)
}

/// How a batch's write stands to the revision lock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lock<'a> {
    /// The caller's transaction holds it, taken at this revision.
    Held(u64),
    /// The write's one statement takes it ([`writes_alone`] only); on
    /// SQLite, whose lock is the database's, the write's one query is its
    /// own transaction, begun with BEGIN IMMEDIATE (so not inside another).
    Taken,
    /// The write's one statement ends a worker's jobs, then takes it: all
    /// or nothing ([`writes_alone`] only; Postgres).
    TakenAfter(&'a Ending<'a>),
}

/// A worker's finished jobs, ended by the statement that writes their
/// entries (`sql/postgres/jobs_end_gate.sql`).
#[derive(Debug)]
pub(crate) struct Ending<'a> {
    /// JSON: one `{id, state, error}` per job.
    pub jobs: String,
    pub count: usize,
    pub worker: &'a str,
    pub now: i64,
}

/// The texts of `sql/postgres/entries_write.sql`, one per [`Lock`], made once.
fn write_texts() -> &'static [String; 3] {
    static TEXTS: std::sync::OnceLock<[String; 3]> = std::sync::OnceLock::new();
    TEXTS.get_or_init(|| {
        const SET: &str =
            "UPDATE roadie_revision SET value = $4 WHERE id = 1 RETURNING 0::bigint AS base";
        const ADD: &str = "UPDATE roadie_revision SET value = value + $4 WHERE id = 1";
        const BASE: &str = " RETURNING value - $4 AS base";
        let text = |ending: &str, counter: &str, changed: &str, announced: &str| {
            sql!("postgres/entries_write")
                .replace("{ending}", ending)
                .replace("{counter}", counter)
                .replace(
                    "{upsert}",
                    &sql!("entry_upsert").replace("{source}", "SELECT * FROM input ORDER BY key"),
                )
                .replace("{changed}", changed)
                .replace("{announced}", announced)
        };
        let ending = sql!("postgres/jobs_end_gate")
            .replace("{announce}", &crate::notify::announce_ended("ended"));
        // The batch's last revision, as `notified_revision` reads it back.
        let changed = format!(
            ", changed AS (SELECT pg_notify('{}', (base + $4)::text) AS sent FROM counter)",
            crate::change::CHANGE_CHANNEL
        );
        [
            text("", SET, "", ""),
            text("", &format!("{ADD}{BASE}"), "", ""),
            text(
                &ending,
                &format!("{ADD} AND (SELECT open FROM gate){BASE}"),
                &changed,
                ", announced, changed",
            ),
        ]
    })
}

/// The rows and change rows of a batch in one statement of one text
/// (`sql/postgres/entries_write.sql`): the rows and the change rows as JSON,
/// the values as one bytea. Returns the base the statement added to the
/// rows' revisions (0 when the caller held the lock and numbered them).
/// With [`Lock::TakenAfter`], a worker that no longer holds every lease
/// gets [`StoreError::Conflict`] and nothing is written.
async fn write_at_once(
    conn: &mut AnyConnection,
    rows: &[UpsertRow<'_>],
    changes: &[ChangeRow<'_>],
    lock: Lock<'_>,
    last: u64,
    results: &mut [PutResult],
    puts: &[&EntryPut],
) -> Result<u64, StoreError> {
    let mut values = Vec::with_capacity(rows.iter().map(|row| row.stored.len()).sum());
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        columns.push(row.columns(values.len()));
        values.extend_from_slice(&row.stored);
    }
    let rows_json =
        serde_json::to_string(&columns).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let changes_json =
        serde_json::to_string(changes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let [held, taken, taken_after] = write_texts();
    let text = match lock {
        Lock::Held(_) => held,
        Lock::Taken => taken,
        Lock::TakenAfter(_) => taken_after,
    };
    let mut query = sqlx::query(text)
        .bind(rows_json)
        .bind(values)
        .bind(changes_json)
        .bind(to_i64(last));
    if let Lock::TakenAfter(ending) = lock {
        query = query
            .bind(ending.jobs.as_str())
            .bind(ending.worker)
            .bind(ending.now)
            .bind(to_i64(ending.count as u64));
    }
    let done = query.fetch_all(&mut *conn).await?;
    if done.is_empty() && !rows.is_empty() && matches!(lock, Lock::TakenAfter(_)) {
        return Err(StoreError::Conflict(
            "the worker no longer holds every lease of the batch".to_owned(),
        ));
    }
    if done.len() != rows.len() {
        return Err(StoreError::Corrupt(format!(
            "a batch of {} rows wrote {}",
            rows.len(),
            done.len()
        )));
    }
    let shift = match done.first() {
        Some(row) => from_i64(row.try_get("base")?),
        None => 0,
    };
    settle(results, puts, shift, &created_by_key(&done)?)?;
    Ok(shift)
}

/// The rows and change rows of a batch as lists of placeholders (SQLite,
/// where planning costs next to nothing), and the counter moved, every
/// statement in one query: the connection's thread runs them one after the
/// other, so the batch crosses to it and back once, not once per statement.
/// Each kind is one statement unless its placeholders would pass SQLite's
/// limit.
///
/// Under [`Lock::Held`] the rows carry their revisions and the counter is
/// set to `last`. Under [`Lock::Taken`] they carry 1, 2, ... `last`, added
/// to the counter as the query finds it, and the query, its own
/// transaction (BEGIN IMMEDIATE ... COMMIT: a batch of Puts crosses once,
/// not four times), moves the counter by `last` and reads it back. Returns
/// the base added to the rows' revisions (0 under [`Lock::Held`]).
async fn write_step_by_step(
    conn: &mut AnyConnection,
    rows: &[UpsertRow<'_>],
    changes: &[ChangeRow<'_>],
    lock: Lock<'_>,
    last: u64,
    results: &mut [PutResult],
    puts: &[&EntryPut],
) -> Result<u64, StoreError> {
    // Placeholders are anonymous throughout: a numbered one names a
    // position in the whole query's values, not in its own statement's.
    const SET: &str = "UPDATE roadie_revision SET value = ? WHERE id = 1";
    const ADD: &str = "UPDATE roadie_revision SET value = value + ? WHERE id = 1 RETURNING value";
    const AFTER_COUNTER: &str = "? + (SELECT value FROM roadie_revision WHERE id = 1)";
    // `own`: the query is its own transaction, and its last row the counter.
    let (revision_cell, counter, own) = match lock {
        Lock::Held(_) => ("?", SET, false),
        Lock::Taken => (AFTER_COUNTER, ADD, true),
        Lock::TakenAfter(_) => {
            return Err(StoreError::Corrupt(
                "a worker's finish in one statement is Postgres's".to_owned(),
            ));
        }
    };
    let backend = Backend::Sqlite;
    let upsert = sql!("entry_upsert").replace("{source}", "VALUES {rows}");
    // Tags: the rows' old tags go, their last writes' tags come.
    let mut tag_rows: Vec<(&str, &str)> = rows
        .iter()
        .flat_map(|row| {
            row.put
                .tags
                .iter()
                .map(move |tag| (tag.as_str(), row.put.key.as_str()))
        })
        .collect();
    tag_rows.sort_unstable();
    tag_rows.dedup();
    let mut statements = Vec::new();
    if own {
        statements.push("BEGIN IMMEDIATE".to_owned());
    }
    for chunk in rows.chunks(MAX_PARAMS / UPSERT_WIDTH) {
        statements.push(
            sqlite_rows_with(
                &upsert,
                chunk.len(),
                UPSERT_WIDTH,
                UPSERT_REVISION_AT,
                revision_cell,
            ) + " RETURNING key, created_at",
        );
    }
    for chunk in rows.chunks(MAX_PARAMS) {
        statements.push(with_rows(
            backend,
            sql!("entry_tags_delete"),
            1,
            chunk.len(),
        ));
    }
    for chunk in tag_rows.chunks(MAX_PARAMS / 2) {
        statements.push(with_rows(backend, sql!("entry_tag_insert"), chunk.len(), 2));
    }
    for chunk in changes.chunks(MAX_PARAMS / CHANGE_WIDTH) {
        statements.push(sqlite_rows_with(
            sql!("change_insert"),
            chunk.len(),
            CHANGE_WIDTH,
            CHANGE_REVISION_AT,
            revision_cell,
        ));
    }
    // Last: the rows above read the counter as it stood.
    statements.push(counter.to_owned());
    if own {
        statements.push("COMMIT".to_owned());
    }
    // The values in the statements' order (chunks follow one another).
    let text = statements.join(";\n");
    let mut query = sqlx::query(&text);
    for row in rows {
        query = row.bind_to(query);
    }
    for row in rows {
        query = query.bind(&row.put.key);
    }
    for (tag, key) in &tag_rows {
        query = query.bind(*tag).bind(*key);
    }
    for change in changes {
        query = change.bind_to(query);
    }
    query = query.bind(to_i64(last));
    let mut done = query.fetch_all(&mut *conn).await?;
    let shift = if own {
        let moved = done
            .pop()
            .ok_or_else(|| StoreError::Corrupt("the counter did not come back".to_owned()))?;
        from_i64(moved.try_get("value")?)
            .checked_sub(last)
            .ok_or_else(|| StoreError::Corrupt("the counter went back".to_owned()))?
    } else {
        0
    };
    settle(results, puts, shift, &created_by_key(&done)?)?;
    Ok(shift)
}

fn created_by_key(rows: &[AnyRow]) -> Result<std::collections::HashMap<String, i64>, StoreError> {
    rows.iter()
        .map(|row| Ok((row.try_get("key")?, row.try_get("created_at")?)))
        .collect()
}

/// Completes each written result of `puts` once its row is written: the
/// revision shifted by `shift` (the counter's value, when the statement
/// took it) and the row's `created_at`.
fn settle(
    results: &mut [PutResult],
    puts: &[&EntryPut],
    shift: u64,
    created: &std::collections::HashMap<String, i64>,
) -> Result<(), StoreError> {
    for (result, put) in results.iter_mut().zip(puts) {
        if let PutResult::Written {
            revision,
            created_at,
        } = result
        {
            *revision += shift;
            *created_at = *created.get(&put.key).ok_or_else(|| {
                StoreError::Corrupt(format!("no row came back for {:?}", put.key))
            })?;
        }
    }
    Ok(())
}

/// Placeholders of one row of `entry_upsert.sql`.
const UPSERT_WIDTH: usize = 22;

/// Where a row's revision is among them (its 13th column).
const UPSERT_REVISION_AT: usize = 12;

/// One entry row as `entry_upsert.sql` takes it.
struct UpsertRow<'a> {
    put: &'a EntryPut,
    revision: u64,
    created_at: i64,
    tags: String,
    metadata: String,
    stored: std::borrow::Cow<'a, [u8]>,
    encoding: &'static str,
}

/// The columns of an [`UpsertRow`], decided here once for both ways a row
/// reaches the store: bound one by one ([`UpsertRow::bind_to`]), or as an
/// element of the JSON array of `postgres/entries_write.sql`, which reads
/// the value as the slice `value_at..value_at + value_len` of a bytea
/// bound beside it.
#[derive(serde::Serialize)]
struct Columns<'a> {
    key: &'a str,
    #[serde(skip)]
    value: &'a [u8],
    value_at: usize,
    value_len: usize,
    media_type: &'a str,
    policy: &'a str,
    tags: &'a str,
    confidence: i64,
    fingerprint: Option<&'a str>,
    metadata: &'a str,
    negative: bool,
    created_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
    revision: i64,
    provider: Option<&'a str>,
    upstream_status: Option<i64>,
    etag: Option<&'a str>,
    last_modified: Option<&'a str>,
    size_bytes: i64,
    encoding: &'a str,
    raw_bytes: Option<i64>,
    accessed_at: i64,
    access_count: i64,
}

impl UpsertRow<'_> {
    /// The row's columns, its value placed at `value_at` of the batch's
    /// values.
    fn columns(&self, value_at: usize) -> Columns<'_> {
        let put = self.put;
        let provenance = put.provenance.as_ref();
        Columns {
            key: &put.key,
            value: &self.stored,
            value_at,
            value_len: self.stored.len(),
            media_type: &put.media_type,
            policy: &put.policy,
            tags: &self.tags,
            confidence: i64::from(put.confidence),
            fingerprint: put.fingerprint.as_deref(),
            metadata: &self.metadata,
            negative: put.negative,
            created_at: self.created_at,
            updated_at: put.now,
            expires_at: put.expires_at,
            revision: to_i64(self.revision),
            provider: provenance.map(|p| p.provider.as_str()),
            upstream_status: provenance.map(|p| i64::from(p.upstream_status)),
            etag: provenance.and_then(|p| p.etag.as_deref()),
            last_modified: provenance.and_then(|p| p.last_modified.as_deref()),
            size_bytes: to_i64(self.stored.len() as u64),
            encoding: self.encoding,
            raw_bytes: (self.encoding != compress::IDENTITY)
                .then_some(to_i64(put.value.len() as u64)),
            accessed_at: put.now,
            access_count: 0,
        }
    }

    /// Binds the row's [`UPSERT_WIDTH`] values, in the statement's column order.
    fn bind_to<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        let c = self.columns(0);
        query
            .bind(c.key)
            .bind(c.value)
            .bind(c.media_type)
            .bind(c.policy)
            .bind(c.tags)
            .bind(c.confidence)
            .bind(c.fingerprint)
            .bind(c.metadata)
            .bind(c.negative)
            .bind(c.created_at)
            .bind(c.updated_at)
            .bind(c.expires_at)
            .bind(c.revision)
            .bind(c.provider)
            .bind(c.upstream_status)
            .bind(c.etag)
            .bind(c.last_modified)
            .bind(c.size_bytes)
            .bind(c.encoding)
            .bind(c.raw_bytes)
            .bind(c.accessed_at)
            .bind(c.access_count)
    }
}

/// A value bound into a selector's condition.
enum Bind {
    Text(String),
    Int(i64),
}

impl Bind {
    fn bind_to<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        match self {
            Bind::Text(text) => query.bind(text.as_str()),
            Bind::Int(int) => query.bind(*int),
        }
    }
}

/// The SQL condition for `selector`, numbering parameters from `first`.
fn selector_condition(backend: Backend, selector: &Selector, first: usize) -> (String, Vec<Bind>) {
    let p = |offset: usize| format!("${}", first + offset);
    match selector {
        Selector::Key(key) => (format!("key = {}", p(0)), vec![Bind::Text(key.clone())]),
        Selector::Keys(keys) => {
            // One JSON array, not a placeholder per key: one statement text
            // for every count (prepared once per connection), and SQLite
            // finds each numbered placeholder by walking the list of them.
            let condition = match backend {
                Backend::Sqlite => format!("key IN (SELECT value FROM json_each({}))", p(0)),
                Backend::Postgres => {
                    format!("key IN (SELECT json_array_elements_text({}::json))", p(0))
                }
            };
            let keys = serde_json::Value::from(keys.as_slice()).to_string();
            (condition, vec![Bind::Text(keys)])
        }
        Selector::KeyPrefix(prefix) => {
            // Not LIKE: SQLite's LIKE ignores case and both treat % and _ as wildcards.
            let condition = match backend {
                Backend::Sqlite => format!("substr(key, 1, length({0})) = {0}", p(0)),
                Backend::Postgres => format!("starts_with(key, {})", p(0)),
            };
            (condition, vec![Bind::Text(prefix.clone())])
        }
        Selector::Tag(tag) => (
            format!("key IN (SELECT key FROM entry_tags WHERE tag = {})", p(0)),
            vec![Bind::Text(tag.clone())],
        ),
        Selector::Policy(policy) => (
            format!("policy = {}", p(0)),
            vec![Bind::Text(policy.clone())],
        ),
        Selector::PolicyTag { policy, tag } => (
            format!(
                "policy = {} AND key IN (SELECT key FROM entry_tags WHERE tag = {})",
                p(0),
                p(1)
            ),
            vec![Bind::Text(policy.clone()), Bind::Text(tag.clone())],
        ),
        Selector::All => ("1 = 1".to_owned(), vec![]),
        Selector::Expired { now, stale_before } => (
            format!(
                "expires_at IS NOT NULL AND (expires_at <= {} OR (negative AND expires_at <= {}))",
                p(0),
                p(1)
            ),
            vec![Bind::Int(*stale_before), Bind::Int(*now)],
        ),
    }
}

fn confidence_from(value: i64) -> u8 {
    u8::try_from(value.clamp(0, 100)).unwrap_or(0)
}

/// The least string above every string starting with `prefix`, bytewise;
/// `None` when there is none (no prefix, or one of only `char::MAX`).
/// UTF-8 keeps code-point order and no character's encoding is a prefix of
/// another's, so raising the last character that can be raised bounds the
/// range.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub(crate) fn entry_from_row(row: &AnyRow) -> Result<Entry, StoreError> {
    let metadata: String = row.try_get("metadata")?;
    let provider: Option<String> = row.try_get("provider")?;
    let provenance = match provider {
        Some(provider) => Some(Provenance {
            provider,
            upstream_status: row
                .try_get::<Option<i64>, _>("upstream_status")?
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(0),
            etag: row.try_get("etag")?,
            last_modified: row.try_get("last_modified")?,
        }),
        None => None,
    };
    Ok(Entry {
        key: row.try_get("key")?,
        value: Bytes::from(compress::decode(
            &row.try_get::<String, _>("encoding")?,
            row.try_get::<Vec<u8>, _>("value")?,
            row.try_get("raw_bytes")?,
        )?),
        media_type: row.try_get("media_type")?,
        policy: row.try_get("policy")?,
        tags: parse_tags(&row.try_get::<String, _>("tags")?)?,
        confidence: confidence_from(row.try_get("confidence")?),
        fingerprint: row.try_get("fingerprint")?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?,
        // Read as 0/1: the Any driver cannot decode SQLite booleans.
        negative: row.try_get::<i64, _>("negative")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
        revision: from_i64(row.try_get("revision")?),
        provenance,
    })
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_range_ends_above_every_key_that_starts_with_it() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("artist:").as_deref(), Some("artist;"));
        // The last character raised across an encoding's length change.
        assert_eq!(prefix_end("a\u{7f}").as_deref(), Some("a\u{80}"));
        // Surrogates are no characters: skipped.
        assert_eq!(prefix_end("\u{d7ff}").as_deref(), Some("\u{e000}"));
        // char::MAX cannot be raised: the character before it is.
        assert_eq!(prefix_end("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10ffff}"), None);
        for (prefix, key) in [("a\u{7f}", "a\u{7f}\u{10ffff}zz"), ("é", "é\u{10ffff}")] {
            let end = prefix_end(prefix).expect("an end");
            assert!(key.as_bytes() < end.as_bytes(), "{key:?} < {end:?}");
        }
    }
}
