//! The engine: everything between a validated batch and durable Parquet.
//!
//! Owns the threads that the network never waits on directly — the log writer (`wal`), the
//! store thread that appends durable records to the Arrow buffer, and the flusher that writes
//! Parquet and commits checkpoints — plus start-up recovery and orderly shutdown.
//!
//! ```text
//! ingest tasks ──(crossbeam, bounded by the byte budget)──▶ log writer: write + fdatasync
//!     ▲  acknowledgement (oneshot) after the fsync            │ durable records, LSN order
//!     └───────────────────────────────────────────────────────┤
//!                                                             ▼
//!                                       store thread: Arrow buffer, sealed every 100 ms
//!                                                             │ a generation of rows
//!                                                             ▼
//!                         flusher: Parquet files → checkpoint (commit) → remove old segments
//! ```
//!
//! Recovery (in `Engine::open`): read the checkpoint (watermark W, sequence windows); remove
//! files of this node from flushes after W (written but never committed); replay every log
//! record after W into the buffer. Nothing acknowledged is lost (it is in the log or in a
//! committed file), nothing is doubled (a record is either ≤ W, in Parquet, or > W, replayed).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error_chain;
use crate::limits::StorageLimits;
use crate::metrics::Metrics;
use crate::storage::StoreError;
use crate::storage::buffer::{self, VoteBuffer};
use crate::storage::checkpoint::{Checkpoint, CheckpointError};
use crate::storage::dataset::{Dataset, FlushFiles};
use crate::storage::dedup::Sequences;
use crate::storage::faults::{Fault, Faults, crash_point};
use crate::storage::location::Location;
pub(crate) use crate::storage::membership::Placement;
use crate::storage::membership::{Membership, Timing};
use crate::storage::table::{self, Table, Tables};
use crate::storage::wal::{self, AppendRequest, DurableRecord, ReplayReport, WalError, WalRecord};
use crate::wire::BatchView;

/// How often buffered rows are sealed into an immutable Arrow batch that SQL can see.
const SEAL_INTERVAL: Duration = Duration::from_millis(100);
/// Attempts at the last flush during shutdown before leaving the rows to the log.
const SHUTDOWN_FLUSH_ATTEMPTS: u32 = 3;
/// Groups of durable records queued between the log writer and the store thread. When the
/// store falls behind (a flush that cannot finish), the log writer waits here and stops
/// acknowledging, instead of piling records up in memory.
const DURABLE_GROUPS_QUEUED_MAX: usize = 256;

/// What can go wrong opening the data directory (recovery) or committing a flush: the error of `engine`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The checkpoint could not be read, or is damaged.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The log could not be replayed, or its writer could not start.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Parquet files could not be written, listed or removed (or an injected Parquet fault).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory, its node id or the checkpoint could not be created or written.
    #[error("preparing the data directory {path}")]
    DataDir {
        /// The directory or file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// What start-up found and repaired, logged as one line (its `Debug` form).
#[derive(Debug, Clone, Default)]
#[allow(dead_code, reason = "every field is reported through Debug in the recovery log line")]
pub(crate) struct RecoveryReport {
    /// Every table holds the log records up to here.
    pub(crate) watermark: u64,
    pub(crate) uncommitted_files_removed: usize,
    /// Tables that were a flush behind the others and got its rows from the log.
    pub(crate) tables_caught_up: usize,
    pub(crate) replay: ReplayReport,
    /// Votes put back into the buffer from the log.
    pub(crate) votes_replayed: u64,
    /// Log records that held a batch already replayed (never expected; counted, not stored).
    pub(crate) duplicate_records_skipped: u64,
    /// Log records whose archive failed validation (never expected after the checksum).
    pub(crate) invalid_records_skipped: u64,
}

/// The rows not yet in the tables, as SQL sees them.
#[derive(Debug, Clone, Default)]
pub struct MemorySnapshot {
    /// Every log record with an LSN at or below this is in all three tables.
    pub(crate) watermark: u64,
    /// The version of each table (`Table::ALL` order) at the commit that moved the watermark
    /// here: a reader that finds a later commit of this node reads that version instead.
    pub(crate) versions: [u64; 3],
    /// Rows of records above the watermark, in generations: (last LSN, batches).
    pub generations: Vec<(u64, Vec<RecordBatch>)>,
}

impl MemorySnapshot {
    /// Every buffered record batch, oldest generation first.
    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.generations.iter().flat_map(|(_, b)| b.iter())
    }
}

