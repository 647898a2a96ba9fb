//! The crash test: a live `faccia serve` process killed with SIGKILL at random moments while
//! simulated terminals send, restarted each time on the same data directory; at the end, every
//! vote the terminals were told was stored is looked for in the Parquet dataset with SQL.
//!
//! Each terminal stamps its votes with consecutive milliseconds (one per vote), so `(terminal,
//! ts)` names a vote exactly and the check compares sets: lost (acknowledged, not found),
//! duplicated (found more than once), unexpected (found, never acknowledged). The server runs
//! with small flush and compaction thresholds so that kills land in flushes, commits,
//! checkpoints, log rotations and compactions too; and every second round the server is
//! started with the crash point `compact.after_file`, so that it stops itself inside a
//! compaction (the merged file written, its commit not).
//!
//! With `nodes` > 1 (the tables in an object store, `storage_url`), several nodes serve one
//! table and the terminals hold every node's address: each round kills one node in turn and
//! the terminals move to the others (`storage::membership`); the crash rounds alternate
//! between the compaction crash point and `wal.after_fsync@N`, a node stopping itself right
//! after a log fsync it never acknowledged — the batches the terminals then send again to
//! another node, which both nodes hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use arrow::array::AsArray;
use arrow::datatypes::{TimestampMillisecondType, UInt32Type};
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::model::{Channel, Face, IstatCode, Reason, TerminalId};
use crate::registry::{self, Catalog};
use crate::terminal::client::{Event, Terminal, TerminalVote};
pub use crate::tools::process::{ServerProcess, free_udp_port};

/// Votes a terminal may stamp: its clock starts an hour back and advances one millisecond per
/// vote, so it must stay below the server's future-skew limit.
const VOTES_PER_TERMINAL_MAX: u64 = 3_600_000;
/// How long the terminals get to deliver their backlog after the last round.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a round started with the compaction crash point waits for the server to reach it
/// before killing it as any other round.
const COMPACTION_CRASH_WAIT: Duration = Duration::from_secs(30);
/// The crash point inside a compaction: the merged file is written, the commit is not.
const COMPACTION_CRASH_POINT: &str = "compact.after_file";
/// How long a killed node stays down when there are several: past the terminals' reply
/// timeout (2 s) and the TTL of the busy configuration (1 s), so that its terminals move.
const NODE_DOWN: Duration = Duration::from_millis(4_000);
/// The crash point after a log fsync, before the acknowledgements (several nodes).
const LOG_CRASH_POINT: &str = "wal.after_fsync";

/// What the crash test does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `faccia` executable to run as the server.
    pub server_exe: PathBuf,
    /// Data directory the server runs on in every round; terminals are registered and the configuration written there.
    pub data_dir: PathBuf,
    /// How many times the server is killed with SIGKILL and restarted.
    pub rounds: u32,
    /// Simulated terminals sending votes.
    pub terminals: usize,
    /// Each round, the server is killed after a random time in this range (ms).
    pub run_ms: (u64, u64),
    /// Largest batch a terminal sends, in votes (each batch holds 1 to this many).
    pub batch_votes_max: usize,
    /// In-flight batch limit of each terminal's client.
    pub in_flight_max: usize,
    /// Seed of the terminals' municipalities, the kill times, the batch sizes and the simulated votes.
    pub seed: u64,
    /// Nodes serving one table (1: the classic test on `data_dir`; more: `data_dir/node-N`
    /// each, which needs `storage_url`).
    pub nodes: usize,
    /// `[storage] url` of every node (`s3://bucket/prefix`, credentials from the environment).
    pub storage_url: Option<String>,
}

