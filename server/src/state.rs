//! The state shared by the services and background tasks of one server.

use std::time::SystemTime;

use roadie_store::Store;
use tokio::sync::Notify;

use crate::{config::Settings, maintenance::AccessLog, stats::Stats};

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
    /// Wakes maintenance after a write, so budgets hold between passes.
    pub nudge: Notify,
    /// When the server started.
    pub started_at: SystemTime,
}
