//! The server process: assembles the engine, the terminal directory, TLS and the ingest
//! endpoint, runs them, and stops them in order.
//!
//! Analysts reach the same engine over Flight SQL (`analysts::flight`) and HTTP (`analysts::http`), both on one SQL
//! context that sees the engine's memory (`query::server_context`).
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

use crate::analysts::service::SqlService;
use crate::analysts::tokens::{AnalystTokens, TokenSource};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::ingest::endpoint::{self, Listeners, Shared};
use crate::metrics::Metrics;
use crate::registry::TerminalDirectory;
use crate::storage::engine::{Engine, EngineConfig};
use crate::storage::faults::Faults;
use crate::transport::tls;

/// How often the terminal directory file is checked for changes.
const DIRECTORY_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// What tests can inject into a server.
pub struct Hooks {
    /// The clock the ingest rules read (timestamp windows, misuse detection); the system clock by default.
    pub clock: Arc<dyn Clock>,
    /// I/O faults and crash points the engine checks before each durable write; none switched on by default.
    pub faults: Arc<Faults>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks { clock: Arc::new(SystemClock), faults: Arc::default() }
    }
}

/// A running server. Dropping it without `stop` leaves the data as a crash would: safe, but
/// the next start replays the log.
pub struct Server {
    /// The UDP address terminals connect to.
    pub ingest_addr: SocketAddr,
    /// The TCP address of the Flight SQL server, when it serves one.
    pub flight_addr: Option<SocketAddr>,
    /// The TCP address of the HTTP server, when it serves one.
    pub http_addr: Option<SocketAddr>,
    /// The CA certificate terminals must trust (the development CA unless one was configured).
    pub ca_path: Option<PathBuf>,
    /// The storage engine: the votes, the log, the Parquet dataset and the server's metrics.
    pub engine: Arc<Engine>,
    /// The data directory the server recovered and writes to.
    pub data_dir: PathBuf,
    listeners: Arc<Listeners>,
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
        Server::start_with(data_dir, config, Hooks::default()).await
    }

    /// As `start`, with test hooks (an injected clock, injected I/O faults).
    ///
    /// # Errors
    /// As `start`.
    pub async fn start_with(data_dir: PathBuf, config: Config, hooks: Hooks) -> anyhow::Result<Server> {
        config.check()?;
        let Hooks { clock, faults } = hooks;
        let metrics = Arc::new(Metrics::new());
        let engine_config = EngineConfig { faults, ..EngineConfig::new(data_dir.clone(), config.storage.clone()) };
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
        let resumed = engine.metrics.tls_sessions_resumed.clone();
        let tickets = config.tls_session_tickets.then(|| tls::SessionTickets::open(&data_dir, resumed)).transpose()?;
        let quic = endpoint::server_config(tls::server_config(identity, tickets)?, &config.limits)?;
        let reset_key = tls::reset_key(&data_dir)?;
        let listeners = endpoint::bind(config.listen, quic, &reset_key, config.ingest_sockets)
            .with_context(|| format!("binding the ingest address {}", config.listen))?;
        let listeners = Arc::new(listeners);
        let ingest_addr = listeners.local_addr();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let alerts_clock = Arc::clone(&clock);
        let shared = Arc::new(Shared::new(Arc::clone(&engine), Arc::clone(&directory), &config, clock));
        let serving = Arc::clone(&listeners);
        let rx = shutdown_rx.clone();
        let accept_loop = tokio::spawn(async move { serving.serve(shared, rx).await });
        let mut background = vec![tokio::spawn(reload_directory(directory, shutdown_rx.clone()))];
        let (flight_addr, http_addr) = start_sql(&data_dir, &config, &engine, &shutdown_rx, &mut background).await?;
        background.extend(start_alerts(&data_dir, &config, &engine, alerts_clock, &shutdown_rx).await?);
        let url = |scheme: &str, addr: Option<SocketAddr>| addr.map_or_else(|| "off".to_string(), |a| format!("{scheme}://{a}"));
        tracing::info!(
            ingest = %format!("quic://{ingest_addr}"),
            sockets = listeners.sockets(),
            flight_sql = %url("grpc", flight_addr),
            http = %url("http", http_addr),
            data_dir = %data_dir.display(),
            terminals = %engine_terminals(&data_dir),
            "faccia serving"
        );
        Ok(Server { ingest_addr, flight_addr, http_addr, ca_path, engine, data_dir, listeners, shutdown, accept_loop, background })
    }

    /// Stops the server without losing anything acknowledged or accepted (see module docs).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_loop.await;
        self.engine.shutdown().await;
        self.listeners.close(Duration::from_secs(2)).await;
        for task in self.background {
            task.abort();
        }
        let metrics = &self.engine.metrics;
        tracing::info!(
            votes_stored = metrics.votes_stored.get(),
            batches_stored = metrics.batches_stored.get(),
            batches_duplicate = metrics.batches_duplicate.get(),
            "faccia stopped"
        );
    }

    /// Runs until Ctrl-C or SIGTERM (`signals`, installed before the server started, so that a
    /// signal arriving while it starts is not the default one that ends the process), then stops.
    pub(crate) async fn run_until_signal(self, mut signals: StopSignals) -> anyhow::Result<()> {
        signals.recv().await;
        tracing::info!("signal received; stopping");
        self.stop().await;
        Ok(())
    }
}