/// What the crash test found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Kill-and-restart rounds run.
    pub(crate) rounds: u32,
    /// Votes the terminals were told were stored.
    pub votes_acknowledged: u64,
    /// Batches acknowledged, duplicates included.
    pub(crate) batches_acknowledged: u64,
    /// Acknowledgements that said "duplicate": a resent batch whose first copy was stored.
    pub(crate) batches_duplicate: u64,
    /// Votes SQL found in the dataset at the end.
    pub(crate) votes_found: u64,
    /// Acknowledged votes not found in the dataset.
    pub(crate) lost: u64,
    /// Extra copies of acknowledged votes found in the dataset (a vote stored twice counts one).
    pub(crate) duplicated: u64,
    /// Votes found in the dataset that were never acknowledged.
    pub(crate) unexpected: u64,
    /// Compactions committed (`OPTIMIZE` in `table_history`, all tables).
    pub compactions: u64,
    /// Rounds in which the server stopped itself inside a compaction (the crash point).
    pub compaction_crashes: u32,
    /// Rounds in which a node stopped itself right after a log fsync it never acknowledged
    /// (several nodes only).
    pub log_crashes: u32,
}

impl Report {
    /// True when no vote was lost, doubled or unexpected and SQL found exactly the votes acknowledged.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unexpected == 0 && self.votes_acknowledged == self.votes_found
    }
}

/// Writes a configuration that flushes, checkpoints, rotates the log and compacts often.
///
/// # Errors
/// When the file cannot be written.
pub fn write_busy_config(path: &Path, listen: SocketAddr, storage_url: Option<&str>) -> anyhow::Result<()> {
    let mut busy = vec![
        ("storage.flush_rows", 20_000.into()),
        ("storage.flush_interval_ms", 300.into()),
        ("storage.wal_segment_bytes", 262_144.into()),
        ("storage.compaction_interval_ms", 200.into()),
        ("storage.today_files_max", 4.into()),
        // The simulated terminals send far faster than people press buttons.
        ("limits.votes_per_terminal_per_minute_max", i64::from(u32::MAX).into()),
    ];
    if let Some(url) = storage_url {
        busy.extend([("storage.url", url.into()), ("storage.heartbeat_interval_ms", 200.into()), ("storage.node_ttl_ms", 1_000.into())]);
    }
    std::fs::write(path, crate::tools::process::child_config(listen, "", &busy)?)?;
    Ok(())
}

/// The votes each terminal was told were stored, as ranges of its vote counter.
type Acknowledged = Arc<Mutex<HashMap<TerminalId, Vec<(u64, u64)>>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Sending,
    Draining,
}