#[derive(Debug, Default)]
struct Generation {
    id: u64,
    lsn_first: u64,
    lsn_last: u64,
    batches: Vec<RecordBatch>,
}

/// What the memory view publishes, changed under one lock.
#[derive(Debug, Default)]
struct Published {
    watermark: u64,
    versions: [u64; 3],
    generations: VecDeque<Generation>,
}

/// Buffered rows, published for readers: generations being flushed, then the one being filled.
#[derive(Debug, Default)]
struct MemoryView {
    inner: RwLock<Published>,
}

impl MemoryView {
    fn publish(&self, id: u64, lsn_first: u64, lsn_last: u64, batch: RecordBatch) {
        let mut inner = self.inner.write().expect("memory view lock");
        if inner.generations.back().is_none_or(|g| g.id != id) {
            inner.generations.push_back(Generation { id, lsn_first, ..Generation::default() });
        }
        let generation = inner.generations.back_mut().expect("just ensured");
        generation.lsn_last = lsn_last;
        generation.batches.push(batch);
    }

    fn generation(&self, id: u64) -> Option<(u64, u64, Vec<RecordBatch>)> {
        let inner = self.inner.read().expect("memory view lock");
        inner.generations.iter().find(|g| g.id == id).map(|g| (g.lsn_first, g.lsn_last, g.batches.clone()))
    }

    /// A flush committed to every table (at `versions`): the rows of every generation at or
    /// below `watermark` are now in the tables, in one step for readers.
    fn commit_through(&self, watermark: u64, versions: [u64; 3]) {
        let mut inner = self.inner.write().expect("memory view lock");
        inner.watermark = watermark;
        inner.versions = versions;
        inner.generations.retain(|g| g.lsn_last > watermark);
    }

    fn snapshot(&self) -> MemorySnapshot {
        let inner = self.inner.read().expect("memory view lock");
        MemorySnapshot {
            watermark: inner.watermark,
            versions: inner.versions,
            generations: inner.generations.iter().map(|g| (g.lsn_last, g.batches.clone())).collect(),
        }
    }
}

/// Configuration of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory: the log (`wal/`), the checkpoint, the node id and the Parquet dataset.
    pub(crate) data_dir: PathBuf,
    /// When to flush, how many rows to buffer, and the log's segment and group-commit sizes.
    pub(crate) storage: StorageLimits,
    /// Injected I/O errors (tests and the crash-test tool); all off by default.
    pub(crate) faults: Arc<Faults>,
}

impl EngineConfig {
    /// A configuration for `data_dir` with no fault switched on.
    pub fn new(data_dir: PathBuf, storage: StorageLimits) -> EngineConfig {
        EngineConfig { data_dir, storage, faults: Arc::default() }
    }
}

/// The running engine. Shared by the ingest tasks; `shutdown` stops it.
pub struct Engine {
    requests: RwLock<Option<Sender<AppendRequest>>>,
    /// Each terminal's stored-sequence window: decides whether an arriving batch is new, a duplicate or stale.
    pub sequences: Arc<Sequences>,
    /// The server's metrics, updated by the engine's threads and shared with the endpoints.
    pub metrics: Arc<Metrics>,
    /// Where this node's Parquet files go: the dataset in the data directory.
    pub(crate) dataset: Dataset,
    /// This node's side of the several-nodes protocol, when the tables are in an object store.
    membership: Option<Arc<Membership>>,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
    memory: Arc<MemoryView>,
    stopping: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    flush_requests: Sender<()>,
    /// Dropped at shutdown: stops the maintenance thread (compaction, retention, vacuum).
    maintenance_stop: Mutex<Option<Sender<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("node", &self.dataset.node).finish_non_exhaustive()
    }
}

