//! The load generator, `faccia bench`: how many terminals and votes per second a deployment
//! holds, and with what acknowledgement latency.
//!
//! Terminals connect the way real ones do — one QUIC connection each, over a few client
//! sockets, at a bounded handshake rate — and send numbered batches through the terminal
//! client library, so a server restart during a run is ridden out by reconnecting and
//! resending, and every vote acknowledged is counted once.
//!
//! Two load shapes: closed loop (the default: each terminal keeps `in_flight` batches
//! outstanding, as fast as acknowledgements allow) and open loop (`rate`: batches arrive as a
//! Poisson process regardless of how the server copes). In open loop, latency is measured from
//! the moment a batch was due, not from when the terminal got round to sending it, so a server
//! that stalls is charged for the queue it causes (no coordinated omission).
//!
//! At the end the generator cross-checks what it saw acknowledged against the server's own
//! counters and a SQL count over the dataset, and says so loudly if they differ.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::model::IstatCode;
use crate::registry::{self, Catalog, Credential};
use crate::terminal::client::{BatchId, ClientEndpoint, Event, ServerTarget, Terminal, close_endpoint};
use crate::terminal::simulate::{ClockFaults, VoteSimulator};
use crate::tools::process::{ServerProcess, free_udp_port, log_field};

/// Latency histograms are sharded so that thousands of terminals do not contend on one lock.
const HISTOGRAM_SHARDS: usize = 32;
/// Highest latency recorded exactly (µs); anything slower is recorded as this.
const LATENCY_US_MAX: u64 = 120_000_000;
/// How long terminals may take to deliver what is outstanding when the run ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the fleet may take to connect before the run starts anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// Share of municipalities with 1, 2, 3, 4, 5 terminals (mean 1.88: ~10,300 terminals over the
/// 5,490 small municipalities).
const TERMINALS_PER_MUNICIPALITY: [f64; 5] = [0.55, 0.20, 0.12, 0.08, 0.05];

/// Where the load goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start `faccia serve` (this executable) on a temporary directory and register terminals.
    Spawn {
        /// The `faccia` executable to run as the server.
        exe: PathBuf,
        /// Configuration file for the server (`None`: defaults); the bench sets its `listen` and lifts the per-address connection and
        /// per-terminal vote limits unless the file sets them.
        config: Option<PathBuf>,
        /// Data directory of the server; `None`: a temporary directory, removed after the run.
        data_dir: Option<PathBuf>,
    },
    /// A running server and the credentials of its terminals.
    Server {
        /// The server's QUIC address.
        addr: SocketAddr,
        /// Name the server's certificate is checked against.
        server_name: String,
        /// CA certificate the server's certificate is verified with.
        ca: PathBuf,
        /// CSV of the terminals' credentials (as written by `faccia terminals add --out`).
        credentials: PathBuf,
    },
}

/// What the bench does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where the load goes: a spawned server or a running one.
    pub target: Target,
    /// Number of terminals; default: every small municipality with 1–5 terminals each.
    pub terminals: Option<usize>,
    /// Use only the first N small municipalities.
    pub municipalities: Option<usize>,
    /// Votes per batch a terminal sends.
    pub batch_votes: usize,
    /// Batches each terminal keeps unacknowledged at once (closed loop), and its outbox's in-flight limit.
    pub in_flight: usize,
    /// How long the run is measured, after the warm-up.
    pub duration: Duration,
    /// How long terminals send before measuring starts (counted in the totals, not in rates or latency).
    pub warmup: Duration,
    /// Open loop at this many votes per second; `None`: closed loop.
    pub rate: Option<f64>,
    /// Client UDP sockets the terminals' connections are spread over (at least one is used).
    pub endpoints: usize,
    /// Handshakes allowed in progress at once, and started per second, by the generator.
    pub connect_concurrency: usize,
    /// Handshakes started per second by the generator.
    pub connect_rate: f64,
    /// Spawned server only: kill it with SIGKILL this long into the run and restart it (the
    /// reconnect storm).
    pub restart_at: Option<Duration>,
    /// Where to write the report as JSON, if asked (the caller writes it; `run` does not).
    pub json: Option<PathBuf>,
    /// Where to write the latency percentile plot (SVG), if asked (the caller draws it with `plot`).
    pub plot: Option<PathBuf>,
    /// Seed of the number of terminals per municipality and of the simulated votes (terminal i uses seed + i).
    pub seed: u64,
    /// The terminals' clock faults (none by default).
    pub clock: ClockFaults,
    /// Whether to show the live progress line (connected terminals, votes per second, errors).
    pub progress: bool,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Batches whose latency was recorded: those sent and acknowledged within the measured window.
    pub count: u64,
    /// Median acknowledgement latency of a batch, in microseconds.
    pub p50_us: u64,
    /// 90th percentile acknowledgement latency, in microseconds.
    pub(crate) p90_us: u64,
    /// 99th percentile acknowledgement latency, in microseconds.
    pub p99_us: u64,
    /// 99.9th percentile acknowledgement latency, in microseconds.
    pub(crate) p999_us: u64,
    /// Slowest acknowledgement, in microseconds (capped at 120 s).
    pub max_us: u64,
    /// Mean acknowledgement latency, in microseconds.
    pub(crate) mean_us: f64,
}