/// Runs the crash test.
///
/// # Errors
/// When a server cannot be started or SQL cannot read the dataset. Lost or doubled votes are
/// not errors here: they are in the report.
pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let nodes = plan.nodes.max(1);
    anyhow::ensure!(nodes == 1 || plan.storage_url.is_some(), "several nodes need the tables in an object store (a storage URL)");
    std::fs::create_dir_all(&plan.data_dir)?;
    let dirs: Vec<PathBuf> =
        if nodes == 1 { vec![plan.data_dir.clone()] } else { (1..=nodes).map(|n| plan.data_dir.join(format!("node-{n}"))).collect() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed);
    let eligible: Vec<IstatCode> = Catalog::builtin().eligible().map(|m| m.code).take(500).collect();
    let slots: Vec<IstatCode> = (0..plan.terminals).map(|_| eligible[rng.random_range(0..eligible.len())]).collect();
    std::fs::create_dir_all(&dirs[0])?;
    let credentials = registry::add_terminals_bulk(&dirs[0], &slots, "crashtest")?;
    let mut addrs = Vec::with_capacity(nodes);
    let mut configs = Vec::with_capacity(nodes);
    for dir in &dirs {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
        std::fs::create_dir_all(dir)?;
        let config = dir.join("crashtest.toml");
        write_busy_config(&config, addr, plan.storage_url.as_deref())?;
        addrs.push(addr);
        configs.push(config);
    }
    let base_ms = crate::clock::now_ms() - 3_600_000;
    // Node i is first killed in round i + 1, and then every `nodes` rounds.
    let crash_env = |round: u32, rng: &mut rand::rngs::StdRng| crash_point(round, nodes, rng);
    let mut servers = Vec::with_capacity(nodes);
    for (i, dir) in dirs.iter().enumerate() {
        if i > 0 {
            same_directory_and_certificate(&dirs[0], dir)?;
        }
        let env = crash_env(i as u32 + 1, &mut rng);
        servers.push(Some(start(plan, dir, &configs[i], addrs[i], env.as_ref())?));
    }
    let mut target = servers[0].as_ref().expect("started").target()?.with_other_addresses(addrs[1..].iter().copied());
    target.set_idle_timeout(Duration::from_secs(5));
    let acknowledged: Acknowledged = Arc::default();
    let (phase, phase_rx) = watch::channel(Phase::Sending);
    let endpoint = crate::terminal::client::client_endpoint(addrs[0])?;
    let mut terminals = tokio::task::JoinSet::new();
    let counters = Arc::new(Mutex::new(Report::default()));
    for (i, credential) in credentials.into_iter().enumerate() {
        let mut terminal = Terminal::new(credential, endpoint.clone(), target.clone(), plan.in_flight_max);
        terminal.set_ack_timeout(Duration::from_secs(2));
        let seed = plan.seed.wrapping_add(i as u64);
        let driver = TerminalDriver {
            base_ms,
            batch_votes_max: plan.batch_votes_max,
            acknowledged: Arc::clone(&acknowledged),
            counters: Arc::clone(&counters),
        };
        terminals.spawn(driver.run(terminal, phase_rx.clone(), seed));
    }
    let (mut compaction_crashes, mut log_crashes) = (0, 0);
    for round in 1..=plan.rounds {
        let victim = (round as usize - 1) % nodes;
        let server = servers[victim].as_mut().expect("every node runs between rounds");
        if crashes_in_compaction(round) {
            if stopped_by_itself(server, COMPACTION_CRASH_WAIT).await? {
                if nodes > 1 && round.is_multiple_of(4) {
                    log_crashes += 1;
                    tracing::info!(round, node = victim + 1, "node stopped itself after a log fsync it never acknowledged");
                } else {
                    compaction_crashes += 1;
                    tracing::info!(round, node = victim + 1, "server stopped itself inside a compaction");
                }
            }
        } else {
            let run_ms = rng.random_range(plan.run_ms.0..=plan.run_ms.1.max(plan.run_ms.0));
            tokio::time::sleep(Duration::from_millis(run_ms)).await;
            tracing::info!(round, run_ms, node = victim + 1, "server killed");
        }
        // The server after the last round must stop cleanly: it never gets a crash point.
        let next_turn = round + nodes as u32;
        let env = if next_turn <= plan.rounds { crash_env(next_turn, &mut rng) } else { None };
        servers[victim].take().expect("every node runs between rounds").kill();
        if nodes > 1 {
            // Down long enough for the others to take its terminals over.
            tokio::time::sleep(NODE_DOWN).await;
        }
        servers[victim] = Some(start(plan, &dirs[victim], &configs[victim], addrs[victim], env.as_ref())?);
    }
    phase.send_replace(Phase::Draining);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while terminals.join_next().await.is_some() {} }).await;
    let mut statuses = Vec::new();
    for server in servers.into_iter().flatten() {
        statuses.push(server.terminate()?);
    }
    endpoint.close(0u32.into(), b"done");
    if drained.is_err() {
        bail!("the terminals did not deliver their backlog within {DRAIN_TIMEOUT:?}");
    }
    for status in statuses {
        anyhow::ensure!(status.success(), "a server's clean shutdown failed: {status}");
    }
    let mut report = counters.lock().expect("counters").clone();
    report.rounds = plan.rounds;
    report.compaction_crashes = compaction_crashes;
    report.log_crashes = log_crashes;
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("acknowledged"));
    compare(&dirs[0], base_ms, &acknowledged, &mut report).await?;
    Ok(report)
}

