//! Storage: from a validated batch to durable, queryable files.
//!
//! ```text
//! engine ─▶ wal (fsync'd log, group commit) ─▶ dedup (mark stored) ─▶ acknowledgement
//!        ─▶ buffer (Arrow, sealed every 100 ms) ─▶ parquet + rollup ─▶ dataset (files) ─▶ checkpoint
//! ```
//!
//! `wal` makes a batch durable before it is acknowledged; `dedup` holds each terminal's
//! stored-sequence window (the exactly-once rule); `checkpoint` commits a flush and persists
//! those windows; `buffer` turns durable records into Arrow columns by day; `parquet` encodes
//! them; `rollup` counts them for the index views; `dataset` lays the files out on an object
//! store; `engine` owns the threads between ingest and disk, recovery and shutdown order;
//! `faults` injects I/O errors and crash points for tests.
//!
//! Architecture invariants:
//! - nothing here knows QUIC or the network: a record's payload is an archive `ingest`
//!   validated, read through `faccia_core::wire::BatchView`;
//! - nothing is acknowledged before the fsync that covers it (`wal`), and no log segment is
//!   removed below a watermark the checkpoint has not committed (`engine`);
//! - `buffer`, `parquet` and `rollup` do no I/O; only `dataset`, `wal`, `checkpoint` and `engine`
//!   (the data directory and its `node-id` at start) write.

pub mod buffer;
pub(crate) mod checkpoint;
pub(crate) mod compaction;
pub mod dataset;
pub mod dedup;
pub mod engine;
pub mod faults;
pub(crate) mod location;
pub(crate) mod membership;
pub mod parquet;
pub(crate) mod rollup;
pub(crate) mod table;
pub mod wal;

/// What can go wrong turning rows into stored files: the error of `buffer`, `parquet`,
/// `rollup` and `dataset`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Arrow could not build or sort the columns (none expected for rows in the stored schema).
    #[error("building Arrow data")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet encoding or decoding failed.
    #[error("writing Parquet")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    /// The object store refused a put, rename, list, get or delete.
    #[error("object store")]
    ObjectStore(#[from] object_store::Error),
    /// A Delta table's log could not be read or written.
    #[error("Delta table")]
    Delta(#[from] deltalake::DeltaTableError),
    /// The tables' location (a directory or an object store URL) is invalid or not the recorded one.
    #[error("the tables' location: {0}")]
    Location(String),
    /// A commit could not be made (the reason says why).
    #[error("committing to the Delta table: {0}")]
    Commit(String),
    /// A local file or directory could not be fsync'd.
    #[error("making {path} durable")]
    Sync {
        /// The file or directory.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}
