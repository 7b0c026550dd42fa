//! End-to-end tests: a real `roadie-server` on 127.0.0.1:0 over a real
//! store (SQLite, and Postgres with a fresh database per test), driven
//! through the Rust client, the `roadie` CLI code and, for process-level
//! behaviour, the `roadie-server` binary itself.

mod common;

mod abuse;
mod bad_input;
mod cache;
mod changes;
mod cli;
mod compression;
mod faults;
mod fetch;
mod fuzz;
mod hot_tier;
mod jobs;
mod listing;
mod pki;
mod process;
mod security;
mod snapshots;
mod warm;
mod watch;
mod watch_client;
