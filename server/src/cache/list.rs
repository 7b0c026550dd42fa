//! ListEntries: entries matching a selector, a page at a time, in key
//! order. Keyset pagination: a page token names the last key given (and the
//! revision the first page read at), so concurrent writes neither shift nor
//! repeat what later pages hold.

use roadie_proto::v1 as pb;
use roadie_store::{EntryFilter, Freshness, now_ms};
use tonic::{Request, Response, Status};

use super::CacheService;
use crate::{
    convert::entry_to_proto,
    error::ApiError,
    validate::{self, FieldError},
};

pub(super) async fn list_entries(
    service: &CacheService,
    request: Request<pb::ListEntriesRequest>,
) -> Result<Response<pb::ListEntriesResponse>, Status> {
    let req = request.into_inner();
    let filter = service.entry_filter(&req)?;
    let page_size = validate::page_size("page_size", req.page_size).map_err(ApiError::from)?;
    let store = &service.state.store;
    let (revision, after) = match req.page_token.as_str() {
        // Read before the first page: every change after it is on the
        // change log, so a Watch from it misses nothing the listing missed.
        "" => (
            store.revision_current().await.map_err(ApiError::from)?,
            String::new(),
        ),
        token => PageToken::parse(token)
            .map(|token| (token.revision, token.after))
            .ok_or_else(|| {
                ApiError::from(FieldError::new(
                    "page_token",
                    "is not a token this server issued",
                ))
            })?,
    };
    // One more than the page tells whether another page follows.
    let mut entries = store
        .entry_list(
            &filter,
            &after,
            page_size + 1,
            !req.without_values,
            now_ms(),
        )
        .await
        .map_err(ApiError::from)?;
    let next_page_token = if entries.len() > page_size as usize {
        entries.truncate(page_size as usize);
        entries
            .last()
            .map(|last| {
                PageToken {
                    revision,
                    after: last.key.clone(),
                }
                .encode()
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    let now = now_ms();
    Ok(Response::new(pb::ListEntriesResponse {
        entries: entries
            .into_iter()
            .map(|e| entry_to_proto(e, now))
            .collect(),
        next_page_token,
        revision,
    }))
}

impl CacheService {
    fn entry_filter(&self, req: &pb::ListEntriesRequest) -> Result<EntryFilter, ApiError> {
        validate::optional_text("key_prefix", &req.key_prefix, validate::MAX_KEY_BYTES)?;
        validate::optional_text("tag", &req.tag, validate::MAX_TAG_BYTES)?;
        if !req.policy.is_empty() {
            self.configured_policy("policy", req.policy.clone())?;
        }
        self.known_provider("provider", &req.provider)?;
        let freshness = match pb::EntryStatus::try_from(req.status) {
            Ok(pb::EntryStatus::Unspecified) => None,
            Ok(pb::EntryStatus::Fresh) => Some(Freshness::Fresh),
            Ok(pb::EntryStatus::Stale) => Some(Freshness::Stale),
            Ok(pb::EntryStatus::Negative) => Some(Freshness::Negative),
            Err(_) => {
                return Err(FieldError::new(
                    "status",
                    format!("unknown EntryStatus {}", req.status),
                )
                .into());
            }
        };
        Ok(EntryFilter {
            key_prefix: req.key_prefix.clone(),
            tag: req.tag.clone(),
            policy: req.policy.clone(),
            provider: req.provider.clone(),
            freshness,
        })
    }
}

/// Where the next page starts: `REVISION.HEX(LAST KEY)`.
#[derive(Debug, PartialEq, Eq)]
struct PageToken {
    revision: u64,
    after: String,
}

impl PageToken {
    fn encode(&self) -> String {
        use std::fmt::Write;
        let mut token = format!("{}.", self.revision);
        for byte in self.after.as_bytes() {
            // Writing to a String cannot fail.
            let _ = write!(token, "{byte:02x}");
        }
        token
    }

    fn parse(token: &str) -> Option<PageToken> {
        let (revision, hex) = token.split_once('.')?;
        if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2 * validate::MAX_KEY_BYTES {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(PageToken {
            revision: revision.parse().ok()?,
            after: String::from_utf8(bytes).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PageToken;

    #[test]
    fn a_page_token_reads_back_what_it_wrote_and_nothing_else() {
        let token = PageToken {
            revision: 42,
            after: "artist:sigur rós/ágætis byrjun".to_owned(),
        };
        assert_eq!(PageToken::parse(&token.encode()), Some(token));
        for bad in [
            "", "42", "42.", "x.61", "42.6", "42.zz", "42.ff", "-1.61", "42.61.62",
        ] {
            assert_eq!(PageToken::parse(bad), None, "{bad:?}");
        }
    }
}
