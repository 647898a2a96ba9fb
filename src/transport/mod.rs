//! Transport: what the ingest server and the terminal client share below QUIC.
//!
//! TLS 1.3 identities and configurations (`tls`: the development CA, the production
//! certificate, session tickets that survive restarts, the stateless-reset key) and UDP
//! sockets with the buffers a fleet needs (`udp`).
//!
//! Architecture invariant: nothing here knows QUIC connections, frames or votes (of the wire
//! format it uses only the ALPN name, `wire::ALPN`); it does not depend on `ingest` or
//! `terminal`, which both depend on it.

pub mod tls;
pub(crate) mod udp;
