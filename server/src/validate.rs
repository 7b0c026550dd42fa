//! Request validation against the limits of the data model. Every check
//! returns a [`FieldError`] naming the field and the limit it broke.

use std::collections::HashMap;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Most tags on one entry.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 256;
/// Most metadata pairs on one entry.
pub const MAX_METADATA_PAIRS: usize = 32;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 128;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 4096;
/// Longest media type, in bytes.
pub const MAX_MEDIA_TYPE_BYTES: usize = 255;
/// Longest fingerprint, in bytes.
pub const MAX_FINGERPRINT_BYTES: usize = 256;
/// Longest policy or provider name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Highest confidence.
pub const MAX_CONFIDENCE: u32 = 100;
/// Longest TTL or staleness window a request may name: 100 years.
pub const MAX_DURATION_SECS: i64 = 100 * 366 * 24 * 60 * 60;
/// Most bytes of client input an error message quotes back.
pub const MAX_QUOTED_BYTES: usize = 64;
/// Longest status message (and field name) the server sends: gRPC carries
/// both in headers, and a client refuses headers past its limit (8 KiB in
/// many), which would turn a clear error into a transport one.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Client input as an error message quotes it: in quotes, escaped, and cut
/// to [`MAX_QUOTED_BYTES`] with its full length named.
pub fn quoted(input: &str) -> String {
    if input.len() <= MAX_QUOTED_BYTES {
        return format!("{input:?}");
    }
    format!(
        "{:?}… ({} bytes)",
        &input[..floor_char_boundary(input, MAX_QUOTED_BYTES)],
        input.len()
    )
}

/// `message` cut to [`MAX_MESSAGE_BYTES`]: the last guard, after
/// [`quoted`], against echoing a client's megabyte back in a header.
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        message.truncate(floor_char_boundary(&message, MAX_MESSAGE_BYTES - 3));
        message.push('…');
    }
    message
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// A rejected request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's name as in the .proto (`tags[3]`, `metadata["k"]`).
    pub field: String,
    /// What is wrong, naming the limit.
    pub message: String,
}

impl FieldError {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// 1 to 1024 bytes of UTF-8 without control characters.
pub fn key(field: &str, key: &str) -> Result<(), FieldError> {
    text(field, key, MAX_KEY_BYTES)
}

/// Non-empty text within `max` bytes and without control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes, the limit is {max}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(FieldError::new(
            field,
            format!("contains the control character {:?}", c),
        ));
    }
    Ok(())
}

/// Items per page of a listing when the request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Most items per page of a listing.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A listing's page size: 0 means the default, above the limit is refused.
pub fn page_size(field: &str, size: u32) -> Result<u32, FieldError> {
    match size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(FieldError::new(
            field,
            format!("is {n}, the limit is {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n),
    }
}

/// Text that may be empty (an optional field), else as [`text`].
pub fn optional_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        Ok(())
    } else {
        text(field, value, max)
    }
}

/// Up to 32 tags of up to 256 bytes.
pub fn tags(field: &str, tags: &[String]) -> Result<(), FieldError> {
    if tags.len() > MAX_TAGS {
        return Err(FieldError::new(
            field,
            format!("has {} tags, the limit is {MAX_TAGS}", tags.len()),
        ));
    }
    for (i, tag) in tags.iter().enumerate() {
        text(&format!("{field}[{i}]"), tag, MAX_TAG_BYTES)?;
    }
    Ok(())
}