/// The reconnect storm after a server restart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Storm {
    /// From the restarted server reporting ready until the last terminal had reconnected and
    /// had every batch it held (sent before the kill or queued during the outage) acknowledged.
    pub(crate) all_caught_up_ms: u64,
    /// Terminals that reconnected after the restart and had everything they held acknowledged.
    pub terminals_caught_up: usize,
    /// From the kill to the restarted server reporting ready (log replay included).
    pub(crate) server_restart_ms: u64,
    /// Milliseconds from the restarted server ready to each terminal's new connection: p50,
    /// p90, p99 and the last.
    pub(crate) reconnected_ms: [u64; 4],
    /// The same to each terminal caught up (everything it held acknowledged).
    pub(crate) caught_up_ms: [u64; 4],
    /// Milliseconds from the kill to each terminal learning that its connection was gone (its
    /// first `Disconnected`): p50, p90, p99 and the last.
    pub(crate) lost_ms: [u64; 4],
    /// Milliseconds from that moment to the terminal's new connection (backoff, refused and
    /// timed-out attempts, the handshake itself): p50, p90, p99 and the last.
    pub(crate) reconnecting_ms: [u64; 4],
    /// Failed connection attempts per terminal between the loss and the new connection: p50,
    /// p90, p99 and the most.
    pub(crate) failed_attempts: [u64; 4],
    /// Every failure after the kill, by kind (`failure_kind`): the loss itself and failed attempts.
    pub(crate) failures: BTreeMap<String, u64>,
    /// The slowest terminal's timeline: (ms since the kill, what happened).
    pub(crate) slowest: Vec<(u64, String)>,
}

/// A terminal's failure in a few words, from the client's error text: how it learnt that its
/// connection was gone, or why an attempt failed.
fn failure_kind(error: &str) -> &'static str {
    if error.contains("reset by peer") {
        "stateless reset"
    } else if error.contains("refused to accept") {
        "handshake refused (CONNECTION_REFUSED)"
    } else if error.contains("no QUIC handshake") {
        "handshake timeout"
    } else if error.contains("timed out") {
        "idle timeout"
    } else if error.contains("no reply within") {
        "reply timeout"
    } else {
        "other"
    }
}

