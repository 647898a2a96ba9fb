//! The server's counters, gauges and histograms, exposed as Prometheus text on `/metrics`.
//!
//! One `Metrics` value per server, shared by reference; every part that does work counts it
//! here. Counters are lock-free atomics, so counting on the hot path costs a few nanoseconds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set naming a wire error code, e.g. `code="bad_credential"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code's name (`ErrorCode::name`).
    pub code: &'static str,
}

/// Label set naming the admission limit that refused a connection attempt, e.g. `limit="connections_max"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// The limit's name: its field in `Limits`.
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RuleLabel {
    pub(crate) rule: &'static str,
}

/// Label set naming the outcome of a webhook attempt: `ok`, `retry` (failed, will be tried
/// again) or `failed` (given up).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

/// Everything the server counts.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) batches_received: Counter,
    pub(crate) votes_received: Counter,
    /// Batches made durable and answered `stored`.
    pub batches_stored: Counter,
    pub(crate) votes_stored: Counter,
    pub(crate) batches_duplicate: Counter,
    pub(crate) batches_rejected: Family<CodeLabel, Counter>,
    pub(crate) batches_retry_later: Family<CodeLabel, Counter>,
    pub(crate) connections_open: Gauge,
    /// Terminal connections whose hello was accepted.
    pub connections_accepted: Counter,
    /// Connections refused after their handshake (bad hello, over a connection limit), by error code.
    pub connections_refused: Family<CodeLabel, Counter>,
    /// Connection attempts refused before their handshake, by the limit that refused them.
    pub connections_not_admitted: Family<LimitLabel, Counter>,
    /// Connection attempts asked to prove their address (QUIC Retry) under handshake pressure.
    pub connections_retried: Counter,
    /// Validated connection attempts that waited for the handshake budget instead of being refused.
    pub handshakes_queued: Counter,
    /// TLS session tickets accepted: handshakes that resumed a session instead of a full one.
    pub tls_sessions_resumed: Counter,
    /// Open connections closed because their terminal was revoked or removed.
    pub connections_revoked: Counter,
    /// Votes stored with a misuse flag, by rule.
    pub(crate) votes_flagged: Family<RuleLabel, Counter>,
    /// Votes stored as clock faults: their terminal's time was implausible (more than
    /// `future_skew_ms` ahead or `past_age_ms` behind the server), so they carry the receive time.
    pub votes_clock_faulted: Counter,
    pub(crate) wal_fsyncs: Counter,
    pub(crate) wal_fsync_seconds: Histogram,
    pub(crate) wal_group_batches: Histogram,
    pub(crate) wal_bytes: Counter,
    pub(crate) wal_errors: Counter,
    /// 1 while the log cannot be written and batches are answered "retry later".
    pub(crate) wal_unavailable: Gauge,
    pub(crate) buffer_rows: Gauge,
    /// Bytes of batches received and not yet durable.
    pub buffered_request_bytes: Gauge,
    /// The highest `buffered_request_bytes` since the server started.
    pub buffered_request_bytes_peak: Gauge,
    pub(crate) parquet_flushes: Counter,
    pub(crate) parquet_flush_seconds: Histogram,
    pub(crate) parquet_flush_rows: Counter,
    pub(crate) parquet_flush_bytes: Counter,
    pub(crate) parquet_flush_errors: Counter,
    /// Alerts firing now, by rule (`alerts`).
    pub(crate) alerts_firing: Family<RuleLabel, Gauge>,
    /// Alerts raised (fired) since the server started, by rule.
    pub(crate) alerts_raised: Family<RuleLabel, Counter>,
    /// Webhook attempts, by outcome.
    pub(crate) alert_deliveries: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `faccia_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("faccia");
        let seconds = || Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let metrics = Metrics {
            batches_received: Counter::default(),
            votes_received: Counter::default(),
            batches_stored: Counter::default(),
            votes_stored: Counter::default(),
            batches_duplicate: Counter::default(),
            batches_rejected: Family::default(),
            batches_retry_later: Family::default(),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            connections_not_admitted: Family::default(),
            connections_retried: Counter::default(),
            handshakes_queued: Counter::default(),
            tls_sessions_resumed: Counter::default(),
            connections_revoked: Counter::default(),
            votes_flagged: Family::default(),
            votes_clock_faulted: Counter::default(),
            wal_fsyncs: Counter::default(),
            wal_fsync_seconds: seconds(),
            wal_group_batches: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            wal_bytes: Counter::default(),
            wal_errors: Counter::default(),
            wal_unavailable: Gauge::default(),
            buffer_rows: Gauge::default(),
            buffered_request_bytes: Gauge::default(),
            buffered_request_bytes_peak: Gauge::default(),
            parquet_flushes: Counter::default(),
            parquet_flush_seconds: seconds(),
            parquet_flush_rows: Counter::default(),
            parquet_flush_bytes: Counter::default(),
            parquet_flush_errors: Counter::default(),
            alerts_firing: Family::default(),
            alerts_raised: Family::default(),
            alert_deliveries: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("batches_received", "Batch frames received", metrics.batches_received.clone());
        r.register("votes_received", "Votes in batch frames that passed validation", metrics.votes_received.clone());
        r.register("batches_stored", "Batches made durable and answered stored", metrics.batches_stored.clone());
        r.register("votes_stored", "Votes made durable", metrics.votes_stored.clone());
        r.register("batches_duplicate", "Batches answered duplicate (stored earlier)", metrics.batches_duplicate.clone());
        r.register("batches_rejected", "Batches rejected, by error code", metrics.batches_rejected.clone());
        r.register("batches_retry_later", "Batches answered retry-later, by error code", metrics.batches_retry_later.clone());
        r.register("connections_open", "Terminal connections open", metrics.connections_open.clone());
        r.register("connections_accepted", "Terminal connections authenticated", metrics.connections_accepted.clone());
        r.register("connections_refused", "Connections refused, by error code", metrics.connections_refused.clone());
        r.register(
            "connections_not_admitted",
            "Connection attempts refused before their handshake, by limit",
            metrics.connections_not_admitted.clone(),
        );
        r.register(
            "connections_retried",
            "Connection attempts sent a QUIC Retry under handshake pressure",
            metrics.connections_retried.clone(),
        );
        r.register(
            "handshakes_queued",
            "Validated connection attempts that waited for the handshake budget instead of being refused",
            metrics.handshakes_queued.clone(),
        );
        r.register("tls_sessions_resumed", "Handshakes that resumed a TLS session from a ticket", metrics.tls_sessions_resumed.clone());
        r.register(
            "connections_revoked",
            "Open connections closed because their terminal was revoked",
            metrics.connections_revoked.clone(),
        );
        r.register("votes_flagged", "Votes stored with a misuse flag, by rule", metrics.votes_flagged.clone());
        r.register(
            "votes_clock_faulted",
            "Votes stored as clock faults (terminal time implausible; stored at the receive time)",
            metrics.votes_clock_faulted.clone(),
        );
        r.register("wal_fsyncs", "Log fsyncs (group commits)", metrics.wal_fsyncs.clone());
        r.register("wal_fsync_seconds", "Duration of a log write and fsync", metrics.wal_fsync_seconds.clone());
        r.register("wal_group_batches", "Batches made durable by one fsync", metrics.wal_group_batches.clone());
        r.register("wal_bytes", "Bytes appended to the log", metrics.wal_bytes.clone());
        r.register("wal_errors", "Failed log writes or fsyncs", metrics.wal_errors.clone());
        r.register("wal_unavailable", "1 while the log cannot be written", metrics.wal_unavailable.clone());
        r.register("buffer_rows", "Rows in the Arrow buffer, not yet in Parquet", metrics.buffer_rows.clone());
        r.register("buffered_request_bytes", "Bytes of batches received and not yet durable", metrics.buffered_request_bytes.clone());
        r.register(
            "buffered_request_bytes_peak",
            "Highest bytes of batches received and not yet durable",
            metrics.buffered_request_bytes_peak.clone(),
        );
        r.register("parquet_flushes", "Flushes of the buffer to Parquet", metrics.parquet_flushes.clone());
        r.register("parquet_flush_seconds", "Duration of a flush", metrics.parquet_flush_seconds.clone());
        r.register("parquet_flush_rows", "Rows written to Parquet", metrics.parquet_flush_rows.clone());
        r.register("parquet_flush_bytes", "Bytes of Parquet written", metrics.parquet_flush_bytes.clone());
        r.register("parquet_flush_errors", "Failed flushes (retried)", metrics.parquet_flush_errors.clone());
        r.register("alerts_firing", "Alerts firing now, by rule", metrics.alerts_firing.clone());
        r.register("alerts_raised", "Alerts raised (fired), by rule", metrics.alerts_raised.clone());
        r.register("alert_deliveries", "Webhook delivery attempts, by outcome (ok, retry, failed)", metrics.alert_deliveries.clone());
        Metrics { registry, ..metrics }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Counts one batch rejected with `code`.
    pub(crate) fn rejected(&self, code: crate::wire::ErrorCode) {
        self.batches_rejected.get_or_create(&CodeLabel { code: code.name() }).inc();
    }

    pub(crate) fn retry_later(&self, code: crate::wire::ErrorCode) {
        self.batches_retry_later.get_or_create(&CodeLabel { code: code.name() }).inc();
    }

    /// Counts one connection refused with `code`.
    pub(crate) fn refused(&self, code: crate::wire::ErrorCode) {
        self.connections_refused.get_or_create(&CodeLabel { code: code.name() }).inc();
    }

    pub(crate) fn not_admitted(&self, limit: &'static str) {
        self.connections_not_admitted.get_or_create(&LimitLabel { limit }).inc();
    }

    /// Counts `bytes` more buffered, and keeps the peak.
    pub(crate) fn buffered(&self, bytes: i64) {
        let now = self.buffered_request_bytes.inc_by(bytes) + bytes;
        self.buffered_request_bytes_peak.inner().fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets how many alerts of `rule` fire now.
    pub(crate) fn set_alerts_firing(&self, rule: &'static str, firing: i64) {
        self.alerts_firing.get_or_create(&RuleLabel { rule }).set(firing);
    }

    /// Counts one alert of `rule` raised.
    pub(crate) fn alert_raised(&self, rule: &'static str) {
        self.alerts_raised.get_or_create(&RuleLabel { rule }).inc();
    }

    /// Counts one webhook attempt's `outcome` (`ok`, `retry`, `failed`).
    pub(crate) fn alert_delivery(&self, outcome: &'static str) {
        self.alert_deliveries.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts `bytes` no longer buffered.
    pub(crate) fn unbuffered(&self, bytes: i64) {
        self.buffered_request_bytes.dec_by(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new();
        metrics.batches_stored.inc_by(3);
        metrics.rejected(crate::wire::ErrorCode::BadCredential);
        metrics.wal_fsync_seconds.observe(0.001);
        let text = metrics.render();
        assert!(text.contains("faccia_batches_stored_total 3"), "{text}");
        assert!(text.contains("faccia_batches_rejected_total{code=\"bad_credential\"} 1"), "{text}");
        assert!(text.contains("faccia_wal_fsync_seconds_count 1"), "{text}");
    }
}
