//! Every limit the server enforces, in one place, with its default and the reason for it.
//!
//! A limit that a terminal can hit is named in the error it receives (`wire::ErrorCode` plus a
//! message quoting the field name below and the value allowed), so a vendor reading a rejection
//! can find the line here that explains it. `ARCHITECTURE.md` lists the same table.

use serde::{Deserialize, Serialize};

/// Limits of the ingest server. Every field can be overridden in the `[limits]` table of the
/// configuration file; the defaults are sized for one 2-core machine serving ~10,000 terminals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame payload (one rkyv archive) accepted on a stream. 64 KiB holds a batch of
    /// `batch_votes_max` votes (12 bytes each) with room to spare; anything bigger is refused
    /// from its header, before a byte of it is buffered.
    pub frame_bytes_max: u32,
    /// Most votes in one batch. A terminal with a longer backlog splits it into several batches.
    pub batch_votes_max: u32,
    /// Batch streams a connection may have open at once (QUIC `max_concurrent_bidi_streams`).
    /// Must stay below `SEQ_WINDOW` so that retransmissions can always be recognised.
    pub streams_per_connection_max: u32,
    /// Terminal connections open at once, server-wide. Past it new connections are refused
    /// before their handshake (QUIC CONNECTION_REFUSED) and terminals back off.
    pub connections_max: u32,
    /// Connections open at once from one source address (an IPv6 address counts by its /64).
    /// Generous because honest terminals share addresses: a town hall's behind its NAT, rural
    /// mobile links behind carrier-grade NAT. It stops one host from taking the server's slots.
    pub connections_per_address_max: u32,
    /// New connections (TLS handshakes) per second, server-wide, sustained. A handshake is the
    /// costliest thing a stranger can make the server do. 2,000/s (with the burst) lets 10,000
    /// terminals reconnect within 5 s after a restart; past it a validated attempt waits for
    /// the next token (at most 3 s, then it is refused before its handshake and the terminal
    /// backs off; see `ingest::admission` and `ingest::endpoint::HandshakeQueue` in faccia).
    pub handshakes_per_second: u32,
    /// Handshakes that may happen at once above the sustained rate (the bucket's depth).
    pub handshake_burst: u32,
    /// Bytes of batches received but not yet durable, server-wide. Beyond it the server stops
    /// reading streams and QUIC flow control slows the senders; nothing is dropped.
    pub buffered_bytes_max: u64,
    /// One connection's share of `buffered_bytes_max`, so that one slow or hostile connection
    /// cannot hold the whole budget. 1 MiB is 16 frames of the largest size, or hundreds of the
    /// small batches terminals send.
    pub connection_buffered_bytes_max: u64,
    /// Votes one terminal may send per minute: a token bucket this deep, refilled at this rate.
    /// A person presses a few times a minute; 6,000 lets a terminal that was offline for a month
    /// deliver its backlog in minutes, and keeps one stolen credential from flooding the server.
    /// Past it batches are answered "retry later" (`rate_limited`).
    pub votes_per_terminal_per_minute_max: u32,
    /// How long a new connection has to present its credential.
    pub hello_timeout_ms: u64,
    /// How long a stream may take to deliver its frame once opened (slow senders hold memory).
    pub frame_timeout_ms: u64,
    /// A connection without traffic for this long is closed (QUIC idle timeout); terminals send
    /// keep-alives well inside it.
    pub idle_timeout_ms: u64,
    /// How far ahead of the server clock a vote's timestamp may be: terminal clocks drift, but a
    /// vote from tomorrow is a broken clock. Beyond it the vote is stored as a clock fault (at
    /// the server's receive time, the terminal's time kept), never refused.
    pub future_skew_ms: i64,
    /// How old a vote may be when it arrives: a terminal offline for weeks still delivers its
    /// backlog, a vote from last year is a broken clock. Beyond it the vote is stored as a clock
    /// fault (at the server's receive time, the terminal's time kept), never refused.
    pub past_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 64 * 1024,
            batch_votes_max: 4096,
            streams_per_connection_max: 64,
            connections_max: 50_000,
            connections_per_address_max: 256,
            handshakes_per_second: 2_000,
            handshake_burst: 2_000,
            buffered_bytes_max: 256 * 1024 * 1024,
            connection_buffered_bytes_max: 1024 * 1024,
            votes_per_terminal_per_minute_max: 6_000,
            hello_timeout_ms: 10_000,
            frame_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            future_skew_ms: 5 * 60 * 1000,
            past_age_ms: 31 * 24 * 3600 * 1000,
        }
    }
}

