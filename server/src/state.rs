//! The state shared by the services and background tasks of one server.

use std::time::SystemTime;

use std::collections::BTreeMap;

use roadie_providers::Provider;
use roadie_store::Store;
use tokio_util::sync::CancellationToken;

use crate::{
    access::AccessLog,
    budgets::Budgets,
    config::Settings,
    feed::Feed,
    stats::Stats,
    waiter::{JobWaiter, WorkSignal},
};

/// Shared by every service and task, behind one `Arc`.
#[derive(Debug)]
pub struct AppState {
    /// The loaded configuration.
    pub settings: Settings,
    /// The database.
    pub store: Store,
    /// Answer counters since start.
    pub stats: Stats,
    /// Reads waiting to be flushed.
    pub access: AccessLog,
    /// What this server's writes added to each policy; wakes maintenance
    /// when one may have passed its budget, so budgets hold between passes.
    pub budgets: Budgets,
    /// When the server started.
    pub started_at: SystemTime,
    /// The providers that are on, for `Fetch` and `Stats`.
    pub providers: BTreeMap<String, Provider>,
    /// Provider hosts whose address check passed lately, for `Fetch`.
    pub checked_hosts: roadie_providers::CheckedHosts,
    /// Wakes `Fetch` calls waiting on jobs.
    pub waiter: JobWaiter,
    /// Wakes idle workers after enqueues.
    pub work: std::sync::Arc<WorkSignal>,
    /// Stops the server's background tasks.
    pub background: CancellationToken,
    /// The change-log tail, the watchers' ring and the hot tier.
    pub feed: std::sync::Arc<Feed>,
    /// Fires when shutdown begins, ending Watch streams.
    pub stopping: CancellationToken,
    /// Whether the server can answer now (the store probe and the drain
    /// set it).
    pub ready: roadie_telemetry::admin::Readiness,
}
