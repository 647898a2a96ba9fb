//! Ingest: where a terminal's batch enters the server.
//!
//! The QUIC endpoint (`endpoint`: accept loop → `handle_connection` → `handle_stream`) with
//! the decisions taken before a batch is appended to the log: who may connect and how fast
//! (`admission`), which presses no person could make (`misuse`). The frames themselves are
//! read and validated by `faccia_core::wire`; TLS and UDP sockets come from `transport`; the
//! batch is handed to `storage::engine`, and the reply waits for its durable acknowledgement.
//!
//! Architecture invariants:
//! - only this folder and `terminal` know QUIC (quinn); nothing else names a QUIC type;
//! - ingest never touches the disk: durability is `storage`'s, and a batch is answered
//!   `stored` only once the engine says its log record is fsync'd;
//! - `admission` and `misuse` do no I/O and read no clock (time is passed in), so they are
//!   tested without a network.

pub mod admission;
pub mod endpoint;
pub mod misuse;
