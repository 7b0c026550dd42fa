//! [`AccessLog`]: reads noted in memory and written to the store in
//! batches by maintenance, so a read never writes to the store.

use std::{collections::HashMap, sync::Mutex};

use roadie_store::Access;

/// Reads waiting to be flushed. Bounded: past the cap, reads of new keys are
/// not recorded until the next flush (eviction order gets coarser, memory
/// stays flat).
#[derive(Debug, Default)]
pub struct AccessLog {
    pending: Mutex<HashMap<String, (i64, u64)>>,
}

const ACCESS_LOG_CAP: usize = 100_000;

impl AccessLog {
    /// Notes a read of `key` at `now`.
    pub fn record(&self, key: &str, now: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, count)) = pending.get_mut(key) {
            *at = now;
            *count += 1;
        } else if pending.len() < ACCESS_LOG_CAP {
            pending.insert(key.to_owned(), (now, 1));
        }
    }

    /// Takes every pending read.
    pub fn take(&self) -> Vec<Access> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        pending
            .into_iter()
            .map(|(key, (at, count))| Access { key, at, count })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_merges_reads_and_empties_on_take() {
        let log = AccessLog::default();
        log.record("a", 1);
        log.record("a", 5);
        log.record("b", 2);
        let mut taken = log.take();
        taken.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(
            taken,
            [
                Access {
                    key: "a".to_owned(),
                    at: 5,
                    count: 2
                },
                Access {
                    key: "b".to_owned(),
                    at: 2,
                    count: 1
                }
            ]
        );
        assert!(log.take().is_empty());
    }
}
