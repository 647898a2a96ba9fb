//! Tools for load testers and operators, each a `faccia` command: the load generator
//! (`bench`), the SIGKILL durability test (`crashtest`), the synthetic dataset (`generate`),
//! the whole path in one command (`demo`), the programme office's monthly report and bonus
//! settlement (`bulletin`), and the child `faccia serve` process the bench and
//! the crash test drive (`process`).
//!
//! Architecture invariant: the tools use the server only as a user would — as a `faccia serve`
//! process reached over QUIC (`bench`, `crashtest`, through `process` and `terminal`), as the
//! in-process `Server` the `demo` command starts, or through the library calls the commands
//! make (`query`, `storage::dataset`); nothing in a serving process calls into `tools`.

pub mod bench;
pub mod bulletin;
pub mod crashtest;
pub(crate) mod demo;
pub mod generate;
pub mod process;
