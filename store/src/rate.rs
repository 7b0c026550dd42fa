//! Per-provider rate limits for the whole deployment: GCRA over one row per
//! provider (`provider_state.tat`), updated in the transaction that claims.
//!
//! The algorithm itself is SQL ([`budget_sql`]): the claim statements
//! compute how many jobs may go and spend the budget on the provider's row
//! while they hold it, so on Postgres a gated claim is one statement.

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

    /// How far ahead of the steady rate a burst may run.
    pub(crate) fn tolerance_ms(self) -> i64 {
        i64::from(self.burst - 1) * self.interval_ms
    }

    /// When the next request may go, given `tat`.
    pub fn next_at(self, tat: i64) -> i64 {
        tat - self.tolerance_ms()
    }
}

/// How many of `want` requests may go at `at`, given the provider row's
/// `tat` and `paused_until` (none while it is paused), in SQL.
const ALLOWANCE: &str = "CASE \
    WHEN paused_until > {at} OR {slack} < 0 THEN 0 \
    WHEN {slack} / {interval} + 1 < {want} THEN {slack} / {interval} + 1 \
    ELSE {want} END";

/// How far ahead of the budget's start `at` is, with the burst's tolerance.
const SLACK: &str = "({at} + {tolerance} - {start})";

/// The theoretical arrival time after `spent` requests went at `at`, in SQL.
const SPEND: &str = "{start} + {spent} * {interval}";

/// Where the budget starts: the stored `tat`, or `at` once it has passed.
const START: &str = "(CASE WHEN tat > {at} THEN tat ELSE {at} END)";

/// `template` with `{allowance}` and `{spend}` written out as the GCRA
/// over the columns `tat` and `paused_until`, their inputs the SQL
/// expressions (placeholders, mostly) named here: the moment `at`, the
/// requests wanted and spent, a rate's [`Rate::interval_ms`] and
/// [`Rate::tolerance_ms`].
pub(crate) fn budget_sql(
    template: &str,
    at: &str,
    want: &str,
    spent: &str,
    interval: &str,
    tolerance: &str,
) -> String {
    template
        .replace("{allowance}", ALLOWANCE)
        .replace("{spend}", SPEND)
        .replace("{slack}", SLACK)
        .replace("{start}", START)
        .replace("{at}", at)
        .replace("{want}", want)
        .replace("{spent}", spent)
        .replace("{interval}", interval)
        .replace("{tolerance}", tolerance)
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Row};

    use super::*;

    /// The allowance at `now` for a row at (`tat`, `paused_until`), and the
    /// `tat` after spending it, as the claim statements compute them.
    async fn budget(rate: Rate, tat: i64, paused_until: i64, now: i64, want: u32) -> (u32, i64) {
        sqlx::any::install_default_drivers();
        let mut db = sqlx::AnyConnection::connect("sqlite::memory:")
            .await
            .expect("an in-memory database");
        let text = budget_sql(
            "WITH row (tat, paused_until) AS (SELECT $1, $2), \
                  allowed (n) AS (SELECT {allowance} FROM row) \
             SELECT allowed.n AS allowed, {spend} AS spent FROM row, allowed",
            "$3",
            "$4",
            "allowed.n",
            "$5",
            "$6",
        );
        let row = sqlx::query(&text)
            .bind(tat)
            .bind(paused_until)
            .bind(now)
            .bind(i64::from(want))
            .bind(rate.interval_ms())
            .bind(rate.tolerance_ms())
            .fetch_one(&mut db)
            .await
            .expect("the budget");
        let allowed: i64 = row.try_get("allowed").expect("allowed");
        let spent: i64 = row.try_get("spent").expect("spent");
        (u32::try_from(allowed).expect("a count"), spent)
    }

    #[tokio::test]
    async fn steady_rate_allows_one_per_interval() {
        let rate = Rate::new(2.0, 1);
        assert_eq!(rate.interval_ms(), 525);
        let (allowed, tat) = budget(rate, 0, 0, 1000, 5).await;
        assert_eq!((allowed, tat), (1, 1525));
        assert_eq!(budget(rate, tat, 0, 1524, 5).await, (0, 1525));
        assert_eq!(budget(rate, tat, 0, 1525, 5).await, (1, 2050));
    }

    #[tokio::test]
    async fn burst_allows_several_after_idle_and_refills() {
        let rate = Rate::new(1.0, 3);
        let (allowed, tat) = budget(rate, 0, 0, 10_000, 10).await;
        assert_eq!((allowed, tat), (3, 10_000 + 3 * 1050));
        assert_eq!(budget(rate, tat, 0, 10_000, 10).await.0, 0);
        assert_eq!(budget(rate, tat, 0, 10_000 + 1049, 10).await.0, 0);
        assert_eq!(budget(rate, tat, 0, 10_000 + 1050, 10).await.0, 1);
        assert_eq!(rate.next_at(tat), 10_000 + 1050);
        // A long idle spell refills the burst, never more.
        assert_eq!(budget(rate, tat, 0, 100_000, 10).await.0, 3);
        assert_eq!(budget(rate, tat, 0, 100_000, 2).await.0, 2);
    }

    #[tokio::test]
    async fn a_paused_provider_gets_nothing_until_the_pause_ends() {
        let rate = Rate::new(1.0, 3);
        assert_eq!(budget(rate, 0, 20_000, 19_999, 10).await, (0, 19_999));
        assert_eq!(budget(rate, 20_000, 20_000, 20_000, 10).await.0, 3);
    }

    #[test]
    fn slow_rates() {
        assert_eq!(Rate::new(55.0 / 60.0, 1).interval_ms(), 1146);
        assert_eq!(Rate::new(0.5, 1).interval_ms(), 2100);
    }
}
