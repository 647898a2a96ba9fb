//! faccia: customer-satisfaction votes from emoticon terminals, ingested over QUIC, kept
//! durably as Parquet, and queried with SQL. `ARCHITECTURE.md` is the map; each folder's
//! `mod.rs` says what it owns and what it must not know.
//!
//! The folders follow the path of a vote: `terminal` → `transport` → `ingest` → `storage` →
//! `query` → `analysts` (and the `dashboard`'s pages), with the domain (`model` and `wire` from `faccia-core`, `registry`),
//! the process assembly (`server`, `cli`), the operators' and load testers' `tools`, and small
//! shared pieces (`config`, `metrics`, `clock`, `fsutil`, `charts`).

pub use faccia_core::{limits, model, wire};

pub mod alerts;
pub mod analysts;
pub mod charts;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod fsutil;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod registry;
pub mod server;
pub mod storage;
pub mod terminal;
pub mod tools;
pub mod transport;

/// Formats an error with its causes, `a: b: c`: what logs and the command line print.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
