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
    /// Must stay below `wire::SEQ_WINDOW` so that retransmissions can always be recognised.
    pub streams_per_connection_max: u32,
    /// Terminal connections open at once, server-wide.
    pub connections_max: u32,
    /// Bytes of batches received but not yet durable, server-wide. Beyond it the server stops
    /// reading streams and QUIC flow control slows the senders; nothing is dropped.
    pub buffered_bytes_max: u64,
    /// How long a new connection has to present its credential.
    pub hello_timeout_ms: u64,
    /// How long a stream may take to deliver its frame once opened (slow senders hold memory).
    pub frame_timeout_ms: u64,
    /// A connection without traffic for this long is closed (QUIC idle timeout); terminals send
    /// keep-alives well inside it.
    pub idle_timeout_ms: u64,
    /// How far ahead of the server clock a vote's timestamp may be: terminal clocks drift, but a
    /// vote from tomorrow is a broken clock.
    pub future_skew_ms: i64,
    /// How old a vote may be when it arrives: a terminal offline for weeks still delivers its
    /// backlog, a vote from last year is a broken clock.
    pub past_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 64 * 1024,
            batch_votes_max: 4096,
            streams_per_connection_max: 64,
            connections_max: 50_000,
            buffered_bytes_max: 256 * 1024 * 1024,
            hello_timeout_ms: 10_000,
            frame_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            future_skew_ms: 5 * 60 * 1000,
            past_age_ms: 31 * 24 * 3600 * 1000,
        }
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
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            flush_rows: 1 << 20,
            flush_interval_ms: 10 * 60 * 1000,
            buffer_rows_max: 4 << 20,
            wal_segment_bytes: 64 * 1024 * 1024,
            wal_group_bytes_max: 4 * 1024 * 1024,
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