/// p50, p90, p99 and the maximum of `values` (zeros when there are none).
fn quantiles(mut values: Vec<u64>) -> [u64; 4] {
    values.sort_unstable();
    let at = |q: f64| values.get(((values.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
    [at(0.50), at(0.90), at(0.99), values.last().copied().unwrap_or(0)]
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Load shape: "closed loop" or "open loop".
    pub(crate) mode: String,
    /// Simulated terminals in the fleet.
    pub terminals: usize,
    /// Distinct municipalities the terminals belong to.
    pub municipalities: usize,
    /// Client UDP sockets the connections were spread over.
    pub(crate) endpoints: usize,
    /// Votes per batch.
    pub(crate) batch_votes: usize,
    /// Batches each terminal kept outstanding (closed loop).
    pub(crate) in_flight: usize,
    /// Open loop: the target arrival rate in votes per second over the whole fleet; `None` in closed loop.
    pub(crate) rate_target_votes_per_s: Option<f64>,
    /// Warm-up before measuring, in seconds.
    pub(crate) warmup_s: f64,
    /// Length of the measured window, in seconds.
    pub(crate) measured_s: f64,
    /// Seconds the fleet took to connect (at most the connect timeout, 120 s).
    pub(crate) connect_s: f64,
    /// Terminals divided by the connect time, in handshakes per second.
    pub(crate) handshakes_per_s: f64,
    /// Votes acknowledged over the whole run, warm-up and drain included.
    pub votes_acknowledged: u64,
    /// Batches acknowledged over the whole run, warm-up and drain included.
    pub(crate) batches_acknowledged: u64,
    /// Votes acknowledged per second over the measured window.
    pub(crate) votes_per_s: f64,
    /// Batches acknowledged per second over the measured window.
    pub(crate) batches_per_s: f64,
    /// Acknowledgement latency of the batches in the measured window.
    pub latency: Latency,
    /// Errors the terminals met (rejections, lost connections, failed handshakes…), counted by kind.
    pub errors: BTreeMap<String, u64>,
    /// Spawned server's resident memory in bytes before the terminals connected; `None` if not ours or unreadable.
    pub(crate) server_rss_idle_bytes: Option<u64>,
    /// Spawned server's resident memory in bytes with the fleet connected; `None` if not ours or unreadable.
    pub(crate) server_rss_connected_bytes: Option<u64>,
    /// Growth of the server's resident memory per terminal (connected minus idle, divided by the terminals), in bytes.
    pub(crate) server_bytes_per_terminal: Option<f64>,
    /// The reconnect storm, when the run restarted the server; `None` otherwise.
    pub storm: Option<Storm>,
    /// Votes the spawned server counted as stored, from its shutdown log line; `None` if not ours or not reported.
    pub server_votes_stored: Option<u64>,
    /// Votes SQL counts in the dataset afterwards (`SELECT count(*) FROM votes`); `None` when the server is not ours.
    pub sql_votes: Option<u64>,
    /// Of those, the votes stored as clock faults (`misuse = 4`: the terminal's time was
    /// implausible, they carry the receive time); `None` when the server is not ours.
    pub sql_votes_clock_faulted: Option<u64>,
    /// Warnings and errors in the spawned server's log (the first ones).
    pub(crate) server_log_problems: Vec<String>,
    /// Outcome of comparing the acknowledged votes with the server's counters and SQL: "ok: …", "not checked: …" or "MISMATCH: …".
    pub cross_check: String,
    /// (percentile, latency in µs) points for the plot, denser towards the tail, ending with (100, maximum).
    pub(crate) percentiles: Vec<(f64, u64)>,
}

/// Counters every terminal task updates.
#[derive(Default)]
struct Shared {
    votes: AtomicU64,
    batches: AtomicU64,
    votes_measured: AtomicU64,
    batches_measured: AtomicU64,
    connected: AtomicUsize,
    /// When each terminal reconnected, and caught up (reconnected with nothing outstanding),
    /// after a restart (ms since the run started).
    reconnected_at_ms: Mutex<Vec<u64>>,
    caught_up_at_ms: Mutex<Vec<u64>>,
    /// Each reconnected terminal's timeline after the kill.
    timelines: Mutex<Vec<Timeline>>,
    /// The run's clock, set when the fleet is connected and the run starts.
    clock: std::sync::OnceLock<Arc<Clock>>,
    errors: Mutex<BTreeMap<String, u64>>,
    histograms: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn new() -> Shared {
        let histogram = || Mutex::new(Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds"));
        Shared { histograms: (0..HISTOGRAM_SHARDS).map(|_| histogram()).collect(), ..Shared::default() }
    }

    fn error(&self, kind: String) {
        *self.errors.lock().expect("errors lock").entry(kind).or_default() += 1;
    }
}

/// Phases of a run, broadcast to every terminal task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connecting,
    Running,
    Draining,
}

/// The moments a run is measured between, and the restart, shared with the terminals.
struct Clock {
    started: Instant,
    measure_from: Instant,
    measure_until: Instant,
    /// Set when a restarted server is ready: terminals note when they have caught up after it.
    restarted: Mutex<Option<Instant>>,
    /// Set just before the server is killed: terminals time their timelines from it.
    killed: Mutex<Option<Instant>>,
}

impl Clock {
    fn new(started: Instant, plan: &Plan) -> Clock {
        Clock {
            started,
            measure_from: started + plan.warmup,
            measure_until: started + plan.warmup + plan.duration,
            restarted: Mutex::new(None),
            killed: Mutex::new(None),
        }
    }

    fn restarted(&self) -> Option<Instant> {
        *self.restarted.lock().expect("clock lock")
    }

    /// Milliseconds since the kill, if the server was killed.
    fn since_kill_ms(&self) -> Option<u64> {
        self.killed.lock().expect("clock lock").map(|at| at.elapsed().as_millis() as u64)
    }
}

/// Assigns terminals to municipalities: every small one (or the first `municipalities`), with
/// 1–5 terminals each, or exactly `terminals` terminals spread over them.
fn fleet(plan: &Plan, rng: &mut rand::rngs::StdRng) -> Vec<IstatCode> {
    let mut small: Vec<IstatCode> = Catalog::builtin().eligible().map(|m| m.code).collect();
    if let Some(n) = plan.municipalities {
        small.truncate(n.max(1));
    }
    match plan.terminals {
        Some(n) => (0..n).map(|i| small[i % small.len()]).collect(),
        None => small
            .iter()
            .flat_map(|&code| {
                let mut x = rng.random::<f64>();
                let count = TERMINALS_PER_MUNICIPALITY.iter().position(|share| {
                    x -= share;
                    x < 0.0
                });
                std::iter::repeat_n(code, count.unwrap_or(4) + 1)
            })
            .collect(),
    }
}

/// Runs the bench and returns its report (also printed, written as JSON and plotted if asked).
///
/// # Errors
/// Setup failures (server, credentials, sockets); a failed cross-check is reported, and turned
/// into an error by the caller.
pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed);
    let temporary = tempfile::Builder::new().prefix("faccia-bench-").tempdir()?;
    let (mut server, credentials, target, data_dir) = setup(plan, temporary.path(), &mut rng)?;
    let municipalities = credentials.iter().map(|c| c.municipality).collect::<std::collections::HashSet<_>>().len();
    let rss_idle = server.as_ref().and_then(ServerProcess::rss_bytes);
    let endpoints: Vec<ClientEndpoint> =
        (0..plan.endpoints.max(1)).map(|_| crate::terminal::client::client_endpoint_with_buffers(target.addr)).collect::<Result<_, _>>()?;
    let shared = Arc::new(Shared::new());
    let (phase, phase_rx) = watch::channel(Phase::Connecting);
    let gate = Arc::new(ConnectGate::new(plan.connect_concurrency, plan.connect_rate));
    let per_terminal_rate = plan.rate.map(|r| r / credentials.len() as f64 / plan.batch_votes as f64);
    let terminal_count = credentials.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, credential) in credentials.into_iter().enumerate() {
        let terminal = Terminal::new(credential, endpoints[i % endpoints.len()].clone(), target.clone(), plan.in_flight);
        let task = TerminalTask {
            index: i,
            batch_votes: plan.batch_votes,
            in_flight: plan.in_flight,
            batches_per_s: per_terminal_rate,
            shared: Arc::clone(&shared),
            gate: Arc::clone(&gate),
            seed: plan.seed.wrapping_add(i as u64),
            clock: plan.clock,
        };
        tasks.spawn(task.run(terminal, phase_rx.clone()));
    }
    let progress = Progress::start(plan.progress, Arc::clone(&shared), terminal_count);
    let connect_started = Instant::now();
    while shared.connected.load(Ordering::Relaxed) < terminal_count && connect_started.elapsed() < CONNECT_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let rss_connected = server.as_ref().and_then(ServerProcess::rss_bytes);
    // The clock of the run starts now that the fleet is connected.
    let started = Instant::now();
    let clock = Arc::new(Clock::new(started, plan));
    let _ = shared.clock.set(Arc::clone(&clock));
    phase.send_replace(Phase::Running);
    let mut storm = None;
    if let Some(at) = plan.restart_at {
        let process = server.take().context("--restart-at needs a spawned server")?;
        tokio::time::sleep_until((started + at).into()).await;
        *clock.killed.lock().expect("clock lock") = Some(Instant::now());
        let (restarted, server_restart_ms) = restart(process, plan, &data_dir)?;
        let ready = Instant::now();
        *clock.restarted.lock().expect("clock lock") = Some(ready);
        server = Some(restarted);
        storm = Some((ready, server_restart_ms));
    }
    tokio::time::sleep_until(clock.measure_until.into()).await;
    phase.send_replace(Phase::Draining);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while tasks.join_next().await.is_some() {} }).await;
    progress.finish();
    if drained.is_err() {
        shared.error("undelivered at the end (drain timed out)".into());
    }
    for endpoint in &endpoints {
        close_endpoint(endpoint);
    }
    let mut report = Report {
        mode: if plan.rate.is_some() { "open loop".into() } else { "closed loop".into() },
        terminals: terminal_count,
        municipalities,
        endpoints: endpoints.len(),
        batch_votes: plan.batch_votes,
        in_flight: plan.in_flight,
        rate_target_votes_per_s: plan.rate,
        warmup_s: plan.warmup.as_secs_f64(),
        measured_s: plan.duration.as_secs_f64(),
        connect_s,
        handshakes_per_s: terminal_count as f64 / connect_s.max(1e-9),
        votes_acknowledged: shared.votes.load(Ordering::Relaxed),
        batches_acknowledged: shared.batches.load(Ordering::Relaxed),
        votes_per_s: shared.votes_measured.load(Ordering::Relaxed) as f64 / plan.duration.as_secs_f64(),
        batches_per_s: shared.batches_measured.load(Ordering::Relaxed) as f64 / plan.duration.as_secs_f64(),
        errors: shared.errors.lock().expect("errors lock").clone(),
        server_rss_idle_bytes: rss_idle,
        server_rss_connected_bytes: rss_connected,
        server_bytes_per_terminal: rss_idle.zip(rss_connected).map(|(i, c)| c.saturating_sub(i) as f64 / terminal_count as f64),
        ..Report::default()
    };
    let merged = merge(&shared.histograms);
    report.latency = latency(&merged);
    report.percentiles = percentile_curve(&merged);
    if let Some((ready, server_restart_ms)) = storm {
        let ready_ms = ready.duration_since(started).as_millis() as u64;
        let since_ready = |at: &Mutex<Vec<u64>>| {
            let at = at.lock().expect("storm times lock");
            quantiles(at.iter().map(|t| t.saturating_sub(ready_ms)).collect())
        };
        let caught_up_ms = since_ready(&shared.caught_up_at_ms);
        let timelines = std::mem::take(&mut *shared.timelines.lock().expect("storm times lock"));
        let mut failures = BTreeMap::new();
        for event in timelines.iter().flat_map(|t| &t.events) {
            *failures.entry(event.1.to_string()).or_default() += 1;
        }
        let lost = |t: &Timeline| t.events.first().map_or(t.reconnected_ms, |e| e.0);
        report.storm = Some(Storm {
            all_caught_up_ms: caught_up_ms[3],
            terminals_caught_up: shared.caught_up_at_ms.lock().expect("storm times lock").len(),
            server_restart_ms,
            reconnected_ms: since_ready(&shared.reconnected_at_ms),
            caught_up_ms,
            lost_ms: quantiles(timelines.iter().map(lost).collect()),
            reconnecting_ms: quantiles(timelines.iter().map(|t| t.reconnected_ms.saturating_sub(lost(t))).collect()),
            failed_attempts: quantiles(timelines.iter().map(|t| t.events.len().saturating_sub(1) as u64).collect()),
            failures,
            slowest: timelines.iter().max_by_key(|t| t.reconnected_ms).map(Timeline::described).unwrap_or_default(),
        });
    }
    cross_check(&mut report, server, plan.restart_at.is_some(), data_dir.as_deref()).await?;
    Ok(report)
}

