//! Real-time alerts: rules in the configuration (`[alerts]`), evaluated as SQL over the same
//! tables analysts query, every `evaluate_interval_s`, inside `faccia serve`; each alert's
//! lifecycle (fired → resolved, once per firing) kept in its own append-only event file; events
//! delivered to a webhook, signed, with retries and a delivery log.
//!
//! - `rules`: the four rules (`red_share`, `terminal_silent`, `misuse_burst`, `clock_fault`),
//!   their settings and the SQL that finds which subjects meet them now;
//! - `store`: `DATA_DIR/alerts/events.jsonl` and `deliveries.jsonl` (versioned, append-only,
//!   fsync'd), and the lifecycle (`Lifecycle`) that turns conditions into events;
//! - `webhook`: the HMAC-SHA256 signature, the POST with retries and exponential backoff;
//! - `evaluator`: the task `server` starts.
//!
//! Architecture invariant: alerts read like an analyst (SQL over a context handed to them) and
//! never write to the dataset; the only files they write are their own under `DATA_DIR/alerts/`.
//! They reach no stage of the ingest or storage path, and the query path reads their files only
//! through `store` (the `alerts` and `alert_deliveries` tables).

pub mod evaluator;
pub mod rules;
pub mod store;
pub mod webhook;

use serde::{Deserialize, Serialize};

pub use evaluator::spawn;
pub use rules::{ClockFault, MisuseBurst, RedShare, Rule, TerminalSilent};

use crate::limits::LimitError;

/// The `[alerts]` table of the configuration file: when rules are evaluated, where events go,
/// and each rule's thresholds (each can be switched off with `enabled = false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Evaluate the rules at all; `true` by default (a server without a webhook still records
    /// alerts in the `alerts` table).
    pub enabled: bool,
    /// Seconds between two evaluations: how far, at most, an alert lags the votes; 10 by default
    /// (each evaluation scans at most the last `window_minutes` of votes, so it is cheap).
    pub evaluate_interval_s: u64,
    /// Where events are POSTed (`http://` or `https://host:port/path`); none: events are only recorded.
    pub webhook_url: Option<String>,
    /// A PEM file of CA certificates an `https` receiver may chain to, besides the system's roots
    /// (a private CA of the administration's network).
    pub webhook_ca: Option<std::path::PathBuf>,
    /// The HMAC-SHA256 key signing each POST; none: one generated into
    /// `DATA_DIR/alerts/webhook-secret` at the first start with a `webhook_url`.
    pub webhook_secret: Option<String>,
    /// Attempts per event before it is logged as failed (the first included); 8 by default, which
    /// with `webhook_backoff_ms` = 1000 spans about two minutes of a receiver being down.
    pub webhook_attempts_max: u32,
    /// Wait before the first retry, in milliseconds, doubled at each further retry (capped at
    /// `WEBHOOK_BACKOFF_MAX_MS`).
    pub webhook_backoff_ms: u64,
    /// Time allowed for one POST (connect, send, answer), in milliseconds; 5000 by default.
    pub webhook_timeout_ms: u64,
    /// At least `share_pct_min` % red faces among at least `votes_min` counted votes of a
    /// municipality × service in the last `window_minutes`.
    pub red_share: RedShare,
    /// A terminal without a vote for `silent_minutes` inside its usual opening hours.
    pub terminal_silent: TerminalSilent,
    /// At least `votes_min` misuse-flagged votes (rules 1–3) of a terminal in `window_minutes`.
    pub misuse_burst: MisuseBurst,
    /// At least `votes_min` clock-fault votes (misuse = 4) of a terminal received in `window_minutes`.
    pub clock_fault: ClockFault,
}

pub use webhook::WEBHOOK_BACKOFF_MAX_MS;

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            evaluate_interval_s: 10,
            webhook_url: None,
            webhook_ca: None,
            webhook_secret: None,
            webhook_attempts_max: 8,
            webhook_backoff_ms: 1_000,
            webhook_timeout_ms: 5_000,
            red_share: RedShare::default(),
            terminal_silent: TerminalSilent::default(),
            misuse_burst: MisuseBurst::default(),
            clock_fault: ClockFault::default(),
        }
    }
}

impl AlertsConfig {
    /// Checks every bound of `[alerts]`.
    ///
    /// # Errors
    /// The first field out of its range, named with its table (`alerts`, `alerts.red_share`, …).
    pub fn check(&self) -> Result<(), LimitError> {
        let fail = |table: &'static str, field: &'static str, value: String, allowed: &str| {
            Err(LimitError { table, field, value, allowed: allowed.to_string() })
        };
        if !(1..=3_600).contains(&self.evaluate_interval_s) {
            return fail("alerts", "evaluate_interval_s", self.evaluate_interval_s.to_string(), "1..=3600 (a second to an hour)");
        }
        if let Some(url) = &self.webhook_url
            && let Err(why) = webhook::parse_url(url)
        {
            return fail("alerts", "webhook_url", url.clone(), &why);
        }
        if self.webhook_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return fail("alerts", "webhook_secret", "(hidden)".into(), "at least 16 bytes");
        }
        if !(1..=20).contains(&self.webhook_attempts_max) {
            return fail("alerts", "webhook_attempts_max", self.webhook_attempts_max.to_string(), "1..=20");
        }
        if !(10..=WEBHOOK_BACKOFF_MAX_MS).contains(&self.webhook_backoff_ms) {
            return fail("alerts", "webhook_backoff_ms", self.webhook_backoff_ms.to_string(), "10..=60000");
        }
        if !(100..=60_000).contains(&self.webhook_timeout_ms) {
            return fail("alerts", "webhook_timeout_ms", self.webhook_timeout_ms.to_string(), "100..=60000");
        }
        self.red_share.check()?;
        self.terminal_silent.check()?;
        self.misuse_burst.check()?;
        self.clock_fault.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_each_bad_value_is_named() {
        AlertsConfig::default().check().unwrap();
        let bad = |config: AlertsConfig, field: &str| {
            let error = config.check().unwrap_err().to_string();
            assert!(error.contains(field), "{error}");
        };
        bad(AlertsConfig { evaluate_interval_s: 0, ..Default::default() }, "[alerts] evaluate_interval_s = 0");
        bad(AlertsConfig { webhook_url: Some("ftp://x".into()), ..Default::default() }, "webhook_url");
        bad(AlertsConfig { webhook_secret: Some("short".into()), ..Default::default() }, "webhook_secret");
        bad(AlertsConfig { webhook_attempts_max: 0, ..Default::default() }, "webhook_attempts_max");
        let red_share = RedShare { share_pct_min: 0.0, ..Default::default() };
        bad(AlertsConfig { red_share, ..Default::default() }, "[alerts.red_share] share_pct_min");
        let terminal_silent = TerminalSilent { weeks_min: 5, ..Default::default() };
        bad(AlertsConfig { terminal_silent, ..Default::default() }, "[alerts.terminal_silent] weeks_min");
    }
}