/// The data directory's node id: names this node's Parquet files. Created on first start.
///
/// # Errors
/// When the file cannot be read or created.
pub(crate) fn node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = format!("{:08x}", rand::random::<u32>());
    crate::fsutil::write_atomic(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

impl Engine {
    /// Recovers the data directory and starts the engine's threads.
    ///
    /// # Errors
    /// When the data directory cannot be prepared, the checkpoint is damaged, or the log or the
    /// dataset cannot be read. A torn log tail is repaired, not an error.
    pub async fn open(config: EngineConfig, metrics: Arc<Metrics>) -> Result<Arc<Engine>, EngineError> {
        let data_dir = &config.data_dir;
        let dir_error = |source| EngineError::DataDir { path: data_dir.clone(), source };
        crate::fsutil::create_dir_durable(data_dir).map_err(dir_error)?;
        let node = node_id(data_dir).map_err(dir_error)?;
        let checkpoint = Checkpoint::read(data_dir)?;
        let sequences = Arc::new(Sequences::default());
        sequences.restore(checkpoint.windows.iter().copied());
        let location = Location::for_server(data_dir, config.storage.url.as_deref())?;
        let dataset = Dataset::new(location, &node)?;
        let wal_dir = data_dir.join("wal");
        let mut tables = take_over(&dataset, checkpoint.watermark).await?;
        let applied = tables.applied;
        let mut recovery = RecoveryReport {
            watermark: applied.into_iter().max().unwrap_or(0).max(checkpoint.watermark),
            uncommitted_files_removed: dataset.remove_uncommitted(applied).await?,
            ..RecoveryReport::default()
        };
        let mut records = replay(&wal_dir, checkpoint.watermark, recovery.watermark, &sequences, &mut recovery)?;
        // Several nodes: publish first (this node is seen alive before it re-takes any lease),
        // then settle the batches of terminals that may have moved (`membership`).
        let membership = match dataset.location.local_dir() {
            Some(_) => None,
            None => {
                let timing = Timing {
                    heartbeat: Duration::from_millis(config.storage.heartbeat_interval_ms),
                    ttl: Duration::from_millis(config.storage.node_ttl_ms),
                };
                Some(Membership::join(dataset.location.store(), &node, Arc::clone(&sequences), timing).await?)
            }
        };
        // A crash between a flush's commits leaves a table behind the others by that flush:
        // its rows are still in the log (no segment goes before every table holds it).
        recovery.tables_caught_up = catch_up(&wal_dir, &dataset, &mut tables, applied, recovery.watermark, membership.as_deref()).await?;
        // The LSNs the replay covers, including batches left to another node: the next flush's
        // watermark must pass them, or every reader of the log tail would count them again.
        let lsns = records.first().zip(records.last()).map(|(first, last)| (first.lsn, last.lsn));
        if let Some(membership) = &membership {
            let batches: Vec<(u32, u64)> = records.iter().map(|r| (r.terminal, r.seq)).collect();
            let keep = membership.settle_recovered(&batches).await?;
            let mut keep = keep.into_iter();
            records.retain(|_| keep.next().unwrap_or(true));
        }
        let replayed = lsns.map(|(first, last)| (first, last, buffer_of(&records, &mut recovery)));
        let next_lsn = recovery.replay.last_lsn.max(recovery.watermark) + 1;
        if recovery.replay.records_replayed > 0 || recovery.replay.torn_tail_bytes > 0 || recovery.tables_caught_up > 0 {
            tracing::info!(?recovery, "recovered from the log");
        }

        let memory = Arc::new(MemoryView::default());
        memory.commit_through(recovery.watermark, tables.versions());
        let stopping = Arc::new(AtomicBool::new(false));
        let (requests, request_rx) = crossbeam_channel::unbounded();
        let (durable_tx, durable_rx) = crossbeam_channel::bounded(DURABLE_GROUPS_QUEUED_MAX);
        let (flush_tx, flush_rx) = crossbeam_channel::unbounded();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let (flush_requests, flush_request_rx) = crossbeam_channel::unbounded();
        let writer = wal::WriterConfig {
            dir: wal_dir.clone(),
            next_lsn,
            segment_bytes: config.storage.wal_segment_bytes,
            group_bytes_max: config.storage.wal_group_bytes_max,
            faults: Arc::clone(&config.faults),
        };
        let wal_thread = wal::start_writer(writer, request_rx, durable_tx, Arc::clone(&sequences), Arc::clone(&metrics))?;
        let store = StoreThread {
            membership: membership.clone(),
            runtime: tokio::runtime::Handle::current(),
            limits: config.storage.clone(),
            memory: Arc::clone(&memory),
            metrics: Arc::clone(&metrics),
            flusher: flush_tx,
            done: done_rx,
            flush_requests: flush_request_rx,
            next_generation: 1,
            flushes_in_flight: 0,
        };
        let store_thread = spawn("faccia-store", move || store.run(durable_rx, replayed));
        let flusher = Flusher {
            data_dir: data_dir.clone(),
            wal_dir,
            dataset: dataset.clone(),
            tables,
            sequences: Arc::clone(&sequences),
            memory: Arc::clone(&memory),
            metrics: Arc::clone(&metrics),
            faults: Arc::clone(&config.faults),
            stopping: Arc::clone(&stopping),
            done: done_tx,
            membership: membership.clone(),
        };
        let flusher_thread = spawn("faccia-flush", move || flusher.run(flush_rx));
        let (maintenance_stop, maintenance_stopped) = crossbeam_channel::bounded::<()>(0);
        let maintenance = Maintenance { dataset: dataset.clone(), limits: config.storage.clone() };
        let maintenance_thread = spawn("faccia-compact", move || maintenance.run(maintenance_stopped));
        let heartbeat = Mutex::new(membership.as_ref().map(Membership::spawn_heartbeat));
        Ok(Arc::new(Engine {
            requests: RwLock::new(Some(requests)),
            sequences,
            metrics,
            dataset,
            membership,
            heartbeat,
            memory,
            stopping,
            threads: Mutex::new(vec![wal_thread, store_thread, flusher_thread, maintenance_thread]),
            flush_requests,
            maintenance_stop: Mutex::new(Some(maintenance_stop)),
        }))
    }

    /// Hands a batch to the log writer; its `durable` channel is completed after the fsync.
    ///
    /// # Errors
    /// Gives the request back when the engine is shutting down.
    pub fn submit_durable(&self, request: AppendRequest) -> Result<(), AppendRequest> {
        let requests = self.requests.read().expect("engine lock");
        match requests.as_ref() {
            Some(sender) => sender.send(request).map_err(|e| e.into_inner()),
            None => Err(request),
        }
    }

    /// Whether this node may serve `terminal` (several nodes on one table: `membership`); a
    /// node alone on its data directory serves every terminal.
    ///
    /// # Errors
    /// The object store's errors (the hello is answered "retry later").
    pub(crate) async fn admit(&self, terminal: u32) -> Result<Placement, StoreError> {
        match &self.membership {
            Some(membership) => membership.admit(terminal).await,
            None => Ok(Placement::Here),
        }
    }

    /// The rows not yet in committed Parquet.
    pub fn memory_snapshot(&self) -> MemorySnapshot {
        self.memory.snapshot()
    }

    /// Asks the store to flush its buffer now (used by tests and operators).
    pub fn request_flush(&self) {
        let _ = self.flush_requests.send(());
    }

    /// Stops accepting batches, makes every batch already accepted durable and answered,
    /// flushes the buffer to Parquet and waits for the threads. Idempotent.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Dropping the only sender lets the log writer drain its queue and stop, which stops
        // the store thread, which hands its last generation to the flusher and stops it.
        drop(self.requests.write().expect("engine lock").take());
        drop(self.maintenance_stop.lock().expect("engine lock").take());
        let threads: Vec<_> = self.threads.lock().expect("engine lock").drain(..).collect();
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("an engine thread panicked; the log keeps its records for the next start");
                }
            }
        });
        let _ = joined.await;
        if let Some(heartbeat) = self.heartbeat.lock().expect("engine lock").take() {
            heartbeat.abort();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new().name(name.into()).spawn(f).expect("spawning an engine thread")
}

