//! Integration tests: real QUIC on loopback, real files in temporary directories, real Parquet
//! read back, real SQL. One test binary (one link of DataFusion) with a module per concern.

mod alerts;
mod architecture;
mod bench;
mod bulletin;
mod clock;
mod cluster;
mod commands;
mod common;
mod crash;
mod dashboard;
mod excel;
mod faults;
mod hostile;
mod identity;
mod jdbc;
mod limits;
mod misuse;
mod nat;
mod objectstore;
mod properties;
mod proxy;
mod registry;
mod roundtrip;
mod scopes;
mod sql;