type Setup = (Option<ServerProcess>, Vec<Credential>, ServerTarget, Option<PathBuf>);

fn setup(plan: &Plan, temporary: &Path, rng: &mut rand::rngs::StdRng) -> anyhow::Result<Setup> {
    match &plan.target {
        Target::Spawn { exe, config, data_dir } => {
            let data_dir = data_dir.clone().unwrap_or_else(|| temporary.join("data"));
            let slots = fleet(plan, rng);
            let credentials = registry::add_terminals_bulk(&data_dir, &slots, "bench")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
            let config_path = temporary.join("bench.toml");
            let text = config.as_ref().map(std::fs::read_to_string).transpose()?.unwrap_or_default();
            // Every simulated terminal connects from 127.0.0.1 and sends far faster than people
            // press buttons: lift the two limits meant for real terminals (unless the given
            // configuration sets them).
            let bench = [
                ("limits.connections_per_address_max", i64::from(u32::MAX).into()),
                ("limits.votes_per_terminal_per_minute_max", i64::from(u32::MAX).into()),
            ];
            std::fs::write(&config_path, crate::tools::process::child_config(addr, &text, &bench)?)?;
            let server = ServerProcess::start(exe, &data_dir, &config_path, addr, &[])?;
            let target = server.target()?;
            Ok((Some(server), credentials, target, Some(data_dir)))
        }
        Target::Server { addr, server_name, ca, credentials } => {
            let mut credentials = Credential::read_csv(credentials)?;
            if let Some(n) = plan.terminals {
                credentials.truncate(n);
            }
            Ok((None, credentials, ServerTarget::new(*addr, server_name, ca)?, None))
        }
    }
}

