//! The server's configuration: command-line flags over an optional TOML file over defaults.
//!
//! ```toml
//! listen = "127.0.0.1:4747"          # QUIC ingest (UDP)
//! tls_cert = "/etc/faccia/cert.pem"  # production certificate chain (PEM); omit for the
//! tls_key = "/etc/faccia/key.pem"    # development certificate kept in DATA_DIR/tls
//!
//! [limits]                           # src/limits.rs: every field, with its reason
//! batch_votes_max = 4096
//!
//! [storage]
//! flush_rows = 1048576
//!
//! [misuse]                           # src/misuse.rs: the windows of the misuse rules
//! debounce_ms = 1000
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::{LimitError, Limits, StorageLimits};
use crate::misuse::MisuseRules;

/// Default QUIC ingest address: loopback, so that a first start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4747";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub limits: Limits,
    pub storage: StorageLimits,
    pub misuse: MisuseRules,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            tls_cert: None,
            tls_key: None,
            limits: Limits::default(),
            storage: StorageLimits::default(),
            misuse: MisuseRules::default(),
        }
    }
}

impl Config {
    /// Reads a TOML configuration file; absent fields keep their defaults.
    ///
    /// # Errors
    /// When the file cannot be read, or a field is unknown or of the wrong type (the message
    /// names it).
    pub fn read(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in the configuration file {}", path.display()))
    }

    /// Checks that the limits and rules work together (see `Limits::check`).
    ///
    /// # Errors
    /// The first value out of its range, named with its table.
    pub fn check(&self) -> Result<(), LimitError> {
        self.limits.check()?;
        self.misuse.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_file_keeps_defaults_and_unknown_fields_are_named() {
        let config: Config = toml::from_str("[limits]\nbatch_votes_max = 10\n").unwrap();
        assert_eq!(config.limits.batch_votes_max, 10);
        assert_eq!(config.limits.frame_bytes_max, Limits::default().frame_bytes_max);
        assert_eq!(config.listen, DEFAULT_LISTEN.parse::<SocketAddr>().unwrap());
        let error = toml::from_str::<Config>("[limits]\nbatch_vote_max = 10\n").unwrap_err().to_string();
        assert!(error.contains("batch_vote_max"), "{error}");
    }
}
