//! faccia: customer-satisfaction votes from emoticon terminals, ingested over QUIC, kept
//! durably as Parquet, and queried with SQL. `ARCHITECTURE.md` is the map; each module's own
//! documentation says what it owns and what it must not do.

pub mod admission;
pub mod analysts;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crashtest;
pub mod dedup;
pub mod demo;
pub mod engine;
pub mod faults;
pub mod flight;
pub mod fsutil;
pub mod generate;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod misuse;
pub mod model;
pub mod process;
pub mod query;
pub mod registry;
pub mod server;
pub mod simulate;
pub mod store;
pub mod terminal;
pub mod tls;
pub mod wal;
pub mod wire;
