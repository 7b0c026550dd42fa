//! Per-provider rate limits for the whole deployment: GCRA over one row per
//! provider (`provider_state.tat`), updated in the transaction that claims.

use std::collections::HashMap;

/// A provider's limit: one request per `interval_ms`, up to `burst` at once
/// after an idle spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    interval_ms: i64,
    burst: u32,
}

/// Headroom on every interval: absorbs the jitter between a claim and its
/// request reaching the provider (measured here: up to ±25 ms across worker
/// processes on Postgres), so the provider never sees more than its limit in
/// any window, at the cost of using 95 % of it.
const HEADROOM: f64 = 1.05;

/// Rates by provider name; a provider not named is not limited.
pub type Rates = HashMap<String, Rate>;

impl Rate {
    /// `per_second` requests a second (must be positive), bursts of `burst`.
    pub fn new(per_second: f64, burst: u32) -> Rate {
        let interval = (1000.0 / per_second * HEADROOM).ceil();
        let interval_ms = if interval.is_finite() && interval >= 1.0 {
            interval as i64
        } else {
            1
        };
        Rate {
            interval_ms,
            burst: burst.max(1),
        }
    }

    /// Milliseconds between requests at the steady rate.
    pub fn interval_ms(self) -> i64 {
        self.interval_ms
    }

    fn tolerance_ms(self) -> i64 {
        i64::from(self.burst - 1) * self.interval_ms
    }

    /// How many requests may go at `now` (at most `want`), given the stored
    /// theoretical arrival time `tat`.
    pub fn allowance(self, tat: i64, now: i64, want: u32) -> u32 {
        let start = tat.max(now);
        let slack = now + self.tolerance_ms() - start;
        if slack < 0 {
            return 0;
        }
        let allowed = slack / self.interval_ms + 1;
        u32::try_from(allowed).unwrap_or(u32::MAX).min(want)
    }

    /// The theoretical arrival time after `spent` requests at `now`.
    pub fn spend(self, tat: i64, now: i64, spent: u32) -> i64 {
        tat.max(now) + i64::from(spent) * self.interval_ms
    }

    /// When the next request may go, given `tat`.
    pub fn next_at(self, tat: i64) -> i64 {
        tat - self.tolerance_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_allows_one_per_interval() {
        let rate = Rate::new(2.0, 1);
        assert_eq!(rate.interval_ms(), 525);
        assert_eq!(rate.allowance(0, 1000, 5), 1);
        let tat = rate.spend(0, 1000, 1);
        assert_eq!(tat, 1525);
        assert_eq!(rate.allowance(tat, 1524, 5), 0);
        assert_eq!(rate.allowance(tat, 1525, 5), 1);
    }

    #[test]
    fn burst_allows_several_after_idle_and_refills() {
        let rate = Rate::new(1.0, 3);
        assert_eq!(rate.allowance(0, 10_000, 10), 3);
        let tat = rate.spend(0, 10_000, 3);
        assert_eq!(rate.allowance(tat, 10_000, 10), 0);
        assert_eq!(rate.allowance(tat, 10_000 + 1050, 10), 1);
        assert_eq!(rate.next_at(tat), 10_000 + 1050);
        // A long idle spell refills the burst, never more.
        assert_eq!(rate.allowance(tat, 100_000, 10), 3);
        assert_eq!(rate.allowance(tat, 100_000, 2), 2);
    }

    #[test]
    fn slow_rates() {
        assert_eq!(Rate::new(55.0 / 60.0, 1).interval_ms(), 1146);
        assert_eq!(Rate::new(0.5, 1).interval_ms(), 2100);
    }
}
