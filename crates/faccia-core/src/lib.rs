//! faccia's core: what the server's stages, the terminal client and the fuzz targets share,
//! with no I/O, no clock and no network.
//!
//! - `model`: faces, channels, reasons, ISTAT codes, the internal `Vote`;
//! - `limits`: every limit with its default and the reason for it, and the check that they
//!   work together;
//! - `wire`: the terminal protocol v1 — frame header, rkyv message layouts, validation,
//!   `BatchView` (a validated archive read in place), error codes (`schemas/protocol.md`).
//!
//! Architecture invariants: only `wire` knows rkyv; nothing here does I/O or reads a clock
//! (the server's time is passed in, `wire::BatchRules::now_ms`); `limits` depends on nothing
//! and `wire` on `limits` and `model`, never the other way.

pub mod limits;
pub mod model;
pub mod wire;