/// A limit (or another configured bound) set to a value the server cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[{table}] {field} = {value} is not allowed: {allowed}")]
pub struct LimitError {
    /// The table of the configuration file: `limits`, `misuse`.
    pub table: &'static str,
    /// The field that was set wrong, as named in the configuration file.
    pub field: &'static str,
    /// The value configured, as text.
    pub value: String,
    /// The values allowed, in words or as a range (e.g. `at least 1`).
    pub allowed: String,
}

/// How many sequence numbers below a terminal's highest stored one the server still tells apart
/// (`storage::dedup`): a retransmission within the window is answered `duplicate`, one older than
/// the window is rejected as stale (`stale_sequence`). Terminals keep far fewer batches in flight
/// than this. A constant rather than a configuration field: the checkpoint's layout stores
/// windows of exactly this many bits.
pub const SEQ_WINDOW: u64 = 1024;
/// Bytes the server charges to the budget for a frame beyond its payload (bookkeeping).
pub const REQUEST_OVERHEAD_BYTES: u64 = 256;
/// Longest timestamp window: ten years. Keeps time arithmetic far from overflowing.
const TIME_WINDOW_MS_MAX: i64 = 10 * 366 * 24 * 3600 * 1000;

impl Limits {
    /// Checks that the limits work together: a batch of `batch_votes_max` votes fits in a frame,
    /// a frame fits in every budget, a full batch fits in a terminal's vote budget.
    ///
    /// # Errors
    /// The first field out of its range, with the range allowed.
    pub fn check(&self) -> Result<(), LimitError> {
        let fail = |field: &'static str, value: &dyn std::fmt::Display, allowed: String| {
            Err(LimitError { table: "limits", field, value: value.to_string(), allowed })
        };
        // 12 bytes a vote, the 32-byte root and up to 7 bytes of padding (schemas/protocol.md).
        let batch_bytes_max = 12 * u64::from(self.batch_votes_max) + 40;
        let frame_budget = u64::from(self.frame_bytes_max) + REQUEST_OVERHEAD_BYTES;
        if self.batch_votes_max == 0 || batch_bytes_max > u64::from(self.frame_bytes_max) {
            return fail(
                "batch_votes_max",
                &self.batch_votes_max,
                format!("1..={} (a full batch must fit in frame_bytes_max)", (self.frame_bytes_max.saturating_sub(40)) / 12),
            );
        }
        if !(1..SEQ_WINDOW as u32).contains(&self.streams_per_connection_max) {
            return fail(
                "streams_per_connection_max",
                &self.streams_per_connection_max,
                format!("1..{} (below the sequence window)", SEQ_WINDOW),
            );
        }
        if self.connection_buffered_bytes_max < frame_budget {
            return fail(
                "connection_buffered_bytes_max",
                &self.connection_buffered_bytes_max,
                format!("at least frame_bytes_max + {REQUEST_OVERHEAD_BYTES} = {frame_budget}"),
            );
        }
        if self.buffered_bytes_max < self.connection_buffered_bytes_max || self.buffered_bytes_max > u64::from(u32::MAX) {
            return fail(
                "buffered_bytes_max",
                &self.buffered_bytes_max,
                format!("connection_buffered_bytes_max ({})..=4 GiB", self.connection_buffered_bytes_max),
            );
        }
        if self.votes_per_terminal_per_minute_max < self.batch_votes_max {
            return fail(
                "votes_per_terminal_per_minute_max",
                &self.votes_per_terminal_per_minute_max,
                format!("at least batch_votes_max = {}", self.batch_votes_max),
            );
        }
        for (field, value) in [
            ("connections_max", self.connections_max),
            ("connections_per_address_max", self.connections_per_address_max),
            ("handshakes_per_second", self.handshakes_per_second),
            ("handshake_burst", self.handshake_burst),
        ] {
            if value == 0 {
                return fail(field, &value, "at least 1".into());
            }
        }
        for (field, value) in [("future_skew_ms", self.future_skew_ms), ("past_age_ms", self.past_age_ms)] {
            if !(0..=TIME_WINDOW_MS_MAX).contains(&value) {
                return fail(field, &value, format!("0..={TIME_WINDOW_MS_MAX} (ten years)"));
            }
        }
        for (field, value) in [
            ("hello_timeout_ms", self.hello_timeout_ms),
            ("frame_timeout_ms", self.frame_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !(1..=86_400_000).contains(&value) {
                return fail(field, &value, "1..=86400000 (a day)".into());
            }
        }
        Ok(())
    }
}