fn restart(process: ServerProcess, plan: &Plan, data_dir: &Option<PathBuf>) -> anyhow::Result<(ServerProcess, u64)> {
    let Target::Spawn { exe, .. } = &plan.target else { bail!("--restart-at needs --spawn") };
    let data_dir = data_dir.as_ref().context("a spawned server has a data directory")?;
    let (addr, config) = (process.addr, process.config.clone());
    let killed = Instant::now();
    process.kill();
    let restarted = ServerProcess::start(exe, data_dir, &config, addr, &[])?;
    Ok((restarted, killed.elapsed().as_millis() as u64))
}

/// Compares the votes acknowledged with the server's counters and with SQL.
async fn cross_check(report: &mut Report, server: Option<ServerProcess>, restarted: bool, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if let Some(server) = server {
        let problems_logged = Arc::clone(&server.problems);
        let (status, line) = server.terminate_with_log()?;
        report.server_log_problems = problems_logged.lock().expect("log lock").iter().take(20).cloned().collect();
        if !status.success() {
            problems.push(format!("the server's clean shutdown failed: {status}"));
        }
        report.server_votes_stored = line.as_deref().and_then(|l| log_field(l, "votes_stored"));
        match (report.server_votes_stored, restarted) {
            (Some(stored), false) if stored != report.votes_acknowledged => {
                problems.push(format!("the server counted {stored} votes stored, the terminals {} acknowledged", report.votes_acknowledged))
            }
            (None, _) => problems.push("the server did not report its counters".into()),
            _ => {}
        }
    }
    if let Some(dir) = data_dir {
        let ctx = crate::query::context(dir).await?;
        let batches = crate::query::run(&ctx, "SELECT count(*) FROM votes").await?;
        let sql = batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map_or(0, |a| a.value(0)) as u64;
        report.sql_votes = Some(sql);
        let batches =
            crate::query::run(&ctx, &format!("SELECT count(*) FROM votes WHERE misuse = {}", crate::storage::buffer::CLOCK_FAULT)).await?;
        let faulted = batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map_or(0, |a| a.value(0)) as u64;
        report.sql_votes_clock_faulted = Some(faulted);
        if sql != report.votes_acknowledged {
            problems.push(format!("SQL counts {sql} votes, the terminals {} acknowledged", report.votes_acknowledged));
        }
    }
    report.cross_check = if problems.is_empty() {
        match (report.sql_votes.is_some(), restarted) {
            (true, false) => "ok: terminals = server counters = SQL".into(),
            (true, true) => "ok: terminals = SQL (server counters restart with the server)".into(),
            _ => "not checked: the server is not ours (use /metrics)".into(),
        }
    } else {
        format!("MISMATCH: {}", problems.join("; "))
    };
    Ok(())
}

