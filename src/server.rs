//! The server process: assembles the engine, the terminal directory, TLS and the ingest
//! endpoint, runs them, and stops them in order.
//!
//! Shutdown order is what makes Ctrl-C lose nothing: stop accepting connections and streams →
//! answer every batch already read (the log writer makes them durable) → close connections with
//! `shutting_down` → drain the log writer → flush the buffer to Parquet → commit the checkpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::ingest::{self, Shared};
use crate::metrics::Metrics;
use crate::registry::TerminalDirectory;
use crate::tls;

/// How often the terminal directory file is checked for changes.
const DIRECTORY_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A running server. Dropping it without `stop` leaves the data as a crash would: safe, but
/// the next start replays the log.
pub struct Server {
    /// The UDP address terminals connect to.
    pub ingest_addr: SocketAddr,
    /// The CA certificate terminals must trust (the development CA unless one was configured).
    pub ca_path: Option<PathBuf>,
    pub engine: Arc<Engine>,
    pub data_dir: PathBuf,
    endpoint: quinn::Endpoint,
    shutdown: watch::Sender<bool>,
    accept_loop: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Recovers the data directory and starts serving.
    ///
    /// # Errors
    /// Data directory, TLS or socket errors, each naming what failed.
    pub async fn start(data_dir: PathBuf, config: Config) -> anyhow::Result<Server> {
        Server::start_with_clock(data_dir, config, Arc::new(SystemClock)).await
    }

    /// As `start`, with an injected clock (tests of time rules).
    ///
    /// # Errors
    /// As `start`.
    pub async fn start_with_clock(data_dir: PathBuf, config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Server> {
        config.check()?;
        let metrics = Arc::new(Metrics::new());
        let engine_config = EngineConfig { data_dir: data_dir.clone(), storage: config.storage.clone() };
        let engine = Engine::open(engine_config, metrics).await.context("opening the data directory")?;
        let directory = Arc::new(TerminalDirectory::open(&data_dir).context("reading the terminal directory")?);
        let (identity, ca_path) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => (tls::load_identity(cert, key)?, None),
            (None, None) => {
                let (identity, ca) = tls::dev_identity(&data_dir)?;
                (identity, Some(ca))
            }
            _ => anyhow::bail!("tls_cert and tls_key must be given together"),
        };
        let quic = ingest::server_config(tls::server_config(identity)?, &config.limits)?;
        let endpoint = ingest::bind(config.listen, quic).with_context(|| format!("binding the ingest address {}", config.listen))?;
        let ingest_addr = endpoint.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(Arc::clone(&engine), Arc::clone(&directory), &config, clock));
        let accept_loop = tokio::spawn(ingest::run(endpoint.clone(), shared, shutdown_rx.clone()));
        let background = vec![tokio::spawn(reload_directory(directory, shutdown_rx))];
        tracing::info!(
            ingest = %format!("quic://{ingest_addr}"),
            data_dir = %data_dir.display(),
            terminals = %engine_terminals(&data_dir),
            "faccia serving"
        );
        Ok(Server { ingest_addr, ca_path, engine, data_dir, endpoint, shutdown, accept_loop, background })
    }

    /// Stops the server without losing anything acknowledged or accepted (see module docs).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_loop.await;
        self.engine.shutdown().await;
        self.endpoint.close(quinn::VarInt::from_u32(crate::wire::ErrorCode::ShuttingDown.close_code()), b"shutting_down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        for task in self.background {
            task.abort();
        }
        tracing::info!("faccia stopped");
    }

    /// Runs until Ctrl-C or SIGTERM, then stops.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        wait_for_signal().await?;
        tracing::info!("signal received; stopping");
        self.stop().await;
        Ok(())
    }
}

fn engine_terminals(data_dir: &std::path::Path) -> usize {
    crate::registry::list_terminals(data_dir).map(|t| t.len()).unwrap_or(0)
}

async fn reload_directory(directory: Arc<TerminalDirectory>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DIRECTORY_RELOAD_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match directory.reload() {
            Ok(true) => tracing::info!(terminals = directory.len(), "terminal directory reloaded"),
            Ok(false) => {}
            Err(error) => tracing::warn!(error = %crate::wal::error_chain(&error), "terminal directory not reloaded; the previous one stays"),
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