/// Storage thresholds: when the Arrow buffer becomes a Parquet file, and how the log rotates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageLimits {
    /// Rows in the Arrow buffer that trigger a flush to Parquet. One million rows make files of
    /// a few megabytes: large enough that a day holds few files, small enough to sort in memory.
    pub flush_rows: usize,
    /// Age of the oldest buffered row that triggers a flush. Bounds how much log a restart
    /// replays and how long the log keeps segments; SQL sees buffered rows anyway.
    pub flush_interval_ms: u64,
    /// Rows the buffer may hold while a flush is still running before ingest is slowed down.
    pub buffer_rows_max: usize,
    /// A log segment is closed and a new one started past this size.
    pub wal_segment_bytes: u64,
    /// Most bytes one group commit writes before its fsync; bounds the latency one fsync adds.
    pub wal_group_bytes_max: usize,
    /// How often the server looks for days to compact (a closed day with two files or more,
    /// today's with `today_files_max` or more), applies `retention_days` and vacuums removed
    /// files (0: never). Ten minutes: a flush every minute leaves today's partition at most
    /// `today_files_max` + 10 files.
    pub compaction_interval_ms: u64,
    /// Files today's partition of each table may gather before compaction merges them (a
    /// closed day is merged as soon as it has two). Bounds what a query of today opens; 16
    /// keeps a flush every minute to a merge every quarter of an hour.
    pub today_files_max: usize,
    /// Days of votes kept: whole days older than this leave the tables (0: keep everything).
    /// The programme's reports compare a year with the previous one, so keep at least 731 for them.
    pub retention_days: u32,
    /// Where the tables live: `None` (the default) for the data directory, else an S3 URL
    /// (`s3://bucket/prefix`, any S3-compatible store) or `file:///dir`, with credentials and
    /// endpoint from the environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …). The
    /// write-ahead log stays in the data directory, which records the URL at the first start.
    pub url: Option<String>,
    /// Several nodes on one table (`url` in an object store): how often a node publishes its
    /// terminals' stored-sequence windows, which is also how it is seen alive.
    pub heartbeat_interval_ms: u64,
    /// How long another node's publication may stay unchanged before that node is taken for
    /// dead and its terminals may be served elsewhere. Bounds how long a dead node's terminals
    /// wait; at least three heartbeats, so that a slow publication is not taken for a death.
    pub node_ttl_ms: u64,
}