/// Replays the log after the checkpoint's `watermark` into the sequence windows, and returns
/// the records above `applied` (what every table holds), each a valid batch once.
fn replay(
    wal_dir: &Path,
    watermark: u64,
    applied: u64,
    sequences: &Sequences,
    recovery: &mut RecoveryReport,
) -> Result<Vec<WalRecord>, EngineError> {
    let mut records = Vec::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    let mut invalid = 0;
    let report = wal::replay(wal_dir, watermark, |record| {
        if !seen.insert((record.terminal, record.seq)) {
            tracing::error!(terminal = record.terminal, seq = record.seq, lsn = record.lsn, "log holds a batch twice; skipped");
            duplicates += 1;
            return;
        }
        if let Err(rejection) = BatchView::access(&record.archive) {
            tracing::error!(lsn = record.lsn, %rejection, "log record with a valid checksum but an invalid batch; skipped");
            invalid += 1;
            return;
        }
        sequences.mark_stored(record.terminal, record.seq);
        if record.lsn > applied {
            records.push(record);
        }
    })?;
    recovery.duplicate_records_skipped = duplicates;
    recovery.invalid_records_skipped = invalid;
    recovery.replay = report;
    Ok(records)
}

/// The rows of the replayed `records`.
fn buffer_of(records: &[WalRecord], recovery: &mut RecoveryReport) -> RecordBatch {
    let mut buffer = VoteBuffer::default();
    for record in records {
        let view = BatchView::access(&record.archive).expect("the replay kept valid batches only");
        buffer.append(&view, record.municipality, record.terminal, &record.misuse, record.received_ms);
    }
    recovery.votes_replayed = buffer.len() as u64;
    buffer.finish()
}

