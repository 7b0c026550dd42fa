//! Transparent compression of stored values: a value of a media type that
//! compresses (JSON, XML, text) and of at least [`Compression::min_bytes`]
//! is stored as zstd when that makes it smaller. Readers get the bytes
//! written; budgets and Stats count what is stored. One rule, here.

use std::{borrow::Cow, cell::RefCell};

use crate::StoreError;

/// The `encoding` column of a value stored as written.
pub(crate) const IDENTITY: &str = "identity";
/// The `encoding` column of a zstd frame.
pub(crate) const ZSTD: &str = "zstd";

/// When and how hard values are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// Values shorter than this are stored as written.
    pub min_bytes: usize,
    /// zstd's level (1 fastest … 19 smallest).
    pub level: i32,
}

impl Default for Compression {
    fn default() -> Compression {
        Compression {
            min_bytes: 1024,
            level: 3,
        }
    }
}

/// Whether values of `media_type` are worth compressing: text, JSON and
/// XML (and their `+json`, `+xml` kinds); never images, audio or archives.
pub fn compressible(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind == "text"
        || (kind == "application"
            && (matches!(
                subtype,
                "json" | "xml" | "javascript" | "ecmascript" | "x-ndjson" | "ndjson" | "csv"
            ) || subtype.ends_with("+json")
                || subtype.ends_with("+xml")))
}

/// The bytes to store for `value` and their encoding.
pub(crate) fn encode<'a>(
    value: &'a [u8],
    media_type: &str,
    compression: Option<&Compression>,
) -> (Cow<'a, [u8]>, &'static str) {
    let Some(compression) = compression else {
        return (Cow::Borrowed(value), IDENTITY);
    };
    if value.len() < compression.min_bytes.max(1) || !compressible(media_type) {
        return (Cow::Borrowed(value), IDENTITY);
    }
    match compress(value, compression.level) {
        Ok(frame) if frame.len() < value.len() => (Cow::Owned(frame), ZSTD),
        // Incompressible (or the encoder failed): as written.
        _ => (Cow::Borrowed(value), IDENTITY),
    }
}

thread_local! {
    // One zstd context per thread, kept: making one allocates its workspace
    // (about a megabyte at level 3), more work than compressing a small value.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn compress(value: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((at, compressor)) if *at == level => compressor,
            _ => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        compressor.compress(value)
    })
}

fn decompress(frame: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(decompressor) => decompressor,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(frame, capacity)
    })
}

/// The value as written, from its stored bytes; `raw_bytes` is its length.
pub(crate) fn decode(
    encoding: &str,
    stored: Vec<u8>,
    raw_bytes: Option<i64>,
) -> Result<Vec<u8>, StoreError> {
    match encoding {
        IDENTITY => Ok(stored),
        // A listing without values reads an empty value.
        ZSTD if stored.is_empty() => Ok(stored),
        ZSTD => {
            let capacity = raw_bytes
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| StoreError::Corrupt("a zstd value without its length".to_owned()))?;
            decompress(&stored, capacity)
                .map_err(|e| StoreError::Corrupt(format!("a zstd value that does not decode: {e}")))
        }
        other => Err(StoreError::Corrupt(format!(
            "unknown value encoding {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_json_and_xml_compress_and_images_do_not() {
        for media in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.musicbrainz+json",
            "application/xml",
            "application/atom+xml",
            "text/plain",
            "text/html",
        ] {
            assert!(compressible(media), "{media}");
        }
        for media in [
            "image/jpeg",
            "image/png",
            "application/octet-stream",
            "audio/mpeg",
            "",
            "json",
        ] {
            assert!(!compressible(media), "{media}");
        }
    }

    #[test]
    fn a_value_round_trips_and_only_shrinks() {
        let json =
            br#"{"name":"Daft Punk","releases":[{"title":"Discovery"},{"title":"Discovery"}]}"#
                .repeat(40);
        let on = Compression::default();
        let (stored, encoding) = encode(&json, "application/json", Some(&on));
        assert_eq!(encoding, ZSTD);
        assert!(
            stored.len() < json.len() / 5,
            "{} of {}",
            stored.len(),
            json.len()
        );
        let back = decode(encoding, stored.into_owned(), Some(json.len() as i64)).expect("decode");
        assert_eq!(back, json);
        // Too short, not compressible, switched off, or bigger compressed: as written.
        assert_eq!(
            encode(&json[..100], "application/json", Some(&on)).1,
            IDENTITY
        );
        assert_eq!(encode(&json, "image/png", Some(&on)).1, IDENTITY);
        assert_eq!(encode(&json, "application/json", None).1, IDENTITY);
        // xorshift64: bytes with nothing for zstd to find.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert_eq!(encode(&noise, "text/plain", Some(&on)).1, IDENTITY);
        assert!(decode(ZSTD, b"not zstd".to_vec(), Some(10)).is_err());
        assert!(decode("brotli", Vec::new(), None).is_err());
    }
}
