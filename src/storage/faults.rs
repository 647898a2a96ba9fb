//! Fault injection: I/O errors on demand and crash points, for the fault tests. Compiled into
//! every build and off unless a test turns a switch on (`server::Hooks`) or `FACCIA_CRASH_POINT`
//! is set in a server's environment.
//!
//! `Faults` is a set of switches the engine consults right before each durable write (log
//! write, log fsync, Parquet file, checkpoint); a switched-on fault fails that operation with
//! the error a full disk gives (`ENOSPC`), exercising the same recovery path as the real thing.
//! Crash points abort the process at a named place when the environment variable
//! `FACCIA_CRASH_POINT` names it, so a test can stop a server exactly between two steps of a
//! flush. In production no switch is on and no variable is set: each check is one relaxed
//! atomic load.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The operations a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Writing a group of records to the log (also starting a new segment).
    WalWrite,
    /// The `fdatasync` that makes a written group of log records durable.
    WalSync,
    /// Writing a flush's Parquet files (the flush fails before any file is written).
    ParquetWrite,
    /// Writing the checkpoint that commits a flush, once its Parquet files are durable.
    CheckpointWrite,
}

const FAULTS: usize = 4;

/// Switches for injected I/O errors, shared by the engine's threads.
#[derive(Debug, Default)]
pub struct Faults {
    on: [AtomicBool; FAULTS],
}

impl Faults {
    /// Turns a fault on or off.
    pub fn set(&self, fault: Fault, on: bool) {
        self.on[fault as usize].store(on, Ordering::SeqCst);
    }

    /// Fails with "no space left on device" when `fault` is on.
    ///
    /// # Errors
    /// The injected error.
    pub(crate) fn check(&self, fault: Fault) -> io::Result<()> {
        if self.on[fault as usize].load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

/// Aborts the process (as `kill -9` would stop it: no destructors, no flush) when
/// `FACCIA_CRASH_POINT` equals `name`. The points, in the order a flush reaches them:
/// `flush.after_parquet` (every file of the flush is durable, the checkpoint is not written) and
/// `flush.after_checkpoint` (the checkpoint is committed, flushed log segments not yet removed);
/// and `wal.after_fsync` (a group of batches is durable in the log and not yet acknowledged).
/// `name@N` aborts the N-th time the point is reached.
pub(crate) fn crash_point(name: &str) {
    static POINT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let point = POINT.get_or_init(|| {
        let value = std::env::var("FACCIA_CRASH_POINT").ok()?;
        Some(match value.split_once('@') {
            Some((point, nth)) => (point.to_string(), nth.parse().unwrap_or(1)),
            None => (value, 1),
        })
    });
    if let Some((point, nth)) = point
        && point == name
        && REACHED.fetch_add(1, Ordering::Relaxed) + 1 >= *nth
    {
        eprintln!("faccia: crash point {name} reached; aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_fail_only_their_operation() {
        let faults = Faults::default();
        assert!(faults.check(Fault::WalSync).is_ok());
        faults.set(Fault::WalSync, true);
        let error = faults.check(Fault::WalSync).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28));
        assert!(faults.check(Fault::WalWrite).is_ok());
        faults.set(Fault::WalSync, false);
        assert!(faults.check(Fault::WalSync).is_ok());
    }
}