/// Appends durable records to the Arrow buffer and decides when to flush.
struct StoreThread {
    /// Claims the batches another node may also hold (`membership`), on `runtime`.
    membership: Option<Arc<Membership>>,
    runtime: tokio::runtime::Handle,
    limits: StorageLimits,
    memory: Arc<MemoryView>,
    metrics: Arc<Metrics>,
    flusher: Sender<u64>,
    done: Receiver<()>,
    flush_requests: Receiver<()>,
    next_generation: u64,
    flushes_in_flight: usize,
}

/// The generation being filled.
#[derive(Default)]
struct Filling {
    id: u64,
    /// Whether the generation's memory holds a batch (perhaps without rows).
    published: bool,
    lsn_first: u64,
    lsn_last: u64,
    sealed_rows: usize,
    started: Option<Instant>,
}

impl StoreThread {
    fn run(mut self, records: Receiver<Vec<DurableRecord>>, replayed: Option<(u64, u64, RecordBatch)>) {
        let mut buffer = VoteBuffer::with_capacity(64 * 1024);
        let mut filling = self.new_generation();
        if let Some((first, last, batch)) = replayed {
            filling.lsn_first = first;
            filling.lsn_last = last;
            filling.sealed_rows = batch.num_rows();
            filling.started = Some(Instant::now());
            filling.published = true;
            self.memory.publish(filling.id, first, last, batch);
        }
        let mut last_seal = Instant::now();
        loop {
            match records.recv_timeout(SEAL_INTERVAL) {
                Ok(durable) => self.append(&mut buffer, &mut filling, durable),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.flushes_in_flight -= self.done.try_iter().count();
            let flush_asked = self.flush_requests.try_iter().count() > 0;
            if !buffer.is_empty() && (last_seal.elapsed() >= SEAL_INTERVAL || flush_asked) {
                self.seal(&mut buffer, &mut filling);
                last_seal = Instant::now();
            }
            let rows = filling.sealed_rows + buffer.len();
            self.metrics.buffer_rows.set(rows as i64);
            let due = rows >= self.limits.flush_rows
                || filling.started.is_some_and(|s| s.elapsed() >= Duration::from_millis(self.limits.flush_interval_ms))
                || flush_asked;
            // A generation whose records all went to another node still flushes: its commit
            // moves the watermark past them (else every reader of the log counts them).
            let holds_records = filling.lsn_first > 0;
            if due && holds_records && (self.flushes_in_flight == 0 || rows >= self.limits.buffer_rows_max) {
                if self.flushes_in_flight > 0 {
                    // Ingest is faster than Parquet: wait for the running flush, which stops the
                    // log writer's hand-off and, through it, acknowledgements (backpressure).
                    let _ = self.done.recv();
                    self.flushes_in_flight -= 1;
                }
                self.seal(&mut buffer, &mut filling);
                filling = self.hand_off(filling);
            }
        }
        self.seal(&mut buffer, &mut filling);
        if filling.lsn_first > 0 {
            self.hand_off(filling);
        }
    }

    fn new_generation(&mut self) -> Filling {
        let id = self.next_generation;
        self.next_generation += 1;
        Filling { id, ..Filling::default() }
    }

    fn append(&self, buffer: &mut VoteBuffer, filling: &mut Filling, durable: Vec<DurableRecord>) {
        let elsewhere = self.claimed_elsewhere(&durable);
        for record in durable {
            // The archive was validated at ingest and the record never left memory.
            let view = BatchView::access(&record.archive).expect("a durable record holds a validated batch");
            if !elsewhere.contains(&(record.terminal, view.seq())) {
                buffer.append(&view, record.municipality, record.terminal, &record.misuse, record.received_ms);
            }
            if filling.lsn_first == 0 {
                filling.lsn_first = record.lsn;
                filling.started = Some(Instant::now());
            }
            debug_assert!(record.lsn > filling.lsn_last, "records arrive in LSN order");
            filling.lsn_last = record.lsn;
        }
    }

    /// The batches of `durable` that another node holds too and claimed first: this node
    /// acknowledged them (rightly: they are stored) and leaves them to that node's commit.
    /// Waits out object store errors (back-pressure, as a failing flush does).
    fn claimed_elsewhere(&self, durable: &[DurableRecord]) -> HashSet<(u32, u64)> {
        let Some(membership) = &self.membership else { return HashSet::new() };
        let batches: Vec<(u32, u64)> = durable
            .iter()
            .map(|r| (r.terminal, BatchView::access(&r.archive).map_or(0, |v| v.seq())))
            .filter(|(t, seq)| membership.must_claim(*t, *seq))
            .collect();
        if batches.is_empty() {
            return HashSet::new();
        }
        let mut attempt = 0u64;
        loop {
            match self.runtime.block_on(membership.claim(&batches)) {
                Ok(mine) => return batches.into_iter().zip(mine).filter(|(_, mine)| !mine).map(|(batch, _)| batch).collect(),
                Err(error) => {
                    attempt += 1;
                    tracing::error!(error = %error_chain(&error), attempt, "claiming batches of a terminal taken over; retrying");
                    std::thread::sleep(Duration::from_millis(250 * attempt.min(40)));
                }
            }
        }
    }

    fn seal(&self, buffer: &mut VoteBuffer, filling: &mut Filling) {
        // An empty generation is published once, so that the flusher finds it.
        if buffer.is_empty() && (filling.published || filling.lsn_first == 0) {
            return;
        }
        filling.published = true;
        let batch = buffer.finish();
        filling.sealed_rows += batch.num_rows();
        self.memory.publish(filling.id, filling.lsn_first, filling.lsn_last, batch);
    }

    fn hand_off(&mut self, filling: Filling) -> Filling {
        if self.flusher.send(filling.id).is_ok() {
            self.flushes_in_flight += 1;
        }
        self.new_generation()
    }
}

/// Writes generations to Parquet and commits them.
struct Flusher {
    data_dir: PathBuf,
    wal_dir: PathBuf,
    dataset: Dataset,
    tables: Tables,
    sequences: Arc<Sequences>,
    memory: Arc<MemoryView>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
    stopping: Arc<AtomicBool>,
    done: Sender<()>,
    membership: Option<Arc<Membership>>,
}

impl Flusher {
    fn run(mut self, jobs: Receiver<u64>) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("flusher runtime");
        // Generations commit in order: once one is abandoned (only during shutdown), no later
        // one may commit, or its watermark would cover rows that are only in the log.
        let mut abandoned = false;
        for id in jobs {
            let Some((lsn_first, lsn_last, batches)) = self.memory.generation(id) else { continue };
            let mut attempt = 0u32;
            while !abandoned {
                attempt += 1;
                match runtime.block_on(self.flush(&batches, lsn_first, lsn_last)) {
                    Ok(()) => break,
                    Err(error) => {
                        self.metrics.parquet_flush_errors.inc();
                        tracing::error!(error = %error_chain(&error), attempt, lsn_first, lsn_last, "flush failed; rows stay in the log and the buffer");
                        if self.stopping.load(Ordering::SeqCst) && attempt >= SHUTDOWN_FLUSH_ATTEMPTS {
                            tracing::error!("giving up the last flush; the log replays these rows at the next start");
                            abandoned = true;
                        } else {
                            std::thread::sleep(Duration::from_millis(250 * u64::from(attempt.min(40))));
                        }
                    }
                }
            }
            let _ = self.done.send(());
        }
    }