/// Bounds the generator's handshakes: at most `concurrency` in progress, `rate` started per s.
struct ConnectGate {
    in_progress: Semaphore,
    interval: Duration,
    next: Mutex<Instant>,
}

impl ConnectGate {
    fn new(concurrency: usize, rate: f64) -> ConnectGate {
        ConnectGate {
            in_progress: Semaphore::new(concurrency.max(1)),
            interval: Duration::from_secs_f64(1.0 / rate.max(1.0)),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn admit(&self) -> tokio::sync::SemaphorePermit<'_> {
        let permit = self.in_progress.acquire().await.expect("the gate is never closed");
        let at = {
            let mut next = self.next.lock().expect("gate lock");
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at.into()).await;
        permit
    }
}

/// One simulated terminal.
struct TerminalTask {
    index: usize,
    batch_votes: usize,
    in_flight: usize,
    /// Open loop: mean batches per second of this terminal.
    batches_per_s: Option<f64>,
    shared: Arc<Shared>,
    gate: Arc<ConnectGate>,
    seed: u64,
    clock: ClockFaults,
}

impl TerminalTask {
    async fn run(self, mut terminal: Terminal, mut phase: watch::Receiver<Phase>) {
        let mut citizens = VoteSimulator::new(self.seed, terminal.credential.municipality);
        if let Err(error) = self.clock.apply(&mut terminal, &mut citizens, self.batch_votes) {
            self.shared.error(format!("outbox: {error}"));
        }
        loop {
            let permit = self.gate.admit().await;
            let connected = terminal.connect().await;
            drop(permit);
            match connected {
                Ok(()) => break,
                Err(error) if error.is_final() => {
                    self.shared.error(format!("refused: {error}"));
                    return;
                }
                Err(_) => self.shared.error("handshake failed (retried)".into()),
            }
        }
        self.shared.connected.fetch_add(1, Ordering::Relaxed);
        let _ = phase.wait_for(|p| *p >= Phase::Running).await;
        let clock = Arc::clone(self.shared.clock.get().expect("the clock is set before the run starts"));
        let mut due: HashMap<BatchId, Instant> = HashMap::new();
        let mut next_arrival = Instant::now();
        let mut storm = StormWatch::default();
        loop {
            let running = *phase.borrow() == Phase::Running;
            if !running && terminal.unacknowledged() == 0 {
                break;
            }
            if running {
                self.enqueue_due(&mut terminal, &mut citizens, &mut due, &mut next_arrival);
            }
            let wake = match (running, self.batches_per_s) {
                (true, Some(_)) => next_arrival,
                _ => Instant::now() + Duration::from_secs(3600),
            };
            let event = tokio::select! {
                event = terminal.next_event() => event,
                _ = tokio::time::sleep_until(wake.into()) => continue,
                _ = phase.changed() => continue,
            };
            match event {
                Event::Acknowledged { batch, votes, .. } => {
                    let sent = due.remove(&batch).unwrap_or_else(Instant::now);
                    self.acknowledged(&clock, sent, votes as u64);
                }
                Event::Idle => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake.into()) => {}
                        _ = phase.changed() => {}
                    }
                }
                Event::Rejected { rejection, batch, .. } => {
                    due.remove(&batch);
                    self.shared.error(format!("rejected: {}", rejection.code));
                }
                Event::RetryLater { rejection, .. } => self.shared.error(format!("retry later: {}", rejection.code)),
                Event::Disconnected { error } => {
                    self.shared.error("connection lost (reconnected)".into());
                    storm.failed(&clock, &error);
                }
                Event::Fatal(error) => {
                    self.shared.error(format!("refused: {error}"));
                    return;
                }
                Event::Connected { .. } => {
                    if let Some(timeline) = storm.reconnected(&clock) {
                        let at_ms = clock.started.elapsed().as_millis() as u64;
                        self.shared.reconnected_at_ms.lock().expect("storm times lock").push(at_ms);
                        self.shared.timelines.lock().expect("storm times lock").push(timeline);
                    }
                }
            }
            if storm.caught_up(&clock, &terminal) {
                let at_ms = clock.started.elapsed().as_millis() as u64;
                self.shared.caught_up_at_ms.lock().expect("storm times lock").push(at_ms);
            }
        }
        terminal.close();
    }

    /// Closed loop: keep `in_flight` batches outstanding. Open loop: enqueue every batch whose
    /// Poisson arrival time has come, whatever is outstanding.
    fn enqueue_due(&self, terminal: &mut Terminal, citizens: &mut VoteSimulator, due: &mut HashMap<BatchId, Instant>, next: &mut Instant) {
        let now = Instant::now();
        let enqueue = |terminal: &mut Terminal, citizens: &mut VoteSimulator, due: &mut HashMap<BatchId, Instant>, at: Instant| {
            let votes = citizens.votes(terminal.device_now_ms(), 1_000, self.batch_votes);
            match terminal.enqueue(&votes) {
                Ok(batch) => {
                    due.insert(batch, at);
                }
                Err(error) => self.shared.error(format!("outbox: {error}")),
            }
        };
        match self.batches_per_s {
            None => {
                while terminal.unacknowledged() < self.in_flight {
                    enqueue(terminal, citizens, due, now);
                }
            }
            Some(rate) => {
                while *next <= now {
                    enqueue(terminal, citizens, due, *next);
                    let gap = -citizens.rng().random::<f64>().max(1e-12).ln() / rate;
                    *next += Duration::from_secs_f64(gap);
                }
            }
        }
    }

    fn acknowledged(&self, clock: &Clock, sent: Instant, votes: u64) {
        let now = Instant::now();
        self.shared.votes.fetch_add(votes, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        if sent >= clock.measure_from && now <= clock.measure_until {
            self.shared.votes_measured.fetch_add(votes, Ordering::Relaxed);
            self.shared.batches_measured.fetch_add(1, Ordering::Relaxed);
            let micros = now.duration_since(sent).as_micros().min(u128::from(LATENCY_US_MAX)) as u64;
            let shard = &self.shared.histograms[self.index % HISTOGRAM_SHARDS];
            shard.lock().expect("histogram lock").saturating_record(micros.max(1));
        }
    }
}

