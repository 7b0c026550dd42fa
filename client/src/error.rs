//! [`ClientError`]: what a call through [`Client`](crate::Client) can fail with.
//!
//! The server reports failures as `tonic::Status` codes (see the conventions in
//! `cache.proto`); the codes a caller is expected to act on get their own
//! variant, everything else stays a [`tonic::Status`] under
//! [`ClientError::Other`].

use std::error::Error as _;

use tonic::{Code, Status, TimeoutExpired};

/// An error from connecting to Roadie or from one RPC.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is malformed, or the server did not accept a connection
    /// within the connect timeout.
    #[error("cannot connect to {endpoint}: {cause}")]
    Connect {
        /// The endpoint as it was tried (after adding a missing `http://`).
        endpoint: String,
        /// Why, with the transport's own causes flattened into one line;
        /// a timeout has no underlying error to keep as a source.
        cause: String,
    },
    /// The token given to [`Client::with_token`](crate::Client::with_token)
    /// cannot be sent.
    #[error("invalid token: {0}")]
    Token(String),
    /// INVALID_ARGUMENT: the request broke a limit.
    #[error("{}", invalid_argument_text(.field.as_deref(), .message))]
    InvalidArgument {
        /// The field the server named in its `google.rpc.BadRequest` detail.
        field: Option<String>,
        /// The status message, as the server sent it.
        message: String,
    },
    /// NOT_FOUND, for example a job id that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// FAILED_PRECONDITION: the request is valid but not in the current state.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// RESOURCE_EXHAUSTED: a size or rate limit was hit.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// OUT_OF_RANGE, for example a value larger than the server accepts.
    /// A watch revision older than the retained log is
    /// [`Compacted`](ClientError::Compacted) instead.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// OUT_OF_RANGE from Cache.Watch: the change log no longer holds every
    /// revision after `after`, so the changes in between cannot be streamed.
    /// Resync (read again what you mirror), then watch from the revision your
    /// copy reflects.
    #[error(
        "revision {after} is no longer in the change log (the oldest retained \
         revision is {oldest}): resync, then watch from the revision your copy reflects"
    )]
    Compacted {
        /// The revision the watch asked to continue after.
        after: u64,
        /// The oldest revision the server still retains.
        oldest: u64,
    },
    /// UNAVAILABLE: the server or its store cannot be reached; retry with backoff.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// DEADLINE_EXCEEDED, from the server or from the client's own deadline.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// UNIMPLEMENTED: the server does not offer this RPC.
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// PERMISSION_DENIED: the token's role does not cover the call (the
    /// message names the role needed), or the server may not fetch the URL.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// UNAUTHENTICATED: the server wants a token and got none it knows.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Any other status, kept whole (details and metadata included).
    #[error("server error ({:?}): {}", .0.code(), .0.message())]
    Other(Status),
}

impl ClientError {
    /// The gRPC code behind the error; `None` for a failed connection, which
    /// never reached the point of getting a status.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Connect { .. } | ClientError::Token(_) => None,
            ClientError::InvalidArgument { .. } => Some(Code::InvalidArgument),
            ClientError::NotFound(_) => Some(Code::NotFound),
            ClientError::FailedPrecondition(_) => Some(Code::FailedPrecondition),
            ClientError::ResourceExhausted(_) => Some(Code::ResourceExhausted),
            ClientError::OutOfRange(_) | ClientError::Compacted { .. } => Some(Code::OutOfRange),
            ClientError::Unavailable(_) => Some(Code::Unavailable),
            ClientError::DeadlineExceeded(_) => Some(Code::DeadlineExceeded),
            ClientError::Unimplemented(_) => Some(Code::Unimplemented),
            ClientError::PermissionDenied(_) => Some(Code::PermissionDenied),
            ClientError::Unauthenticated(_) => Some(Code::Unauthenticated),
            ClientError::Other(status) => Some(status.code()),
        }
    }

    /// The field an INVALID_ARGUMENT error named, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::InvalidArgument { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => ClientError::InvalidArgument {
                field: roadie_proto::violated_field(&status).map(|(field, _)| field),
                message,
            },
            Code::NotFound => ClientError::NotFound(message),
            Code::FailedPrecondition => ClientError::FailedPrecondition(message),
            Code::ResourceExhausted => ClientError::ResourceExhausted(message),
            Code::OutOfRange => ClientError::OutOfRange(message),
            Code::Unavailable => ClientError::Unavailable(message),
            Code::DeadlineExceeded => ClientError::DeadlineExceeded(message),
            // tonic reports its own client-side deadline as CANCELLED; to the
            // caller it is the same thing as the server giving up in time.
            Code::Cancelled if is_local_timeout(&status) => ClientError::DeadlineExceeded(message),
            Code::Unimplemented => ClientError::Unimplemented(message),
            Code::PermissionDenied => ClientError::PermissionDenied(message),
            Code::Unauthenticated => ClientError::Unauthenticated(message),
            _ => ClientError::Other(status),
        }
    }
}