    async fn flush(&mut self, batches: &[RecordBatch], lsn_first: u64, lsn_last: u64) -> Result<(), EngineError> {
        let started = Instant::now();
        let parquet_fault = |source| StoreError::Sync { path: "injected".into(), source };
        self.faults.check(Fault::ParquetWrite).map_err(parquet_fault)?;
        if let Some(membership) = &self.membership {
            membership.ready_to_commit().await?;
        }
        let (files, versions) = flush_to_tables(&self.dataset, &mut self.tables, batches, lsn_first, lsn_last).await?;
        // The sequence windows covering the committed records; after this, log segments below
        // the watermark may go.
        let checkpoint = Checkpoint { watermark: lsn_last, windows: self.sequences.snapshot() };
        let checkpoint_error = |source| EngineError::DataDir { path: self.data_dir.join("checkpoint"), source };
        self.faults.check(Fault::CheckpointWrite).map_err(checkpoint_error)?;
        checkpoint.write(&self.data_dir).map_err(checkpoint_error)?;
        crash_point("flush.after_checkpoint");
        let rows = buffer::rows(batches);
        self.memory.commit_through(lsn_last, versions);
        let bytes = files.bytes();
        self.metrics.parquet_flushes.inc();
        self.metrics.parquet_flush_rows.inc_by(rows as u64);
        self.metrics.parquet_flush_bytes.inc_by(bytes);
        self.metrics.parquet_flush_seconds.observe(started.elapsed().as_secs_f64());
        tracing::info!(
            rows,
            days = files.days(),
            bytes,
            lsn_last,
            ?versions,
            ms = started.elapsed().as_millis() as u64,
            "flushed to the tables"
        );
        if let Err(error) = wal::remove_flushed_segments(&self.wal_dir, lsn_last) {
            tracing::warn!(error = %error_chain(&error), "removing flushed log segments; retried after the next flush");
        }
        Ok(())
    }
}