/// A small string map.
pub fn metadata(field: &str, metadata: &HashMap<String, String>) -> Result<(), FieldError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(FieldError::new(
            field,
            format!(
                "has {} pairs, the limit is {MAX_METADATA_PAIRS}",
                metadata.len()
            ),
        ));
    }
    for (key, value) in metadata {
        text(
            &format!("{field} key {}", quoted(key)),
            key,
            MAX_METADATA_KEY_BYTES,
        )?;
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(FieldError::new(
                format!("{field}[{}]", quoted(key)),
                format!(
                    "is {} bytes, the limit is {MAX_METADATA_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

/// 0 to 100.
pub fn confidence(field: &str, value: u32) -> Result<u8, FieldError> {
    if value > MAX_CONFIDENCE {
        return Err(FieldError::new(
            field,
            format!("is {value}, the limit is {MAX_CONFIDENCE}"),
        ));
    }
    u8::try_from(value).map_err(|_| FieldError::new(field, "out of range"))
}

/// A non-negative duration of at most 100 years, in milliseconds.
pub fn duration_ms(field: &str, duration: &prost_types::Duration) -> Result<i64, FieldError> {
    if duration.seconds < 0 || duration.nanos < 0 {
        return Err(FieldError::new(field, "must not be negative"));
    }
    if duration.seconds > MAX_DURATION_SECS {
        return Err(FieldError::new(
            field,
            format!("is longer than the limit of {MAX_DURATION_SECS} seconds"),
        ));
    }
    Ok(duration.seconds * 1000 + i64::from(duration.nanos / 1_000_000))
}

/// A point in time as ms since the epoch, within the years 0 to 9999.
pub fn timestamp_ms(field: &str, at: &prost_types::Timestamp) -> Result<i64, FieldError> {
    // 0000-01-01 and 9999-12-31, as protobuf's Timestamp bounds them.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&at.seconds) || !(0..1_000_000_000).contains(&at.nanos)
    {
        return Err(FieldError::new(
            field,
            "is outside the years 0001 to 9999 or has nanos outside 0 to 999999999",
        ));
    }
    Ok(at.seconds * 1000 + i64::from(at.nanos / 1_000_000))
}

pub use roadie_config::is_policy_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_input_and_messages_are_bounded_on_char_boundaries() {
        assert_eq!(quoted("generic"), "\"generic\"");
        let long = "é".repeat(100);
        let q = quoted(&long);
        assert!(q.ends_with("… (200 bytes)"), "{q}");
        assert!(q.len() < MAX_QUOTED_BYTES + 20, "{q}");
        let message = bounded("ü".repeat(MAX_MESSAGE_BYTES));
        assert!(message.len() <= MAX_MESSAGE_BYTES && message.ends_with('…'));
        assert_eq!(bounded("short".to_owned()), "short");
    }

    #[test]
    fn keys_are_bounded_utf8_without_control_characters() {
        assert!(key("key", "https://musicbrainz.org/ws/2/artist/ü").is_ok());
        assert!(key("key", &"k".repeat(1024)).is_ok());
        let error = key("key", &"k".repeat(1025)).expect_err("too long");
        assert_eq!(error.to_string(), "key: is 1025 bytes, the limit is 1024");
        assert!(key("key", "").is_err());
        assert!(
            key("key", "a\nb")
                .expect_err("control")
                .message
                .contains("control")
        );
        assert!(key("key", "a\u{7f}b").is_err());
    }

    #[test]
    fn tags_and_metadata_have_limits() {
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert_eq!(tags("tags", &many).expect_err("count").field, "tags");
        assert_eq!(
            tags("tags", &["ok".to_owned(), "x".repeat(257)])
                .expect_err("len")
                .field,
            "tags[1]"
        );
        assert!(tags("tags", &many[..32]).is_ok());
        let big = HashMap::from([("k".to_owned(), "v".repeat(4097))]);
        assert!(
            metadata("metadata", &big)
                .expect_err("value")
                .message
                .contains("4096")
        );
    }

    #[test]
    fn durations_and_confidence() {
        assert_eq!(
            duration_ms(
                "ttl",
                &prost_types::Duration {
                    seconds: 2,
                    nanos: 5_000_000
                }
            ),
            Ok(2005)
        );
        assert!(
            duration_ms(
                "ttl",
                &prost_types::Duration {
                    seconds: -1,
                    nanos: 0
                }
            )
            .is_err()
        );
        assert!(confidence("confidence", 101).is_err());
        assert_eq!(confidence("confidence", 100), Ok(100));
    }
}
