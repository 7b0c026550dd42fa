//! A typed Rust client for Roadie, and the `roadie` command-line tool built
//! on it.
//!
//! [`Client`] wraps the generated `roadie.v1` Cache and Jobs stubs over one
//! tonic channel: one `async` method per RPC, taking the request message from
//! [`proto`] and returning its answer, with every non-OK status turned into a
//! [`ClientError`] whose expected cases (a rejected field, UNAVAILABLE, an
//! expired deadline, ...) are typed.
//!
//! ```no_run
//! # async fn example() -> Result<(), roadie_client::ClientError> {
//! use std::time::Duration;
//! use roadie_client::proto::GetRequest;
//!
//! let client = roadie_client::connect("127.0.0.1:50051", Duration::from_secs(5)).await?;
//! let answer = client
//!     .get(GetRequest { key: "artist:daft punk".into(), ..Default::default() })
//!     .await?;
//! println!("{:?}", answer.status());
//! # Ok(())
//! # }
//! ```
//!
//! This crate depends on `roadie-proto` and the gRPC stack only: it knows
//! nothing of the store, and it must not, so that it can be used (and
//! shipped as the CLI) without a database driver.
//!
//! # Layout
//!
//! - [`Client`], [`connect`], [`from_channel`]: the typed client.
//! - [`ClientError`]: the one error type of every call.
//! - [`Watch`], [`WatchEvent`] ([`watch`]): the change stream, resumed across
//!   disconnects from the last revision seen.
//! - [`cli`]: the `roadie` command-line tool (arguments, commands, output and
//!   exit codes); `src/bin/roadie.rs` only parses and calls [`cli::run`].

use std::time::Duration;

pub use roadie_proto::v1 as proto;

pub mod cli;
mod client;
mod error;
pub mod watch;

pub use client::{Client, ConnectOptions, MAX_MESSAGE_BYTES};
pub use error::ClientError;
pub use watch::{Watch, WatchEvent};

/// Connects to a Roadie server; see [`Client::connect`].
pub async fn connect(
    endpoint: impl Into<String>,
    connect_timeout: Duration,
) -> Result<Client, ClientError> {
    Client::connect(endpoint, connect_timeout).await
}

/// Wraps an existing channel; see [`Client::from_channel`].
pub fn from_channel(channel: tonic::transport::Channel) -> Client {
    Client::from_channel(channel)
}