/// The background maintenance of the tables: every `compaction_interval_ms`, compacts the
/// days that need it, applies `retention_days`, vacuums and cleans up expired log entries. On its own thread and its own
/// handles of the tables, so that it never holds up a flush or an acknowledgement; its commits
/// and the flusher's appends never conflict (compaction's removes do not change data).
struct Maintenance {
    dataset: Dataset,
    limits: StorageLimits,
}

impl Maintenance {
    fn run(self, stop: Receiver<()>) {
        if self.limits.compaction_interval_ms == 0 {
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("maintenance runtime");
        let interval = Duration::from_millis(self.limits.compaction_interval_ms);
        let mut tables = None;
        // `recv_timeout` returns `Disconnected` at shutdown, `Timeout` when a round is due.
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
            if let Err(error) = runtime.block_on(self.round(&mut tables)) {
                tracing::error!(error = %error_chain(&error), "table maintenance failed; retried at the next round");
                tables = None;
            }
        }
    }

    async fn round(&self, tables: &mut Option<Tables>) -> Result<(), StoreError> {
        if tables.is_none() {
            let mut opened = Vec::new();
            for table in Table::ALL {
                opened.push(table::open(&self.dataset.location, table).await?);
            }
            *tables = Some(Tables::new(opened.try_into().expect("three tables"), &self.dataset.node).await?);
        }
        let tables = tables.as_mut().expect("just opened");
        let today = buffer::partition_date(crate::clock::now_ms());
        let scope = crate::storage::compaction::CompactScope::Due { today, today_files_max: self.limits.today_files_max };
        let report = crate::storage::compaction::compact(&self.dataset, tables, scope, |_, _| {}).await?;
        if report.days > 0 {
            tracing::info!(?report, "compaction round");
        }
        if self.limits.retention_days > 0 {
            let cutoff = today - chrono::Days::new(u64::from(self.limits.retention_days));
            crate::storage::compaction::apply_retention(tables, cutoff, false).await?;
        }
        crate::storage::compaction::vacuum(tables, crate::storage::compaction::Grace::Period).await?;
        for table in &tables.tables {
            table::cleanup_log(table).await?;
        }
        Ok(())
    }
}