/// Starts the analysts' endpoints that `config` asks for; returns their addresses.
async fn start_sql(
    data_dir: &std::path::Path,
    config: &Config,
    engine: &Arc<Engine>,
    shutdown: &watch::Receiver<bool>,
    background: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<(Option<SocketAddr>, Option<SocketAddr>)> {
    if config.flight_listen.is_none() && config.http_listen.is_none() {
        return Ok((None, None));
    }
    let (tokens, source) = AnalystTokens::resolve(data_dir, &config.analyst_tokens).context("analyst tokens")?;
    match source {
        TokenSource::Configured(count) => tracing::info!(tokens = count, "analyst tokens from the configuration"),
        TokenSource::File { path, generated } => {
            let how = if generated { "generated" } else { "read" };
            tracing::info!(path = %path.display(), "analyst token {how}: give it to SQL clients as a bearer token");
        }
    }
    let ctx = crate::query::server_context(data_dir, Arc::clone(engine), &config.query, config.cluster.runs())
        .await
        .map_err(|e| anyhow::anyhow!("opening the SQL context: {e}"))?;
    let open_scoped: crate::analysts::service::ScopedContexts = {
        let (data_dir, engine, limits, runs) = (data_dir.to_path_buf(), Arc::clone(engine), config.query.clone(), config.cluster.runs());
        Arc::new(move |scope| {
            let (data_dir, engine, limits) = (data_dir.clone(), Arc::clone(&engine), limits.clone());
            Box::pin(async move { crate::query::server_context_in(&data_dir, engine, &limits, runs, &scope).await })
        })
    };
    let sql = Arc::new(
        SqlService::new(ctx, tokens, config.query.clone(), crate::cluster::Cluster::from_config(&config.cluster)).with_scopes(open_scoped),
    );
    let bind = |addr: SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the {what} address {addr}"))
    };
    let mut flight_addr = None;
    if let Some(addr) = config.flight_listen {
        let listener = bind(addr, "Flight SQL").await?;
        flight_addr = Some(listener.local_addr()?);
        let service = crate::analysts::flight::FlightSql::new(Arc::clone(&sql));
        background.push(tokio::spawn(crate::analysts::flight::serve(listener, service, shutdown.clone())));
    }
    let mut http_addr = None;
    if let Some(addr) = config.http_listen {
        let listener = bind(addr, "HTTP").await?;
        http_addr = Some(listener.local_addr()?);
        let state = Arc::new(crate::analysts::http::HttpState { sql, metrics: Arc::clone(&engine.metrics) });
        background.push(tokio::spawn(crate::analysts::http::serve(listener, state, shutdown.clone())));
    }
    Ok((flight_addr, http_addr))
}

/// Starts the alerts' evaluation (`alerts::spawn`) on a SQL context of its own over the engine,
/// when `[alerts] enabled`.
async fn start_alerts(
    data_dir: &std::path::Path,
    config: &Config,
    engine: &Arc<Engine>,
    clock: Arc<dyn Clock>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !config.alerts.enabled {
        return Ok(None);
    }
    let ctx = crate::query::server_context(data_dir, Arc::clone(engine), &config.query, crate::query::Runs::Here)
        .await
        .map_err(|e| anyhow::anyhow!("opening the alerts' SQL context: {e}"))?;
    let metrics = Arc::clone(&engine.metrics);
    crate::alerts::spawn(ctx, data_dir, config.alerts.clone(), clock, metrics, shutdown.clone()).context("starting the alerts")
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
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "terminal directory not reloaded; the previous one stays")
            }
        }
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment this is made.
pub(crate) struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Replaces the default action of SIGINT and SIGTERM (ending the process) by a notification.
    ///
    /// # Errors
    /// When a handler cannot be installed.
    pub(crate) fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