/// The crash point a node is started with for its turn in round `round`: the compaction's
/// every second round; with several nodes, every fourth round the log's, after a random
/// number of fsyncs.
fn crash_point(round: u32, nodes: usize, rng: &mut rand::rngs::StdRng) -> Option<(&'static str, String)> {
    if !crashes_in_compaction(round) {
        return None;
    }
    if nodes > 1 && round.is_multiple_of(4) {
        return Some(("FACCIA_CRASH_POINT", format!("{LOG_CRASH_POINT}@{}", rng.random_range(20..200))));
    }
    Some(("FACCIA_CRASH_POINT", COMPACTION_CRASH_POINT.to_string()))
}

fn start(plan: &Plan, dir: &Path, config: &Path, addr: SocketAddr, env: Option<&(&str, String)>) -> anyhow::Result<ServerProcess> {
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProcess::start(&plan.server_exe, dir, config, addr, &envs)
}

/// Makes `second` a node of the same table as `first`, as an operator deploys one: the same
/// terminal directory and the same certificate and TLS keys (`first`'s development ones,
/// made at its first start).
///
/// # Errors
/// When a file cannot be copied.
pub fn same_directory_and_certificate(first: &Path, second: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(second.join("tls"))?;
    std::fs::copy(first.join("terminals.json"), second.join("terminals.json"))?;
    for entry in std::fs::read_dir(first.join("tls"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), second.join("tls").join(entry.file_name()))?;
    }
    Ok(())
}

/// Whether round `round` (from 1) runs a server started with the compaction crash point:
/// every second one.
fn crashes_in_compaction(round: u32) -> bool {
    round.is_multiple_of(2)
}

/// Waits up to `wait` for the server to exit on its own (a crash point); true if it did.
///
/// # Errors
/// When the process's status cannot be read.
async fn stopped_by_itself(server: &mut ServerProcess, wait: Duration) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if server.child.try_wait()?.is_some() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(false)
}

/// One simulated terminal of the crash test.
struct TerminalDriver {
    base_ms: i64,
    batch_votes_max: usize,
    acknowledged: Acknowledged,
    counters: Arc<Mutex<Report>>,
}

impl TerminalDriver {
    async fn run(self, mut terminal: Terminal, mut phase: watch::Receiver<Phase>, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut counter = 0u64;
        let mut pending: HashMap<crate::terminal::client::BatchId, (u64, u64)> = HashMap::new();
        let in_flight = 4;
        loop {
            let sending = *phase.borrow() == Phase::Sending;
            if sending && terminal.unacknowledged() < in_flight && counter < VOTES_PER_TERMINAL_MAX {
                let count = rng.random_range(1..=self.batch_votes_max) as u64;
                let votes: Vec<TerminalVote> = (counter..counter + count).map(|c| vote(self.base_ms + c as i64, &mut rng)).collect();
                let Ok(batch) = terminal.enqueue(&votes) else { return };
                pending.insert(batch, (counter, count));
                counter += count;
            }
            if !sending && terminal.unacknowledged() == 0 {
                terminal.close();
                return;
            }
            let event = tokio::select! {
                event = terminal.next_event() => event,
                _ = phase.changed() => continue,
            };
            match event {
                Event::Acknowledged { batch, duplicate, .. } => {
                    let range = pending.remove(&batch).expect("an acknowledged batch was enqueued");
                    self.acknowledged.lock().expect("acknowledged").entry(terminal.credential.id).or_default().push(range);
                    let mut counters = self.counters.lock().expect("counters");
                    counters.votes_acknowledged += range.1;
                    counters.batches_acknowledged += 1;
                    counters.batches_duplicate += u64::from(duplicate);
                }
                Event::Rejected { batch, seq, rejection, .. } => {
                    tracing::error!(seq, %rejection, "crash test batch rejected");
                    pending.remove(&batch);
                }
                Event::Fatal(error) => {
                    tracing::error!(error = %crate::error_chain(&error), "crash test terminal refused");
                    return;
                }
                Event::Idle => tokio::time::sleep(Duration::from_millis(5)).await,
                Event::Connected { .. } | Event::Disconnected { .. } | Event::RetryLater { .. } => {}
            }
        }
    }
}

