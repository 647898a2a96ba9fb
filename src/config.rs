//! The server's configuration: command-line flags over an optional TOML file over defaults.
//!
//! ```toml
//! listen = "127.0.0.1:4747"          # QUIC ingest (UDP)
//! flight_listen = "127.0.0.1:4748"   # Arrow Flight SQL for analysts (TCP, gRPC)
//! http_listen = "127.0.0.1:4749"     # HTTP: /query, /health, /metrics (TCP)
//! analyst_tokens = ["…"]             # bearer tokens; or FACCIA_ANALYST_TOKEN; or, with none,
//!                                    # one generated into DATA_DIR/analyst-token
//! tls_cert = "/etc/faccia/cert.pem"  # production certificate chain (PEM); omit for the
//! tls_key = "/etc/faccia/key.pem"    # development certificate kept in DATA_DIR/tls
//! tls_session_tickets = true         # resumable sessions, across restarts (DATA_DIR/tls/ticket-key)
//!
//! [limits]                           # crates/faccia-core/src/limits.rs: every field, with its reason
//! batch_votes_max = 4096
//!
//! [storage]
//! flush_rows = 1048576
//!
//! [query]                            # limits of the SQL endpoints (crates/faccia-core/src/limits.rs)
//! http_result_rows_max = 1000000
//!
//! [misuse]                           # src/ingest/misuse.rs: the windows of the misuse rules
//! debounce_ms = 1000
//!
//! [cluster]                          # src/cluster: analysts' queries on a Ballista cluster
//! scheduler = "10.0.0.5:50050"       # omit to run them in the server
//! partitions = 8                     # scan tasks and shuffle partitions per query
//! query_timeout_s = 3600             # a query the cluster has not finished by then fails
//!
//! [alerts]                           # src/alerts: real-time alerts (schemas/alerts.md)
//! evaluate_interval_s = 10
//! webhook_url = "http://10.0.0.9:8080/faccia"   # signed JSON POSTs; omit to only record alerts
//! [alerts.red_share]                 # also terminal_silent, misuse_burst, clock_fault
//! share_pct_min = 50.0
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ingest::misuse::MisuseRules;
use crate::limits::{LimitError, Limits, QueryLimits, StorageLimits};

/// Default QUIC ingest address: loopback, so that a first start exposes nothing.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:4747";
/// Default Arrow Flight SQL address (TCP), next to the ingest port.
pub(crate) const DEFAULT_FLIGHT_LISTEN: &str = "127.0.0.1:4748";
/// Default HTTP address (TCP): `/query`, `/health`, `/metrics`.
pub(crate) const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:4749";

/// The server's configuration. Every field can be set in the TOML file; absent fields keep their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// QUIC ingest address terminals connect to (UDP); `127.0.0.1:4747` by default, so that a first start exposes nothing.
    pub listen: SocketAddr,
    /// UDP sockets sharing the ingest address (`SO_REUSEPORT`), each with its own endpoint
    /// driver; one per core by default, at most 256. Packets are steered to the socket owning
    /// their connection ID, so connections survive address changes (`ingest::endpoint::bind`).
    pub ingest_sockets: usize,
    /// Flight SQL address; `None` serves no Flight SQL (the demo, some tests).
    pub flight_listen: Option<SocketAddr>,
    /// HTTP address; `None` serves no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Analyst bearer tokens (see `analysts`).
    pub analyst_tokens: Vec<String>,
    /// Production certificate chain (PEM), given together with `tls_key`. With neither, the server makes a development
    /// certificate and keeps it in `DATA_DIR/tls`.
    pub tls_cert: Option<PathBuf>,
    /// Private key of `tls_cert` (PEM), given together with it.
    pub tls_key: Option<PathBuf>,
    /// Issue TLS session tickets that survive restarts (`transport::tls::SessionTickets`), so that
    /// terminals resume instead of running full handshakes after a restart.
    pub tls_session_tickets: bool,
    /// Ingest limits, the `[limits]` table (`Limits` gives each field and its reason).
    pub limits: Limits,
    /// When the Arrow buffer becomes a Parquet file and how the log rotates, the `[storage]` table.
    pub storage: StorageLimits,
    /// Limits of the SQL endpoints (Flight SQL, HTTP), the `[query]` table.
    pub query: QueryLimits,
    /// Windows of the misuse rules, the `[misuse]` table.
    pub misuse: MisuseRules,
    /// Where analysts' queries run, the `[cluster]` table (`cluster::ClusterConfig`).
    pub cluster: crate::cluster::ClusterConfig,
    /// Real-time alert rules and their webhook, the `[alerts]` table (`alerts::AlertsConfig`).
    pub alerts: crate::alerts::AlertsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            ingest_sockets: std::thread::available_parallelism().map_or(1, |n| n.get()),
            flight_listen: Some(DEFAULT_FLIGHT_LISTEN.parse().expect("valid default address")),
            http_listen: Some(DEFAULT_HTTP_LISTEN.parse().expect("valid default address")),
            analyst_tokens: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_session_tickets: true,
            limits: Limits::default(),
            storage: StorageLimits::default(),
            query: QueryLimits::default(),
            misuse: MisuseRules::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            alerts: crate::alerts::AlertsConfig::default(),
        }
    }
}

impl Config {
    /// Reads a TOML configuration file; absent fields keep their defaults.
    ///
    /// # Errors
    /// When the file cannot be read, or a field is unknown or of the wrong type (the message
    /// names it).
    pub(crate) fn read(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in the configuration file {}", path.display()))
    }

    /// Checks that the limits and rules work together (see `Limits::check`).
    ///
    /// # Errors
    /// The first value out of its range, named with its table.
    pub(crate) fn check(&self) -> Result<(), LimitError> {
        self.limits.check()?;
        self.storage.check()?;
        self.misuse.check()?;
        self.alerts.check()
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