/// Whether tonic built `status` from its own `TimeoutExpired` error.
fn is_local_timeout(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// "invalid argument `key`: longer than 1024 bytes". The server's message
/// already starts with "key: " (see `roadie_proto::field_violation`), so that
/// prefix is not repeated.
fn invalid_argument_text(field: Option<&str>, message: &str) -> String {
    match field {
        Some(field) => {
            let description = message
                .strip_prefix(field)
                .and_then(|rest| rest.strip_prefix(": "))
                .unwrap_or(message);
            format!("invalid argument `{field}`: {description}")
        }
        None => format!("invalid argument: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_violated_field() {
        let status = roadie_proto::field_violation("key", "longer than 1024 bytes");
        let error = ClientError::from(status);
        match &error {
            ClientError::InvalidArgument { field, message } => {
                assert_eq!(field.as_deref(), Some("key"));
                assert_eq!(message, "key: longer than 1024 bytes");
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        assert_eq!(error.field(), Some("key"));
        assert_eq!(error.code(), Some(Code::InvalidArgument));
        assert_eq!(
            error.to_string(),
            "invalid argument `key`: longer than 1024 bytes"
        );
    }

    #[test]
    fn invalid_argument_without_detail_has_no_field() {
        let error = ClientError::from(Status::invalid_argument("bad request"));
        match &error {
            ClientError::InvalidArgument { field, message } => {
                assert_eq!(*field, None);
                assert_eq!(message, "bad request");
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        assert_eq!(error.to_string(), "invalid argument: bad request");
    }

    #[test]
    fn expected_codes_get_their_own_variant() {
        let cases = [
            (Code::NotFound, "NotFound"),
            (Code::FailedPrecondition, "FailedPrecondition"),
            (Code::ResourceExhausted, "ResourceExhausted"),
            (Code::OutOfRange, "OutOfRange"),
            (Code::Unavailable, "Unavailable"),
            (Code::DeadlineExceeded, "DeadlineExceeded"),
            (Code::Unimplemented, "Unimplemented"),
            (Code::PermissionDenied, "PermissionDenied"),
            (Code::Unauthenticated, "Unauthenticated"),
        ];
        for (code, variant) in cases {
            let error = ClientError::from(Status::new(code, "why"));
            let (name, message) = match &error {
                ClientError::NotFound(m) => ("NotFound", m),
                ClientError::FailedPrecondition(m) => ("FailedPrecondition", m),
                ClientError::ResourceExhausted(m) => ("ResourceExhausted", m),
                ClientError::OutOfRange(m) => ("OutOfRange", m),
                ClientError::Unavailable(m) => ("Unavailable", m),
                ClientError::DeadlineExceeded(m) => ("DeadlineExceeded", m),
                ClientError::Unimplemented(m) => ("Unimplemented", m),
                ClientError::PermissionDenied(m) => ("PermissionDenied", m),
                ClientError::Unauthenticated(m) => ("Unauthenticated", m),
                other => panic!("{code:?} became {other:?}"),
            };
            assert_eq!(name, variant, "{code:?}");
            assert_eq!(message, "why");
            assert_eq!(error.code(), Some(code));
        }
    }

    #[test]
    fn other_codes_keep_the_status() {
        for code in [
            Code::Internal,
            Code::Unknown,
            Code::AlreadyExists,
            Code::Aborted,
            Code::DataLoss,
            Code::Cancelled,
        ] {
            let error = ClientError::from(Status::new(code, "boom"));
            match &error {
                ClientError::Other(status) => {
                    assert_eq!(status.code(), code);
                    assert_eq!(status.message(), "boom");
                }
                other => panic!("{code:?} became {other:?}"),
            }
            assert_eq!(error.code(), Some(code));
        }
        let error = ClientError::from(Status::internal("boom"));
        assert_eq!(error.to_string(), "server error (Internal): boom");
    }

    #[test]
    fn local_deadline_counts_as_deadline_exceeded() {
        let status = Status::from_error(Box::new(TimeoutExpired(())));
        assert_eq!(status.code(), Code::Cancelled);
        let error = ClientError::from(status);
        assert!(
            matches!(error, ClientError::DeadlineExceeded(_)),
            "got {error:?}"
        );
        assert_eq!(error.code(), Some(Code::DeadlineExceeded));
    }

    #[test]
    fn compacted_is_out_of_range_and_names_both_revisions() {
        let error = ClientError::Compacted {
            after: 3,
            oldest: 42,
        };
        assert_eq!(error.code(), Some(Code::OutOfRange));
        let text = error.to_string();
        assert!(text.starts_with("revision 3 is no longer"), "{text}");
        assert!(text.contains("oldest retained revision is 42"), "{text}");
    }

    #[test]
    fn connect_has_no_code() {
        let error = ClientError::Connect {
            endpoint: "http://127.0.0.1:1".to_owned(),
            cause: "connection refused".to_owned(),
        };
        assert_eq!(error.code(), None);
        assert_eq!(
            error.to_string(),
            "cannot connect to http://127.0.0.1:1: connection refused"
        );
    }

    #[test]
    fn field_prefix_is_only_stripped_when_it_matches() {
        assert_eq!(
            invalid_argument_text(Some("tags"), "too many tags"),
            "invalid argument `tags`: too many tags"
        );
        assert_eq!(
            invalid_argument_text(Some("tag"), "tags: too many"),
            "invalid argument `tag`: tags: too many"
        );
    }
}
