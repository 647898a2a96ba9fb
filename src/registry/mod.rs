//! The registry: who may vote and what they vote on.
//!
//! Owns the municipality list (`data/comuni.csv`, ISTAT), the service catalog
//! (`schemas/services.csv`) and the terminal directory (`DATA_DIR/terminals.json`: terminal id →
//! municipality and credential). Both catalogs are compiled into the binary so that faccia runs
//! from any directory; the terminal directory (written by `faccia terminals`, re-read by the
//! server when it changes) and `DATA_DIR/administrations.json` (written by `faccia
//! administrations`) are the registry state that changes at run time.
//!
//! One file per job: `catalog` (municipalities and services, compiled in), `istat` (ISTAT's
//! list and variations files), `editions` (an imported edition: `DATA_DIR/registry/catalog.json`,
//! the data directory's catalog from then on, with the successors of suppressed and renumbered
//! comuni), `directory`
//! (terminals, secrets, credentials, `terminals.json`), `administrations` (what the
//! programme's bonus rule needs, `administrations.json`), `unions` (unions of comuni, one
//! administration each, `unions.json`). The names are re-exported here.
//!
//! Architecture invariant: the registry never sees the network. It answers "who is terminal 42
//! and is this its secret", and the municipality of a vote always comes from here.

use std::path::{Path, PathBuf};

use crate::model::TerminalId;

mod administrations;
mod catalog;
mod directory;
mod editions;
mod istat;
mod unions;

pub(crate) use administrations::{AdministrationRecord, bonus_eur, list_administrations, set_administration};
pub(crate) use catalog::{Catalog, Edition, Municipality};
#[cfg(test)]
pub(crate) use directory::add_union_terminals;
pub(crate) use directory::{
    AuthError, Purchase, add_bought_terminals, add_terminals_bulk, list_terminals, set_purchase, write_credentials_csv,
};
pub use directory::{Credential, Secret, TerminalDirectory, add_terminals, revoke_terminal};
pub(crate) use editions::{ImportRequest, import, region_code, state_path};
pub(crate) use unions::{UnionRecord, add_union, eligibility as union_eligibility, list_unions};

/// What can go wrong reading or changing the registry's files (`terminals.json`, `administrations.json`) or parsing a secret.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A registry file (or its directory or lock file) could not be read, written or locked.
    #[error("reading {path}")]
    Io {
        /// The registry file being read or written.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A registry file is not JSON of the expected shape.
    #[error("{path} is not a faccia terminal directory")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error, with its line and column.
        source: serde_json::Error,
    },
    /// A registry file declares a format version this faccia does not read.
    #[error("{path} has format version {found}; this faccia reads version {expected}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The format version the file declares.
        found: u32,
        /// The format version this build reads for that file.
        expected: u32,
    },
    /// An ISTAT code that names no municipality of the data directory's current edition
    /// (`data/comuni.csv`, or the imported list: `faccia registry list`).
    #[error("municipality {0} is not in the registry (its current edition: faccia registry list)")]
    UnknownMunicipality(String),
    /// A code that an imported edition suppressed or renumbered: new registrations use its
    /// successor (terminals already registered there keep delivering).
    #[error("municipality {municipality} is no longer current ({kind}); its successor is {successor}")]
    Superseded {
        /// The code given.
        municipality: String,
        /// The current code that took its place.
        successor: String,
        /// `merger` or `renumbering`.
        kind: &'static str,
    },
    /// An ISTAT file that cannot be imported: the message names the file, line and field, or
    /// the comune and the rule.
    #[error("{0}")]
    Import(String),
    /// A union of comuni that cannot be registered as given, or a terminal that cannot be
    /// registered to a union: the message names the code, member or rule.
    #[error("{0}")]
    InvalidUnion(String),
    /// A terminal's purchase (supplier, order, date) as given cannot be recorded: the message
    /// names the flag and the accepted form.
    #[error("{0}")]
    InvalidPurchase(String),
    /// No registered terminal has this id.
    #[error("terminal {0} is not registered")]
    UnknownTerminal(TerminalId),
    /// A terminal secret is not 64 hexadecimal characters (wrong length, or a character that is not hexadecimal).
    #[error("a terminal secret is {expected} hexadecimal characters; got {found}")]
    SecretFormat {
        /// Length a secret must have: 64 characters (32 bytes in hexadecimal).
        expected: usize,
        /// Length of the text given, in bytes, after trimming surrounding whitespace.
        found: usize,
    },
}

/// Reads a registry file whose JSON carries a `version` (read by `version`): `None` when the
/// file does not exist.
///
/// # Errors
/// `Io` when it cannot be read, `Parse` when it is not that JSON, `Version` when it declares a
/// version other than `expected`.
fn read_versioned<T: serde::de::DeserializeOwned>(path: &Path, expected: u32, version: fn(&T) -> u32) -> Result<Option<T>, RegistryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RegistryError::Io { path: path.to_path_buf(), source }),
    };
    let file: T = serde_json::from_str(&text).map_err(|source| RegistryError::Parse { path: path.to_path_buf(), source })?;
    let found = version(&file);
    if found != expected {
        return Err(RegistryError::Version { path: path.to_path_buf(), found, expected });
    }
    Ok(Some(file))
}

/// Replaces a registry file with `file` as pretty JSON, atomically.
///
/// # Errors
/// `Io` when it cannot be written.
fn write_json<T: serde::Serialize>(path: &Path, file: &T) -> Result<(), RegistryError> {
    let text = serde_json::to_string_pretty(file).expect("a registry file serialises");
    crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|source| RegistryError::Io { path: path.to_path_buf(), source })
}
