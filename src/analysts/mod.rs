//! The analysts' endpoints: who may ask (`tokens`), the shared read-only SQL service both
//! protocols call (`service`), Arrow Flight SQL (`flight`, tonic) and what it tells clients
//! about faccia's SQL (`metadata`), and HTTP (`http`, axum).
//!
//! Architecture invariants:
//! - statements from the network are read-only — no DDL, no DML, no `SET`, no `COPY` — so an
//!   analyst can never write to the server's disk;
//! - `flight` and `http` hold no SQL logic of their own: every statement goes through
//!   `service::SqlService` and its limits, over the context `query` builds;
//! - nothing here knows the log, the buffer or QUIC.

pub mod flight;
pub mod http;
pub mod metadata;
pub mod service;
pub mod tokens;
