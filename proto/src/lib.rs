//! The `roadie.v1` gRPC API, generated from `proto/roadie/v1/*.proto` by
//! protox at build time.
//!
//! Server and client share this crate and nothing else: it holds the
//! generated messages and service stubs ([`v1`]), the encoded descriptor set
//! for gRPC reflection ([`FILE_DESCRIPTOR_SET`]), and the helpers that put a
//! field violation into a `tonic::Status` and read it back ([`field_violation`],
//! [`violated_field`]), so both sides agree on how a bad field is reported.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Generated types and service stubs of package `roadie.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("roadie.v1");
}

/// The encoded `FileDescriptorSet` of every `roadie.v1` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/roadie_descriptor.bin"));

/// An INVALID_ARGUMENT status naming `field`, with a `google.rpc.BadRequest`
/// detail so clients in any language can read the field without parsing text.
pub fn field_violation(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    let details = ErrorDetails::with_bad_request_violation(field, description.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        details,
    )
}

/// The field named by the first `BadRequest` violation in `status`, if any.
pub fn violated_field(status: &Status) -> Option<(String, String)> {
    let bad_request = status.get_details_bad_request()?;
    let violation = bad_request.field_violations.into_iter().next()?;
    Some((violation.field, violation.description))
}

/// `ErrorInfo.domain` of Roadie's own error reasons.
pub const ERROR_DOMAIN: &str = "roadie.v1";
/// `ErrorInfo.reason` of a Watch whose start revision was compacted away.
pub const REASON_COMPACTED: &str = "REVISION_COMPACTED";
/// `ErrorInfo.metadata` key holding the oldest revision still retained.
pub const OLDEST_REVISION: &str = "oldest_revision";

/// OUT_OF_RANGE for a Watch asking for changes after `after`, when the log
/// only holds revisions from `oldest` on. The oldest retained revision is in
/// the message and, for programs, in a `google.rpc.ErrorInfo` detail
/// (reason [`REASON_COMPACTED`], metadata [`OLDEST_REVISION`]).
pub fn revision_compacted(after: u64, oldest: u64) -> Status {
    let details = ErrorDetails::with_error_info(
        REASON_COMPACTED,
        ERROR_DOMAIN,
        [(OLDEST_REVISION.to_owned(), oldest.to_string())],
    );
    Status::with_error_details(
        Code::OutOfRange,
        format!(
            "after_revision {after} is older than the retained change log; \
             the oldest retained revision is {oldest}: resync, then watch from \
             the revision your copy reflects"
        ),
        details,
    )
}

/// The oldest retained revision named by a [`revision_compacted`] status.
pub fn compacted_oldest(status: &Status) -> Option<u64> {
    let info = status.get_details_error_info()?;
    if info.reason != REASON_COMPACTED {
        return None;
    }
    info.metadata.get(OLDEST_REVISION)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_round_trips_through_status() {
        let status = field_violation("key", "longer than 1024 bytes");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "key: longer than 1024 bytes");
        assert_eq!(
            violated_field(&status),
            Some(("key".to_owned(), "longer than 1024 bytes".to_owned()))
        );
    }

    #[test]
    fn compaction_names_the_oldest_revision() {
        let status = revision_compacted(3, 42);
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(status.message().contains("oldest retained revision is 42"));
        assert_eq!(compacted_oldest(&status), Some(42));
        assert_eq!(compacted_oldest(&field_violation("key", "bad")), None);
    }
}
