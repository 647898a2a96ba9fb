//! The terminal side: the client a town hall's terminal runs (`client`) and the simulated
//! citizens and fleets the demo, `faccia terminal` and the tools drive through it
//! (`simulate`).
//!
//! Architecture invariants:
//! - the client knows the wire format only through `faccia_core::wire` and QUIC only here and
//!   in `ingest`; it never reaches into the server's storage, query or engine;
//! - a batch is numbered once and never renumbered, so a retransmission is recognised;
//! - a batch that may have been sent never changes its votes: only a batch this process recorded
//!   and never handed to a stream is corrected by the server's clock (`client::Terminal::restamp`).

pub mod client;
pub mod simulate;
