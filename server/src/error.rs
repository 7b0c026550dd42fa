//! [`ApiError`] and its one mapping to `tonic::Status`.

use roadie_store::StoreError;
use tonic::Status;

use crate::validate::{FieldError, bounded};

/// A fetch the provider's rules refuse: a URL outside it is the request's
/// fault (INVALID_ARGUMENT on `path`), an address or redirect it may not
/// reach is PERMISSION_DENIED.
impl From<roadie_providers::Refusal> for ApiError {
    fn from(refusal: roadie_providers::Refusal) -> ApiError {
        use roadie_providers::Refusal;
        match refusal {
            Refusal::PrivateAddress { .. } | Refusal::Redirect { .. } => {
                ApiError::PermissionDenied(refusal.to_string())
            }
            Refusal::BadUrl(_) | Refusal::OutsideProvider { .. } => {
                FieldError::new("path", refusal.to_string()).into()
            }
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field broke a limit.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but not in the current state of things.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request names something Roadie may not fetch.
    #[error("{0}")]
    PermissionDenied(String),
    /// The RPC is designed but arrives with a later part of Roadie.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// A limit on what one client may hold was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is draining for shutdown; the message says how to resume.
    #[error("{0}")]
    ShuttingDown(String),
    /// A Watch asked for (or reached) revisions the log no longer holds.
    #[error("revision {after} is compacted; the oldest retained is {oldest}")]
    Compacted {
        /// The revision the watch continues after.
        after: u64,
        /// The oldest retained revision.
        oldest: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        match error {
            // Messages may quote client input: each is bounded here, once.
            ApiError::Field(field) => {
                roadie_proto::field_violation(&bounded(field.field), bounded(field.message))
            }
            ApiError::NotFound(what) => Status::not_found(bounded(what)),
            ApiError::FailedPrecondition(why) => Status::failed_precondition(bounded(why)),
            ApiError::PermissionDenied(why) => Status::permission_denied(bounded(why)),
            ApiError::Unimplemented(what) => Status::unimplemented(what),
            ApiError::ShuttingDown(how) => Status::unavailable(how),
            ApiError::ResourceExhausted(why) => Status::resource_exhausted(why),
            ApiError::Store(StoreError::Unavailable(cause)) => {
                tracing::warn!(%cause, "store unavailable");
                Status::unavailable("the store is unavailable; retry with backoff")
            }
            ApiError::Store(StoreError::Full(cause)) => {
                tracing::error!(%cause, "store full");
                Status::resource_exhausted(
                    "the store is full: nothing was written; reads still work, \
                     and writes succeed again once the store has free space",
                )
            }
            ApiError::Compacted { after, oldest } => {
                roadie_proto::revision_compacted(after, oldest)
            }
            // The database's own words stay in the log, not in the answer.
            ApiError::Store(StoreError::Conflict(cause)) => {
                tracing::info!(%cause, "write conflict");
                Status::aborted("the write conflicted with another; retry it")
            }
            ApiError::Store(
                error @ (StoreError::Config(_)
                | StoreError::Schema(_)
                | StoreError::Corrupt(_)
                | StoreError::Database(_)
                | StoreError::Migrate(_)),
            ) => {
                tracing::error!(%error, "store error");
                Status::internal("internal store error")
            }
        }
    }
}
