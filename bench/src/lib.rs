//! `roadie-bench`: Roadie's load generator and the side-by-side comparisons
//! of `BENCHMARKS.md`. Not part of the test suite: it measures, it does not
//! judge, and its figures are only meaningful beside the others of the same
//! run on the same machine.
//!
//! Every target — a `roadie-server` process, the empty tonic service (this
//! binary's `empty-server`), Redis, a loopback HTTP upstream — is driven by
//! the same loops through the same [`load::Call`] shape, at the same
//! concurrency, so the ratios compare like with like.
//!
//! # Layout
//! - [`load`]: closed and open loops, HDR histograms, the [`load::Report`]
//! - [`targets`]: the calls: Roadie RPCs, Redis `GET`, a plain HTTP `GET`
//! - [`etcd`]: etcd's Put, Range and Watch, the reference for a watchable store
//! - [`ceiling`]: the database's own upsert, through the native driver and `sqlx::Any`
//! - [`empty`]: the empty tonic service, the stack's limit
//! - [`upstream`]: the loopback HTTP upstream for fetches and jobs
//! - [`processes`]: `roadie-server`, `roadie-worker`, empty-service and etcd processes
//! - [`queue`]: no-op jobs from a full queue to the last completion, Roadie and River
//! - [`suite`]: every comparison in one run

pub mod ceiling;
pub mod empty;
pub mod etcd;
pub mod load;
pub mod processes;
pub mod queue;
pub mod suite;
pub mod targets;
pub mod upstream;