/// One terminal's view of a server restart: how it learnt of it, its failed attempts, its new
/// connection, then caught up.
#[derive(Default)]
struct StormWatch {
    /// Failures since the kill: (ms since the kill, `failure_kind`), at most `TIMELINE_EVENTS_MAX`.
    events: Vec<(u64, &'static str)>,
    reconnected: bool,
    counted: bool,
}

/// Failures a terminal's timeline keeps (the first ones: the tail's story is in them).
const TIMELINE_EVENTS_MAX: usize = 64;

/// A reconnected terminal's timeline, in ms since the kill.
struct Timeline {
    /// Its failures: the loss first, then each failed attempt.
    events: Vec<(u64, &'static str)>,
    reconnected_ms: u64,
}

impl Timeline {
    fn described(&self) -> Vec<(u64, String)> {
        let mut lines: Vec<(u64, String)> = self.events.iter().map(|&(at, kind)| (at, kind.to_string())).collect();
        lines.push((self.reconnected_ms, "connected".into()));
        lines
    }
}

impl StormWatch {
    /// Notes a failure (a lost connection or a failed attempt) after the kill.
    fn failed(&mut self, clock: &Clock, error: &str) {
        if let Some(at) = clock.since_kill_ms()
            && !self.reconnected
            && self.events.len() < TIMELINE_EVENTS_MAX
        {
            self.events.push((at, failure_kind(error)));
        }
    }

    /// Notes a new connection; its timeline if it is the terminal's first after the restart.
    fn reconnected(&mut self, clock: &Clock) -> Option<Timeline> {
        let first = !self.reconnected && clock.restarted().is_some_and(|ready| Instant::now() >= ready);
        self.reconnected |= first;
        let reconnected_ms = clock.since_kill_ms().filter(|_| first)?;
        Some(Timeline { events: std::mem::take(&mut self.events), reconnected_ms })
    }

    /// True once, when the terminal has reconnected after the restart and holds nothing
    /// unacknowledged.
    fn caught_up(&mut self, clock: &Clock, terminal: &Terminal) -> bool {
        if self.counted || !self.reconnected || terminal.unacknowledged() > 0 || clock.restarted().is_none() {
            return false;
        }
        self.counted = true;
        true
    }
}

fn merge(shards: &[Mutex<Histogram<u64>>]) -> Histogram<u64> {
    let mut merged = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds");
    for shard in shards {
        merged.add(&*shard.lock().expect("histogram lock")).expect("same bounds");
    }
    merged
}

fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
    }
}

/// (percentile, µs) points for the plot, denser towards the tail.
fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut tail = 1.0;
    while tail > 1e-6 {
        for step in [1.0, 0.75, 0.5, 0.25] {
            let q = 1.0 - tail * step;
            points.push((q * 100.0, h.value_at_quantile(q)));
        }
        tail /= 10.0;
    }
    points.push((100.0, h.max()));
    points
}

/// The live progress line.
struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn start(enabled: bool, shared: Arc<Shared>, terminals: usize) -> Progress {
        let bar = if enabled { indicatif::ProgressBar::new_spinner() } else { indicatif::ProgressBar::hidden() };
        let tick = bar.clone();
        let task = tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let votes = shared.votes.load(Ordering::Relaxed);
                let elapsed = last.0.elapsed().as_secs_f64();
                let rate = (votes - last.1) as f64 / elapsed.max(1e-9);
                last = (Instant::now(), votes);
                let errors: u64 = shared.errors.lock().expect("errors lock").values().sum();
                tick.set_message(format!(
                    "{}/{terminals} connected · {:>10.0} votes/s · {:>12} votes acknowledged · {errors} errors",
                    shared.connected.load(Ordering::Relaxed),
                    rate,
                    votes
                ));
                tick.tick();
            }
        });
        Progress { task: Some(task), bar }
    }

    fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.bar.finish_and_clear();
    }
}

