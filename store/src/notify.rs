//! Postgres notifications between processes. Writers send them from the
//! application (never per-row triggers); each process holds one LISTEN
//! connection for all the channels it hears and fans out in memory (Postgres
//! wakes every listening connection of the database at each notifying
//! commit, whatever its channels). SQLite has none: its readers poll.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::{Backend, Store, StoreError, sql::sql};

/// Ids of finished jobs (comma-separated, a batch at a time), for servers
/// waiting on them.
pub const JOB_CHANNEL: &str = "roadie_jobs";
/// "There is new work", for idle workers: the provider of a job a caller
/// waits for, or empty (background work, or a listener's reconnect).
pub const WORK_CHANNEL: &str = "roadie_work";

/// A query (one row) that tells listeners on [`JOB_CHANNEL`] of the
/// jobs `ended` (a name in the statement, with an `id` column) ended: one
/// notification per 256 jobs, well under Postgres's 8 000 bytes, the ids
/// separated by commas, delivered when the statement's transaction commits,
/// so a waiter that hears reads the end and its entry. Sent by the
/// statement that ends the jobs, not one round trip after it.
pub(crate) fn announce_ended(ended: &str) -> String {
    format!(
        "SELECT count(pg_notify('{channel}', ids)) AS sent FROM
             (SELECT string_agg(id::text, ',') AS ids
              FROM (SELECT id, (row_number() OVER ()) / 256 AS part FROM {ended}) numbered
              GROUP BY part) parts",
        channel = JOB_CHANNEL
    )
}

impl Store {
    /// Sends `payload` on `channel` (Postgres; nothing on SQLite).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query(sql!("notify"))
                .bind(channel)
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// On Postgres, calls `on` with the channel and payload of every
    /// notification sent on any of `channels` until `cancel` fires, on one
    /// connection, reconnecting after failures; returns at once on SQLite.
    /// After each (re)connect `on` hears an empty payload on every channel:
    /// whatever was sent while no one listened is found by looking again.
    pub async fn listen(
        &self,
        channels: &[&str],
        cancel: CancellationToken,
        mut on: impl FnMut(&str, &str) + Send,
    ) {
        if self.backend != Backend::Postgres {
            return;
        }
        let mut announce = true;
        let missed = |on: &mut dyn FnMut(&str, &str)| {
            for channel in channels {
                on(channel, "");
            }
        };
        loop {
            match PgListener::connect(&self.url).await {
                Ok(mut listener) => match listener.listen_all(channels.iter().copied()).await {
                    Ok(()) => loop {
                        // Listening from here on. Whatever was sent before (a
                        // job enqueued while this process started) is found
                        // by looking once more, which an empty payload asks.
                        if std::mem::take(&mut announce) {
                            missed(&mut on);
                        }
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            notification = listener.recv() => match notification {
                                Ok(n) => on(n.channel(), n.payload()),
                                Err(error) => {
                                    tracing::warn!(%error, ?channels, "notifications lost; reconnecting");
                                    break;
                                }
                            }
                        }
                    },
                    Err(error) => {
                        tracing::warn!(%error, ?channels, "cannot LISTEN; falling back to polling")
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, ?channels, "cannot connect to LISTEN; falling back to polling")
                }
            }
            // Whatever was missed meanwhile is found by the callers' polls.
            missed(&mut on);
            announce = true;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