/// Writes the files of one flush — log records `lsn_first..=lsn_last` of `dataset`'s node —
/// and commits them to every table, votes first (`table::commit_flush`: once, whatever the
/// retries). Returns the files and each table's version after its commit.
///
/// # Errors
/// Write or commit errors; what was written and not committed is cleaned up at the next start.
pub(crate) async fn flush_to_tables(
    dataset: &Dataset,
    tables: &mut Tables,
    batches: &[RecordBatch],
    lsn_first: u64,
    lsn_last: u64,
) -> Result<(FlushFiles, [u64; 3]), StoreError> {
    let files = dataset.write_flush(batches, lsn_first, lsn_last, &Table::ALL).await?;
    crash_point("flush.after_parquet");
    let mut versions = tables.versions();
    for table in Table::ALL {
        let adds = files.adds[table.index()].clone();
        versions[table.index()] = table::commit_flush(tables, table, lsn_last, adds).await?;
        if table == Table::Votes {
            crash_point("flush.after_votes_commit");
        }
    }
    crash_point("flush.after_commits");
    Ok((files, versions))
}

/// Opens the three tables of the data directory. A directory written before the table format
/// (files, no `_delta_log/`) is taken over: the uncommitted files above the checkpoint's
/// `watermark` are removed, missing rollups written, and every remaining file adopted as it is
/// into its table's first commit, with each node's watermark as its transaction version.
/// Idempotent: a start interrupted half-way takes over the tables still missing.
///
/// # Errors
/// Listing, footer, rollup or log errors.
pub(crate) async fn take_over(dataset: &Dataset, watermark: u64) -> Result<Tables, StoreError> {
    let mut missing = Vec::new();
    for table in Table::ALL {
        if !table::exists(&dataset.location, table).await? {
            missing.push(table);
        }
    }
    if !missing.is_empty() {
        dataset.remove_uncommitted([watermark; 3]).await?;
        let backfilled = dataset.backfill_rollups().await?;
        if backfilled > 0 {
            tracing::info!(files = backfilled, "wrote the rollups missing beside vote files");
        }
    }
    let mut tables = Vec::with_capacity(3);
    for table in Table::ALL {
        let (adopt, txns) = if missing.contains(&table) {
            let adopt = dataset.adoptable(table).await?;
            // Each node's watermark: this node's checkpoint; another node's, its last file.
            let mut txns = std::collections::BTreeMap::from([(dataset.node.clone(), watermark)]);
            for add in &adopt {
                let name = add.path.rsplit('/').next().unwrap_or(&add.path);
                if let Some((node, _, last)) = crate::storage::dataset::PartFile::parse_name(name)
                    && node != dataset.node
                {
                    let entry = txns.entry(node).or_insert(0);
                    *entry = (*entry).max(last);
                }
            }
            (adopt, txns.into_iter().collect())
        } else {
            (Vec::new(), Vec::new())
        };
        tables.push(table::open_or_create(&dataset.location, table, adopt, &txns).await?);
    }
    Tables::new(tables.try_into().expect("three tables"), &dataset.node).await
}

/// Brings every table up to `watermark` (the highest a table holds): the rows of the log
/// records a table lacks are written and committed to it alone. Returns how many tables were behind.
async fn catch_up(
    wal_dir: &Path,
    dataset: &Dataset,
    tables: &mut Tables,
    applied: [u64; 3],
    watermark: u64,
    membership: Option<&Membership>,
) -> Result<usize, EngineError> {
    let mut caught_up = 0;
    for table in Table::ALL {
        let from = applied[table.index()];
        if from >= watermark {
            continue;
        }
        let mut records = Vec::new();
        wal::replay(wal_dir, from, |record| {
            if record.lsn <= watermark && BatchView::access(&record.archive).is_ok() {
                records.push(record);
            }
        })?;
        // The flush this completes left out the batches another node claimed; so does this.
        if let Some(membership) = membership {
            let batches: Vec<(u32, u64)> = records.iter().map(|r| (r.terminal, r.seq)).collect();
            let elsewhere = membership.claimed_elsewhere(&batches).await?;
            records.retain(|r| !elsewhere.contains(&(r.terminal, r.seq)));
        }
        let mut buffer = VoteBuffer::default();
        for record in &records {
            let view = BatchView::access(&record.archive).expect("checked above");
            buffer.append(&view, record.municipality, record.terminal, &record.misuse, record.received_ms);
        }
        let files = dataset.write_flush(&[buffer.finish()], from + 1, watermark, &[table]).await?;
        table::commit_flush(tables, table, watermark, files.adds[table.index()].clone()).await?;
        tracing::warn!(
            table = table.dir(),
            from,
            watermark,
            "the table was a flush behind the others (a crash between commits); caught up from the log"
        );
        caught_up += 1;
    }
    Ok(caught_up)
}