/// The report as an aligned table.
pub fn render(report: &Report) -> String {
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    let mut rows: Vec<(String, String)> = vec![
        ("mode".into(), report.mode.clone()),
        (
            "terminals".into(),
            format!("{} in {} municipalities, over {} client sockets", report.terminals, report.municipalities, report.endpoints),
        ),
        ("batch".into(), format!("{} votes, {} in flight per terminal", report.batch_votes, report.in_flight)),
        ("connected".into(), format!("{:.1} s ({:.0} handshakes/s)", report.connect_s, report.handshakes_per_s)),
        ("measured".into(), format!("{:.0} s after {:.0} s of warm-up", report.measured_s, report.warmup_s)),
        ("throughput".into(), format!("{:.0} votes/s, {:.0} batches/s acknowledged", report.votes_per_s, report.batches_per_s)),
        ("latency p50".into(), ms(report.latency.p50_us)),
        ("latency p90".into(), ms(report.latency.p90_us)),
        ("latency p99".into(), ms(report.latency.p99_us)),
        ("latency p99.9".into(), ms(report.latency.p999_us)),
        ("latency max".into(), ms(report.latency.max_us)),
        (
            "votes acknowledged".into(),
            format!("{} ({} batches), warm-up and drain included", report.votes_acknowledged, report.batches_acknowledged),
        ),
    ];
    if let Some(rate) = report.rate_target_votes_per_s {
        rows.insert(1, ("target rate".into(), format!("{rate:.0} votes/s (Poisson arrivals)")));
    }
    if let Some(bytes) = report.server_bytes_per_terminal {
        let rss = report.server_rss_connected_bytes.unwrap_or(0) as f64 / (1 << 20) as f64;
        rows.push(("server memory".into(), format!("{rss:.0} MiB with the fleet connected, {:.1} KiB per terminal", bytes / 1024.0)));
    }
    if let Some(storm) = &report.storm {
        rows.push((
            "reconnect storm".into(),
            format!(
                "server back in {} ms after SIGKILL; {} terminals reconnected and caught up within {} ms of it",
                storm.server_restart_ms, storm.terminals_caught_up, storm.all_caught_up_ms
            ),
        ));
        let ms = |q: [u64; 4]| format!("p50 {} ms, p90 {} ms, p99 {} ms, last {} ms", q[0], q[1], q[2], q[3]);
        rows.push(("  reconnected after ready".into(), ms(storm.reconnected_ms)));
        rows.push(("  caught up after ready".into(), ms(storm.caught_up_ms)));
        rows.push(("  connection lost after the kill".into(), ms(storm.lost_ms)));
        rows.push(("  then reconnecting took".into(), ms(storm.reconnecting_ms)));
        let q = storm.failed_attempts;
        rows.push(("  failed attempts per terminal".into(), format!("p50 {}, p90 {}, p99 {}, most {}", q[0], q[1], q[2], q[3])));
        for (kind, count) in &storm.failures {
            rows.push((format!("  after the kill: {kind}"), count.to_string()));
        }
        let slowest: Vec<String> = storm.slowest.iter().map(|(at, what)| format!("{at} ms {what}")).collect();
        rows.push(("  slowest terminal".into(), slowest.join(" → ")));
    }
    for (kind, count) in &report.errors {
        rows.push((format!("errors: {kind}"), count.to_string()));
    }
    for line in &report.server_log_problems {
        rows.push(("server log".into(), line.clone()));
    }
    if let Some(faulted) = report.sql_votes_clock_faulted {
        rows.push(("votes stored as clock faults (SQL, misuse = 4)".into(), faulted.to_string()));
    }
    rows.push(("cross-check".into(), report.cross_check.clone()));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}

/// Writes the latency percentile plot as SVG.
///
/// # Errors
/// When the file cannot be written.
pub fn plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let points: Vec<(f64, f64)> =
        report.percentiles.iter().map(|&(p, us)| (1.0 / (1.0 - p / 100.0).max(1e-5), us as f64 / 1000.0)).collect();
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.1) * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "faccia ack latency — {} terminals, {} votes/batch, {:.0} votes/s ({})",
        report.terminals, report.batch_votes, report.votes_per_s, report.mode
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((1.0f64..1e5f64).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| {
            let percent = format!("{:.4}", 100.0 - 100.0 / x);
            format!("{}%", percent.trim_end_matches('0').trim_end_matches('.'))
        })
        .draw()?;
    chart.draw_series(LineSeries::new(points.iter().copied(), ShapeStyle::from(&BLUE).stroke_width(2)))?;
    root.present()?;
    Ok(())
}