fn vote(at_ms: i64, rng: &mut rand::rngs::StdRng) -> TerminalVote {
    let face = Face::ALL[rng.random_range(0..3)];
    TerminalVote {
        at_ms,
        service: rng.random_range(1..=15),
        face,
        channel: Channel::ALL[rng.random_range(0..3)],
        reason: (face == Face::Negative).then(|| Reason::ALL[rng.random_range(0..4)]),
    }
}

/// Reads every `(terminal, ts)` back with SQL and compares it with what was acknowledged.
async fn compare(
    data_dir: &Path,
    base_ms: i64,
    acknowledged: &HashMap<TerminalId, Vec<(u64, u64)>>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let ctx = crate::query::context(data_dir).await?;
    let batches = crate::query::run(&ctx, "SELECT terminal, ts FROM votes").await?;
    let mut found: HashMap<TerminalId, Vec<u64>> = HashMap::new();
    for batch in &batches {
        let terminals = batch.column(0).as_primitive::<UInt32Type>();
        let ts = batch.column(1).as_primitive::<TimestampMillisecondType>();
        for row in 0..batch.num_rows() {
            found.entry(terminals.value(row)).or_default().push((ts.value(row) - base_ms) as u64);
        }
    }
    report.votes_found = found.values().map(|v| v.len() as u64).sum();
    let history = crate::query::run(&ctx, "SELECT count(*) FROM table_history WHERE operation = 'OPTIMIZE'").await?;
    report.compactions = history.first().map_or(0, |b| b.column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0) as u64);
    let terminals: std::collections::BTreeSet<TerminalId> = found.keys().chain(acknowledged.keys()).copied().collect();
    for terminal in terminals {
        let mut seen = found.remove(&terminal).unwrap_or_default();
        seen.sort_unstable();
        let mut expected: Vec<u64> =
            acknowledged.get(&terminal).into_iter().flatten().flat_map(|&(start, count)| start..start + count).collect();
        expected.sort_unstable();
        let (lost, duplicated, unexpected) = diff_sorted(&expected, &seen);
        report.lost += lost;
        report.duplicated += duplicated;
        report.unexpected += unexpected;
    }
    Ok(())
}

/// Compares an expected sorted set with a found sorted multiset: (missing, extra copies of
/// expected values, values not expected at all).
fn diff_sorted(expected: &[u64], found: &[u64]) -> (u64, u64, u64) {
    let (mut lost, mut duplicated, mut unexpected) = (0, 0, 0);
    let (mut e, mut f) = (0, 0);
    while e < expected.len() || f < found.len() {
        match (expected.get(e), found.get(f)) {
            (Some(x), Some(y)) if x == y => {
                let mut copies = 0;
                while found.get(f) == Some(x) {
                    copies += 1;
                    f += 1;
                }
                duplicated += copies - 1;
                e += 1;
            }
            (Some(x), Some(y)) if x < y => {
                lost += 1;
                e += 1;
            }
            (Some(_), None) => {
                lost += 1;
                e += 1;
            }
            (_, Some(_)) => {
                unexpected += 1;
                f += 1;
            }
            (None, None) => unreachable!("the loop condition"),
        }
    }
    (lost, duplicated, unexpected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_counts_lost_duplicated_and_unexpected() {
        assert_eq!(diff_sorted(&[1, 2, 3], &[1, 2, 3]), (0, 0, 0));
        assert_eq!(diff_sorted(&[1, 2, 3], &[1, 3]), (1, 0, 0));
        assert_eq!(diff_sorted(&[1, 2, 3], &[1, 2, 2, 2, 3]), (0, 2, 0));
        assert_eq!(diff_sorted(&[1, 3], &[0, 1, 2, 3, 9]), (0, 0, 3));
        assert_eq!(diff_sorted(&[], &[5]), (0, 0, 1));
        assert_eq!(diff_sorted(&[5], &[]), (1, 0, 0));
    }
}
