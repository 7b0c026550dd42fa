//! Connections kept between one task's statements: the committer's, a
//! worker's claims and (on Postgres) its finishes. Each goes to the same
//! database backend every time, warm, instead of the one the pool has left
//! idle longest (sqlx hands idle connections out oldest first, so a
//! worker's few statements woke every backend of its pool in turn), and
//! skips the ping sqlx sends on every connection taken back into the pool.
//! On Postgres its plans are thrown away once a [`REPLAN`]. One rule for
//! all of them, here.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use sqlx::{Any, AnyPool, pool::PoolConnection};

use crate::{Backend, StoreError, TRUSTED_IDLE};

/// How long a plan a kept connection holds may be run. Postgres plans a
/// statement prepared on a connection for its values for five runs, then
/// keeps one generic plan when that costs no more: the batch statement of
/// Puts and finishes (`entries_write.sql`, whose JSON rows are estimated
/// alike whatever they hold) goes generic at once, which spares the
/// planning of each batch. But a plan made while the tables were small (a
/// new database) would go on scanning them whole once they are large, until
/// an ANALYZE invalidates it (autovacuum's, which may be late or off).
/// Thrown away this often, no plan outlives a second of the tables' growth.
pub const REPLAN: Duration = Duration::from_secs(1);

/// A slot for one connection, shared by the clones of a store. Taking it
/// never waits for another user: a second one takes a connection from the
/// pool as before.
#[derive(Debug, Clone, Default)]
pub(crate) struct Kept(Arc<Mutex<Option<Held>>>);

#[derive(Debug)]
struct Held {
    conn: PoolConnection<Any>,
    used: Instant,
    planned: Instant,
}

/// A connection taken from a [`Kept`] slot (or the pool), to give back with
/// [`Kept::keep`] once its statement ended cleanly.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The connection.
    pub conn: PoolConnection<Any>,
    /// Whether its plans were thrown away on taking it.
    pub replanned: bool,
    planned: Instant,
}

impl Kept {
    /// The kept connection if one is there and was used within
    /// [`TRUSTED_IDLE`] (an older one goes back to the pool, which checks it
    /// before anyone uses it again: the database may have ended it), else
    /// one from `pool`; its plans thrown away first when they are older
    /// than [`REPLAN`] or of unknown age.
    pub(crate) async fn take(&self, pool: &AnyPool, backend: Backend) -> Result<Taken, StoreError> {
        let held = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        let (mut conn, planned) = match held {
            Some(held) if held.used.elapsed() <= TRUSTED_IDLE => (held.conn, Some(held.planned)),
            _ => (pool.acquire().await?, None),
        };
        let (planned, replanned) = match planned {
            Some(at) if at.elapsed() <= REPLAN => (at, false),
            // SQLite keeps no plan that outlives its statistics.
            _ if backend != Backend::Postgres => (Instant::now(), false),
            _ => {
                sqlx::query("DISCARD PLANS").execute(&mut *conn).await?;
                (Instant::now(), true)
            }
        };
        Ok(Taken {
            conn,
            replanned,
            planned,
        })
    }

    /// Keeps `taken` for the next statement: call only when its statement
    /// (and any transaction) ended cleanly; dropped instead, a connection
    /// goes back to the pool, which closes it if a transaction was left
    /// open. It is kept only while the pool can still hand everyone else a
    /// connection at once (an idle one, or room to open one), so kept
    /// connections never starve the rest (a pool of one is everyone's), and
    /// never once the pool is closing, whose connections must all come back.
    pub(crate) fn keep(&self, taken: Taken, pool: &AnyPool) {
        let room = pool.num_idle() > 0 || pool.size() < pool.options().get_max_connections();
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() && room && !pool.is_closed() {
            *slot = Some(Held {
                conn: taken.conn,
                used: Instant::now(),
                planned: taken.planned,
            });
        }
    }

    /// Gives the kept connection back to the pool (which is closing).
    pub(crate) fn release(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}