impl StorageLimits {
    /// Checks that the values work together.
    ///
    /// # Errors
    /// The first field out of its range, with the range allowed.
    pub fn check(&self) -> Result<(), LimitError> {
        let fail = |field: &'static str, value: &dyn std::fmt::Display, allowed: String| {
            Err(LimitError { table: "storage", field, value: value.to_string(), allowed })
        };
        if !(10..=60_000).contains(&self.heartbeat_interval_ms) {
            return fail("heartbeat_interval_ms", &self.heartbeat_interval_ms, "10..=60000".into());
        }
        if self.node_ttl_ms < 3 * self.heartbeat_interval_ms {
            return fail(
                "node_ttl_ms",
                &self.node_ttl_ms,
                format!("at least 3 × heartbeat_interval_ms = {}", 3 * self.heartbeat_interval_ms),
            );
        }
        Ok(())
    }
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            flush_rows: 1 << 20,
            flush_interval_ms: 10 * 60 * 1000,
            buffer_rows_max: 4 << 20,
            wal_segment_bytes: 64 * 1024 * 1024,
            wal_group_bytes_max: 4 * 1024 * 1024,
            compaction_interval_ms: 10 * 60 * 1000,
            today_files_max: 16,
            retention_days: 0,
            url: None,
            heartbeat_interval_ms: 1000,
            node_ttl_ms: 5000,
        }
    }
}

/// Limits of the analysts' SQL endpoints (Flight SQL, HTTP) and of every SQL context. Overridable
/// in the `[query]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryLimits {
    /// Memory one SQL context may hold for sorts, joins and aggregations. A quarter of a 24 GiB
    /// machine: the ingest buffer and the page cache keep the rest. A query past it fails with
    /// DataFusion's "resources exhausted" naming the pool, and ingest is not disturbed.
    pub query_memory_bytes_max: usize,
    /// Longest SQL text accepted over Flight SQL and HTTP. Real analyst queries are a few
    /// kilobytes; a megabyte is generous and stops a client from making the planner chew on
    /// garbage.
    pub sql_bytes_max: usize,
    /// Rows one HTTP answer may hold (it is built in memory before it is sent). Dashboards ask for
    /// aggregates; for raw exports use Flight SQL (streamed) or read the Parquet files.
    pub http_result_rows_max: usize,
    /// Prepared statements open at once on the Flight SQL server (each keeps its SQL and
    /// parameters). JDBC pools keep a few per connection; past it the oldest is closed.
    pub prepared_statements_max: usize,
    /// Queries running at once over Flight SQL and HTTP. On 2 cores more would only share the
    /// same CPU and multiply memory; the others wait their turn.
    pub concurrent_queries_max: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            query_memory_bytes_max: 6 << 30,
            sql_bytes_max: 1 << 20,
            http_result_rows_max: 1_000_000,
            prepared_statements_max: 1024,
            concurrent_queries_max: 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_their_own_check() {
        assert_eq!(Limits::default().check(), Ok(()));
    }

    #[test]
    fn limits_that_cannot_work_together_are_named() {
        let check = |limits: Limits| limits.check().unwrap_err();
        let error = check(Limits { batch_votes_max: 10_000, ..Limits::default() });
        assert_eq!(error.field, "batch_votes_max");
        assert!(error.to_string().contains("frame_bytes_max"), "{error}");
        assert_eq!(
            check(Limits { votes_per_terminal_per_minute_max: 100, ..Limits::default() }).field,
            "votes_per_terminal_per_minute_max"
        );
        assert_eq!(check(Limits { connection_buffered_bytes_max: 1024, ..Limits::default() }).field, "connection_buffered_bytes_max");
        assert_eq!(check(Limits { buffered_bytes_max: 1024 * 1024 - 1, ..Limits::default() }).field, "buffered_bytes_max");
        assert_eq!(check(Limits { streams_per_connection_max: 5000, ..Limits::default() }).field, "streams_per_connection_max");
        assert_eq!(check(Limits { handshakes_per_second: 0, ..Limits::default() }).field, "handshakes_per_second");
        assert_eq!(check(Limits { past_age_ms: i64::MAX, ..Limits::default() }).field, "past_age_ms");
        assert_eq!(check(Limits { future_skew_ms: -1, ..Limits::default() }).field, "future_skew_ms");
        assert_eq!(check(Limits { frame_timeout_ms: 0, ..Limits::default() }).field, "frame_timeout_ms");
    }
}
