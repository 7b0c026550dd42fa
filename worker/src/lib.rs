//! The Roadie worker: the process that turns queued fetch jobs into cache
//! entries by asking upstream providers (MusicBrainz, Discogs, image CDNs, …)
//! over HTTP.
//!
//! Any number of `roadie-worker` processes (the README's "The API in
//! brief" tells the whole story) claim jobs from the shared store, obey each provider's rate limit
//! across the whole deployment, fetch, and write the results back. The
//! `roadie-worker` binary (`main.rs`) only reads flags and configuration and
//! wires these modules together.
//!
//! # Layout
//!
//! - [`fetcher`]: performs ONE upstream request for a job and classifies the
//!   outcome ([`fetcher::Outcome`]). It never retries, sleeps or touches the
//!   store: backoff, rate limits and write-back belong to the job queue that
//!   calls it. It is also the guard that keeps Roadie on the hosts providers
//!   declare: URLs outside a provider's base URL, redirects out of it and
//!   private or loopback addresses are refused ([`fetcher::Refusal`]).
//! - [`runner`]: the claim loop: leases, heartbeats, outcome → cache entry,
//!   retries with backoff, soft and hard stop.
//! - [`settings`]: the shared typed configuration turned into the runner's
//!   providers and options (secret headers read from the environment).
//! - [`retention`]: deletes finished jobs once `jobs.keep_*` has passed.

pub mod fetcher;
pub mod retention;
pub mod runner;
pub mod settings;
