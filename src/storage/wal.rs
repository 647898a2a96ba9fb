//! The write-ahead log: where a batch becomes durable before it is acknowledged.
//!
//! The log is a directory of segments `{first_lsn:020}.wal`. A segment starts with a 24-byte
//! header (magic `FCWAL\0`, format version, first LSN, CRC32C of the header) followed by
//! records:
//!
//! ```text
//! u32 body length   u32 CRC32C(body)   body: u64 lsn, u32 terminal, u32 municipality,
//!                                            u64 seq, i64 received_ms, u32 archive length,
//!                                            u32 flag count, archive, one misuse flag per vote
//!                                            (flag count 0: no vote flagged)
//! ```
//!
//! One writer thread owns the active segment. It takes every append request waiting in its
//! channel, writes them with one `write`, and makes them durable with one `fdatasync` (group
//! commit); only then does it mark the batches stored (`dedup`) and complete their
//! acknowledgements, and hand the records to the store. A failed write or fsync truncates the
//! segment back to its last durable length, answers every request of the group "retry later",
//! and the log stays usable (disk full resolves itself when space returns).
//!
//! Recovery reads every segment: a torn tail (crash mid-write) is cut off and reported; a
//! corrupt record in the middle is skipped (the reader resynchronises on the next valid record)
//! and reported loudly, with a copy of the damaged segment kept in `wal/corrupt/`.
//!
//! Architecture invariant: nothing here knows QUIC, Arrow or Parquet; a record's payload is an
//! opaque archive the caller validated.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tokio::sync::oneshot;

use crate::fsutil;
use crate::metrics::Metrics;
use crate::model::{IstatCode, TerminalId};
use crate::storage::dedup::{PendingGuard, Sequences};
use crate::storage::faults::{Fault, Faults};
use crate::wire::ArchiveBuf;

const SEGMENT_MAGIC: [u8; 6] = *b"FCWAL\0";
const SEGMENT_VERSION: u16 = 1;
const SEGMENT_HEADER_BYTES: usize = 24;
const RECORD_HEADER_BYTES: usize = 8;
/// Fixed part of a record body before the archive.
const RECORD_FIXED_BYTES: usize = 40;
/// Longest record body the reader accepts; anything longer is corruption.
const RECORD_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How far ahead of the expected LSN a resynchronising reader accepts a record.
const RESYNC_LSN_AHEAD_MAX: u64 = 1 << 20;

/// What can go wrong reading or writing the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A log segment or the log directory could not be read, written, synced or removed, or the writer thread could not start.
    #[error("log I/O on {path}")]
    Io {
        /// The segment or directory (`<thread>` when the writer thread could not start).
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A segment's header is too short, has the wrong magic or format version, fails its checksum, or names
    /// a first LSN other than its file name's.
    #[error("{path} is not a faccia log segment ({reason})")]
    BadSegment {
        /// The segment.
        path: PathBuf,
        /// What is wrong with the header.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// A record read back from the log.
#[derive(Debug)]
pub(crate) struct WalRecord {
    pub(crate) lsn: u64,
    pub(crate) terminal: TerminalId,
    pub(crate) municipality: IstatCode,
    pub(crate) seq: u64,
    /// When the server took the batch (its clock, ms since the Unix epoch): the time a clock fault is stored at.
    pub(crate) received_ms: i64,
    pub(crate) archive: ArchiveBuf,
    /// Misuse flag of each vote (0: counted; see `storage::buffer::col::MISUSE`); empty when none is flagged.
    pub(crate) misuse: Vec<u8>,
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReplayReport {
    pub(crate) segments: usize,
    pub(crate) records: u64,
    /// Records with an LSN above the caller's watermark, handed to the callback.
    pub(crate) records_replayed: u64,
    pub(crate) last_lsn: u64,
    /// Bytes cut off the end of the last segment (a write torn by a crash).
    pub(crate) torn_tail_bytes: u64,
    /// Byte ranges skipped inside the log because they failed their checksum.
    pub(crate) corrupt_ranges: u64,
    pub(crate) corrupt_bytes: u64,
    /// LSNs missing between the first and the last record (lost to corruption).
    pub(crate) lsn_gaps: u64,
}

fn encode_record(buf: &mut Vec<u8>, record: &AppendRequest, lsn: u64) {
    let body_len = RECORD_FIXED_BYTES + record.archive.len() + record.misuse.len();
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(&record.terminal.to_le_bytes());
    buf.extend_from_slice(&record.municipality.0.to_le_bytes());
    buf.extend_from_slice(&record.seq.to_le_bytes());
    buf.extend_from_slice(&record.received_ms.to_le_bytes());
    buf.extend_from_slice(&(record.archive.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(record.misuse.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record.archive);
    buf.extend_from_slice(&record.misuse);
    let crc = crc32c::crc32c(&buf[start + RECORD_HEADER_BYTES..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Parses the record at the start of `bytes`. `None` if it is incomplete or fails its checksum.
fn decode_record(bytes: &[u8]) -> Option<(WalRecord, usize)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let body_len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    if !(RECORD_FIXED_BYTES..=RECORD_BODY_BYTES_MAX).contains(&body_len) {
        return None;
    }
    let body = bytes.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + body_len)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(header[4..8].try_into().ok()?) {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes"));
    let archive_len = u32_at(32) as usize;
    let misuse_len = u32_at(36) as usize;
    if RECORD_FIXED_BYTES + archive_len + misuse_len != body_len {
        return None;
    }
    let (archive_bytes, misuse) = body[RECORD_FIXED_BYTES..].split_at(archive_len);
    let mut archive = ArchiveBuf::with_capacity(archive_len);
    archive.extend_from_slice(archive_bytes);
    let record = WalRecord {
        lsn: u64_at(0),
        terminal: u32_at(8),
        municipality: IstatCode(u32_at(12)),
        seq: u64_at(16),
        received_ms: u64_at(24) as i64,
        archive,
        misuse: misuse.to_vec(),
    };
    Some((record, RECORD_HEADER_BYTES + body_len))
}

fn segment_header(first_lsn: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..6].copy_from_slice(&SEGMENT_MAGIC);
    header[6..8].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.wal")
}

/// The segments of `dir`, sorted by first LSN.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let lsn = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".wal")).and_then(|n| n.parse::<u64>().ok());
        if let Some(lsn) = lsn {
            segments.push((lsn, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Reads every record of the log in `dir`, repairing a torn tail, and calls `apply` for each
/// record with an LSN above `after_lsn` in LSN order.
///
/// # Errors
/// I/O errors, or a segment whose header is not a faccia log header. A torn or corrupt record
/// is never an error: it is cut off or skipped, and counted in the report.
pub(crate) fn replay(dir: &Path, after_lsn: u64, mut apply: impl FnMut(WalRecord)) -> Result<ReplayReport, WalError> {
    fsutil::create_dir_durable(dir).map_err(io_error(dir))?;
    let segments = list_segments(dir)?;
    let mut report = ReplayReport { segments: segments.len(), ..ReplayReport::default() };
    let mut expected_lsn: Option<u64> = None;
    for (index, (first_lsn, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        // A segment is sealed where the next one starts: records at or past that LSN were
        // written by a group whose fsync failed and were never acknowledged.
        let limit = segments.get(index + 1).map_or(u64::MAX, |(next, _)| *next);
        let bytes = fs::read(path).map_err(io_error(path))?;
        if bytes.len() < SEGMENT_HEADER_BYTES && is_last {
            // A segment whose header never reached the disk: nothing in it was acknowledged.
            report.torn_tail_bytes += bytes.len() as u64;
            truncate(path, 0)?;
            fs::write(path, segment_header(*first_lsn)).map_err(io_error(path))?;
            continue;
        }
        check_segment_header(path, &bytes, *first_lsn)?;
        let mut offset = SEGMENT_HEADER_BYTES;
        if let Some(previous_end) = expected_lsn.filter(|e| e < first_lsn) {
            report.lsn_gaps += first_lsn - previous_end;
        }
        let mut expected = *first_lsn;
        while offset < bytes.len() && expected < limit {
            if let Some((record, len)) = decode_record(&bytes[offset..]).filter(|(r, _)| r.lsn == expected) {
                offset += len;
                expected = record.lsn + 1;
                report.records += 1;
                report.last_lsn = record.lsn;
                if record.lsn > after_lsn {
                    report.records_replayed += 1;
                    apply(record);
                }
                continue;
            }
            match resync(&bytes, offset + 1, expected) {
                Some((next_offset, next_lsn)) => {
                    tracing::error!(
                        segment = %path.display(), offset, skipped_bytes = next_offset - offset,
                        lost_lsns = next_lsn - expected,
                        "corrupt log record skipped; acknowledged votes in it are lost"
                    );
                    keep_corrupt_copy(dir, path);
                    report.corrupt_ranges += 1;
                    report.corrupt_bytes += (next_offset - offset) as u64;
                    report.lsn_gaps += next_lsn - expected;
                    offset = next_offset;
                    expected = next_lsn;
                }
                None if is_last => {
                    let torn = bytes.len() - offset;
                    tracing::warn!(segment = %path.display(), offset, torn_bytes = torn, "torn log tail cut off");
                    report.torn_tail_bytes += torn as u64;
                    truncate(path, offset as u64)?;
                    break;
                }
                None => {
                    tracing::error!(
                        segment = %path.display(), offset, bytes = bytes.len() - offset,
                        "corrupt end of a sealed log segment skipped; acknowledged votes in it are lost"
                    );
                    keep_corrupt_copy(dir, path);
                    report.corrupt_ranges += 1;
                    report.corrupt_bytes += (bytes.len() - offset) as u64;
                    break;
                }
            }
        }
        expected_lsn = Some(expected);
    }
    Ok(report)
}

fn check_segment_header(path: &Path, bytes: &[u8], first_lsn: u64) -> Result<(), WalError> {
    let bad = |reason: &str| WalError::BadSegment { path: path.to_path_buf(), reason: reason.to_string() };
    let header = bytes.get(..SEGMENT_HEADER_BYTES).ok_or_else(|| bad("shorter than its header"))?;
    if header[0..6] != SEGMENT_MAGIC {
        return Err(bad("bad magic"));
    }
    let version = u16::from_le_bytes([header[6], header[7]]);
    if version != SEGMENT_VERSION {
        return Err(bad(&format!("format version {version}, this faccia reads {SEGMENT_VERSION}")));
    }
    if crc32c::crc32c(&header[0..16]) != u32::from_le_bytes(header[16..20].try_into().expect("4 bytes")) {
        return Err(bad("header checksum mismatch"));
    }
    if u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")) != first_lsn {
        return Err(bad("first LSN does not match the file name"));
    }
    Ok(())
}

/// Finds the next valid record at or after `from` whose LSN is plausible after `expected`.
fn resync(bytes: &[u8], from: usize, expected: u64) -> Option<(usize, u64)> {
    (from..bytes.len().saturating_sub(RECORD_HEADER_BYTES + RECORD_FIXED_BYTES - 1)).find_map(|offset| {
        decode_record(&bytes[offset..])
            .filter(|(r, _)| r.lsn >= expected && r.lsn - expected < RESYNC_LSN_AHEAD_MAX)
            .map(|(r, _)| (offset, r.lsn))
    })
}

fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
    file.set_len(len).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn keep_corrupt_copy(dir: &Path, segment: &Path) {
    let corrupt = dir.join("corrupt");
    let name = segment.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let copy = corrupt.join(format!("{name}.{}", crate::clock::now_ms()));
    let result = fs::create_dir_all(&corrupt).and_then(|()| fs::copy(segment, &copy));
    if let Err(error) = result {
        tracing::error!(%error, copy = %copy.display(), "could not keep a copy of the corrupt segment");
    }
}

/// Reads, without repairing or writing anything, every intact record above `after_lsn`: what a
/// reader in another process (`faccia sql`) sees of a log a server may be appending to. Each
/// segment is read up to its first incomplete or damaged record (the writer may be in the middle
/// of it); records past the next segment's first LSN are ignored as at replay. Returns the last
/// LSN read, or `after_lsn` when there is none.
///
/// # Errors
/// I/O errors, including a segment removed while it is read (a flush committed meanwhile: the
/// caller reads the checkpoint again and retries).
pub(crate) fn read_tail(dir: &Path, after_lsn: u64, mut apply: impl FnMut(WalRecord)) -> Result<u64, WalError> {
    if !dir.is_dir() {
        return Ok(after_lsn);
    }
    let segments = list_segments(dir)?;
    let mut last = after_lsn;
    for (index, (first_lsn, path)) in segments.iter().enumerate() {
        let limit = segments.get(index + 1).map_or(u64::MAX, |(next, _)| *next);
        if limit <= after_lsn.saturating_add(1) {
            continue;
        }
        let bytes = fs::read(path).map_err(io_error(path))?;
        if bytes.len() < SEGMENT_HEADER_BYTES || check_segment_header(path, &bytes, *first_lsn).is_err() {
            // A segment being created: its header is not complete yet.
            continue;
        }
        let (mut offset, mut expected) = (SEGMENT_HEADER_BYTES, *first_lsn);
        while expected < limit {
            let Some((record, len)) = decode_record(&bytes[offset..]).filter(|(r, _)| r.lsn == expected) else { break };
            offset += len;
            expected += 1;
            if record.lsn > after_lsn {
                last = record.lsn;
                apply(record);
            }
        }
    }
    Ok(last)
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// A batch to make durable. The caller has validated `archive` and holds the dedup guard.
#[derive(Debug)]
pub struct AppendRequest {
    /// The terminal that sent the batch.
    pub terminal: TerminalId,
    /// The terminal's registered municipality (from the registry, never from the network).
    pub municipality: IstatCode,
    /// The batch's sequence number, as the terminal numbered it.
    pub seq: u64,
    /// When the server took the batch: ms since the Unix epoch (UTC), by the server's clock.
    pub received_ms: i64,
    /// The batch's validated archive, logged as received.
    pub archive: ArchiveBuf,
    /// Misuse flag of each vote, or empty when no vote is flagged.
    pub misuse: Vec<u8>,
    /// The batch's dedup guard; the writer settles it (stored, or failed).
    pub guard: PendingGuard,
    /// Completed after the fsync with the record's LSN, or with the reason it was not written.
    pub durable: oneshot::Sender<Result<u64, WalUnavailable>>,
}

/// Why an append was not made durable; the terminal is told to retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalUnavailable {
    /// A write or fsync failed (disk full, I/O error); the message is in the server log.
    Storage,
    /// The server is shutting down; the batch was not written.
    ShuttingDown,
}

/// A durable record on its way to the Arrow buffer.
#[derive(Debug)]
pub struct DurableRecord {
    pub(crate) lsn: u64,
    /// The terminal that sent the batch.
    pub(crate) terminal: TerminalId,
    /// The terminal's registered municipality.
    pub(crate) municipality: IstatCode,
    /// The batch's validated archive, as logged.
    pub(crate) archive: ArchiveBuf,
    /// Misuse flag of each vote, or empty when no vote is flagged.
    pub(crate) misuse: Vec<u8>,
    /// When the server took the batch (ms since the Unix epoch): the time a clock fault is stored at.
    pub(crate) received_ms: i64,
}

/// The open log, owned by its writer thread.
struct Writer {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    /// Bytes of the active segment known to be durable.
    durable_len: u64,
    next_lsn: u64,
    segment_bytes: u64,
    group_bytes_max: usize,
    sequences: Arc<Sequences>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
    store: Sender<Vec<DurableRecord>>,
    failing: bool,
}

/// Configuration of the writer thread.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The log directory (`wal/` in the data directory).
    pub dir: PathBuf,
    /// LSN of the first record the writer appends: one past the highest LSN recovered.
    pub next_lsn: u64,
    /// Size in bytes past which the active segment is closed and a new one started.
    pub segment_bytes: u64,
    /// Bytes of batches after which one group commit stops taking requests and fsyncs.
    pub group_bytes_max: usize,
    /// Injected I/O errors for the log's writes and fsyncs.
    pub faults: Arc<Faults>,
}

/// Starts the writer thread on a new segment. Durable records go to `store` in LSN order.
/// The thread ends when every sender of `requests` is dropped, after answering every request
/// already sent.
///
/// # Errors
/// When the first segment cannot be created.
pub fn start_writer(
    config: WriterConfig,
    requests: Receiver<AppendRequest>,
    store: Sender<Vec<DurableRecord>>,
    sequences: Arc<Sequences>,
    metrics: Arc<Metrics>,
) -> Result<std::thread::JoinHandle<()>, WalError> {
    let (file, path) = create_segment(&config.dir, config.next_lsn)?;
    let mut writer = Writer {
        dir: config.dir,
        file,
        path,
        durable_len: SEGMENT_HEADER_BYTES as u64,
        next_lsn: config.next_lsn,
        segment_bytes: config.segment_bytes,
        group_bytes_max: config.group_bytes_max,
        sequences,
        metrics,
        faults: config.faults,
        store,
        failing: false,
    };
    std::thread::Builder::new()
        .name("faccia-wal".into())
        .spawn(move || writer.run(requests))
        .map_err(|source| WalError::Io { path: PathBuf::from("<thread>"), source })
}

fn create_segment(dir: &Path, first_lsn: u64) -> Result<(File, PathBuf), WalError> {
    let path = dir.join(segment_name(first_lsn));
    let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(io_error(&path))?;
    file.write_all(&segment_header(first_lsn)).map_err(io_error(&path))?;
    file.sync_all().map_err(io_error(&path))?;
    fsutil::sync_dir(dir).map_err(io_error(dir))?;
    Ok((file, path))
}

impl Writer {
    fn run(&mut self, requests: Receiver<AppendRequest>) {
        let mut buf = Vec::with_capacity(self.group_bytes_max + 64 * 1024);
        let mut group: Vec<AppendRequest> = Vec::new();
        while let Ok(first) = requests.recv() {
            let mut bytes = first.archive.len();
            group.push(first);
            while bytes < self.group_bytes_max {
                match requests.try_recv() {
                    Ok(request) => {
                        bytes += request.archive.len() + request.misuse.len() + RECORD_HEADER_BYTES + RECORD_FIXED_BYTES;
                        group.push(request);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit(&mut group, &mut buf);
        }
        // Every sender is gone: nothing more can arrive, and the active segment is durable.
        tracing::debug!(next_lsn = self.next_lsn, "log writer stopped");
    }

    /// Writes and fsyncs one group, then acknowledges it. On failure the segment is cut back to
    /// its durable length and every request of the group is answered "retry later".
    fn commit(&mut self, group: &mut Vec<AppendRequest>, buf: &mut Vec<u8>) {
        if let Err(error) = self.rotate_if_full() {
            self.fail(group, &error);
            return;
        }
        buf.clear();
        for (i, request) in group.iter().enumerate() {
            encode_record(buf, request, self.next_lsn + i as u64);
        }
        let started = Instant::now();
        let written = (self.faults.check(Fault::WalWrite))
            .and_then(|()| self.file.write_all(buf))
            .and_then(|()| self.faults.check(Fault::WalSync))
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            let error = WalError::Io { path: self.path.clone(), source };
            self.cut_back();
            self.fail(group, &error);
            return;
        }
        // Durable, and nobody told: the terminals send these batches again, perhaps elsewhere.
        crate::storage::faults::crash_point("wal.after_fsync");
        self.metrics.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.wal_fsyncs.inc();
        self.metrics.wal_group_batches.observe(group.len() as f64);
        self.metrics.wal_bytes.inc_by(buf.len() as u64);
        if self.failing {
            self.failing = false;
            self.metrics.wal_unavailable.set(0);
            tracing::info!("log writes succeed again; acknowledging");
        }
        self.durable_len += buf.len() as u64;
        let first_lsn = self.next_lsn;
        self.next_lsn += group.len() as u64;
        let mut durable = Vec::with_capacity(group.len());
        for (i, mut request) in group.drain(..).enumerate() {
            let lsn = first_lsn + i as u64;
            self.sequences.mark_stored(request.terminal, request.seq);
            request.guard.settled_by_log();
            // The receiver may be gone (connection closed): the batch is stored all the same and
            // a retransmission will be answered "duplicate".
            let _ = request.durable.send(Ok(lsn));
            durable.push(DurableRecord {
                lsn,
                terminal: request.terminal,
                municipality: request.municipality,
                archive: request.archive,
                misuse: request.misuse,
                received_ms: request.received_ms,
            });
        }
        if self.store.send(durable).is_err() {
            tracing::error!("the store stopped before the log; records stay in the log for the next start");
        }
    }

    fn fail(&mut self, group: &mut Vec<AppendRequest>, error: &WalError) {
        self.metrics.wal_errors.inc();
        if !self.failing {
            self.failing = true;
            self.metrics.wal_unavailable.set(1);
            tracing::error!(error = %crate::error_chain(error), "log write failed; answering retry-later until it succeeds");
        }
        for mut request in group.drain(..) {
            self.sequences.abort(&mut request.guard);
            let _ = request.durable.send(Err(WalUnavailable::Storage));
        }
    }

    /// After a failed write: remove whatever part of the group reached the file, so that the
    /// log never holds a record that was not acknowledged as durable.
    fn cut_back(&mut self) {
        let restored = self.file.set_len(self.durable_len).and_then(|()| self.file.sync_all());
        if let Err(error) = restored {
            // The file may hold part of an unacknowledged group; start a fresh segment so that
            // nothing is appended behind it. Replay reads the partial group as a torn region.
            tracing::error!(%error, segment = %self.path.display(), "could not cut the log back; sealing the segment");
            if let Ok((file, path)) = create_segment(&self.dir, self.next_lsn) {
                self.file = file;
                self.path = path;
                self.durable_len = SEGMENT_HEADER_BYTES as u64;
            }
        }
        let _ = std::io::Seek::seek(&mut self.file, io::SeekFrom::Start(self.durable_len));
    }

    fn rotate_if_full(&mut self) -> Result<(), WalError> {
        if self.durable_len < self.segment_bytes {
            return Ok(());
        }
        self.faults.check(Fault::WalWrite).map_err(|source| WalError::Io { path: self.dir.clone(), source })?;
        let (file, path) = create_segment(&self.dir, self.next_lsn)?;
        self.file = file;
        self.path = path;
        self.durable_len = SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }
}

/// Deletes the sealed segments of `dir` whose records all have an LSN ≤ `watermark` (they are
/// in durable Parquet). The active segment is always the last one and is never removed, so this
/// is safe to call while the writer runs. Returns how many segments were removed.
///
/// # Errors
/// Listing, removing or syncing errors; segments left behind are removed by a later call.
pub(crate) fn remove_flushed_segments(dir: &Path, watermark: u64) -> Result<usize, WalError> {
    let segments = list_segments(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first > watermark + 1 {
            break;
        }
        fs::remove_file(path).map_err(io_error(path))?;
        removed += 1;
    }
    if removed > 0 {
        fsutil::sync_dir(dir).map_err(io_error(dir))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        sequences: &Sequences,
        terminal: TerminalId,
        seq: u64,
        payload: &[u8],
    ) -> (AppendRequest, oneshot::Receiver<Result<u64, WalUnavailable>>) {
        let crate::storage::dedup::Begin::New(guard) = sequences.begin(terminal, seq) else { panic!("new batch") };
        let mut archive = ArchiveBuf::new();
        archive.extend_from_slice(payload);
        let (durable, receiver) = oneshot::channel();
        let misuse = if seq.is_multiple_of(2) { vec![0, 1, 0] } else { Vec::new() };
        let request = AppendRequest { terminal, municipality: IstatCode(1003), seq, received_ms: 5, archive, misuse, guard, durable };
        (request, receiver)
    }

    /// Writes `count` records, one group commit each (so that small segments rotate).
    fn write_log(dir: &Path, count: u64, segment_bytes: u64) -> Vec<DurableRecord> {
        let sequences = Arc::new(Sequences::default());
        let (requests, receiver) = crossbeam_channel::unbounded();
        let (store, stored) = crossbeam_channel::unbounded();
        let config = WriterConfig { dir: dir.to_path_buf(), next_lsn: 1, segment_bytes, group_bytes_max: 1, faults: Arc::default() };
        let thread = start_writer(config, receiver, store, Arc::clone(&sequences), Arc::new(Metrics::new())).unwrap();
        let mut acks = Vec::new();
        for seq in 1..=count {
            let (request, ack) = request(&sequences, 9, seq, &seq.to_le_bytes().repeat(3));
            requests.send(request).unwrap();
            acks.push(ack);
        }
        drop(requests);
        thread.join().unwrap();
        for (i, ack) in acks.into_iter().enumerate() {
            assert_eq!(ack.blocking_recv().unwrap(), Ok(i as u64 + 1));
        }
        assert_eq!(sequences.last_seq(9), count);
        stored.try_iter().flatten().collect()
    }

    fn replay_all(dir: &Path) -> (Vec<WalRecord>, ReplayReport) {
        let mut records = Vec::new();
        let report = replay(dir, 0, |r| records.push(r)).unwrap();
        (records, report)
    }

    #[test]
    fn append_then_replay_round_trips_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let durable = write_log(dir.path(), 50, 300);
        assert_eq!(durable.len(), 50);
        let (records, report) = replay_all(dir.path());
        assert!(report.segments > 1, "small segments rotate: {report:?}");
        assert_eq!(report.records, 50);
        assert_eq!((report.torn_tail_bytes, report.corrupt_ranges, report.lsn_gaps), (0, 0, 0));
        for (i, record) in records.iter().enumerate() {
            let seq = i as u64 + 1;
            assert_eq!((record.lsn, record.seq, record.terminal), (seq, seq, 9));
            assert_eq!(&record.archive[..], &seq.to_le_bytes().repeat(3)[..]);
            assert_eq!(record.misuse, if seq.is_multiple_of(2) { vec![0, 1, 0] } else { vec![] });
        }
        let (_, after) = {
            let mut n = 0;
            (0, replay(dir.path(), 40, |_| n += 1).map(|r| (r, n)).unwrap())
        };
        assert_eq!(after.1, 10, "only records above the watermark are applied");
    }

    #[test]
    fn one_fsync_serves_every_waiting_batch() {
        let dir = tempfile::tempdir().unwrap();
        let sequences = Arc::new(Sequences::default());
        let metrics = Arc::new(Metrics::new());
        let (requests, receiver) = crossbeam_channel::unbounded();
        let (store, stored) = crossbeam_channel::unbounded();
        let mut acks = Vec::new();
        for seq in 1..=100 {
            let (request, ack) = request(&sequences, 4, seq, &[1; 64]);
            requests.send(request).unwrap();
            acks.push(ack);
        }
        drop(requests);
        let config = WriterConfig {
            dir: dir.path().to_path_buf(),
            next_lsn: 1,
            segment_bytes: 1 << 20,
            group_bytes_max: 1 << 20,
            faults: Arc::default(),
        };
        start_writer(config, receiver, store, Arc::clone(&sequences), Arc::clone(&metrics)).unwrap().join().unwrap();
        assert!(acks.into_iter().all(|a| a.blocking_recv().unwrap().is_ok()));
        assert_eq!(metrics.wal_fsyncs.get(), 1, "all 100 batches were waiting: one group, one fsync");
        assert_eq!(stored.try_iter().flatten().count(), 100);
    }

    #[test]
    fn a_failed_fsync_acknowledges_nothing_keeps_the_log_clean_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let sequences = Arc::new(Sequences::default());
        let metrics = Arc::new(Metrics::new());
        let faults = Arc::new(Faults::default());
        let (requests, receiver) = crossbeam_channel::unbounded();
        let (store, stored) = crossbeam_channel::unbounded();
        let config = WriterConfig {
            dir: dir.path().to_path_buf(),
            next_lsn: 1,
            segment_bytes: 1 << 20,
            group_bytes_max: 1,
            faults: Arc::clone(&faults),
        };
        let thread = start_writer(config, receiver, store, Arc::clone(&sequences), Arc::clone(&metrics)).unwrap();
        let send = |seq: u64| {
            let (request, ack) = request(&sequences, 2, seq, &[seq as u8; 16]);
            requests.send(request).unwrap();
            ack.blocking_recv().unwrap()
        };
        assert_eq!(send(1), Ok(1));
        faults.set(Fault::WalSync, true);
        assert_eq!(send(2), Err(WalUnavailable::Storage), "data written but not fsync'd: not acknowledged");
        assert_eq!(metrics.wal_unavailable.get(), 1);
        assert_eq!(sequences.last_seq(2), 1, "a failed batch is not marked stored");
        faults.set(Fault::WalSync, false);
        faults.set(Fault::WalWrite, true);
        assert_eq!(send(2), Err(WalUnavailable::Storage));
        faults.set(Fault::WalWrite, false);
        assert_eq!(send(2), Ok(2), "the retried batch is stored once space returns");
        assert_eq!(metrics.wal_unavailable.get(), 0);
        drop(requests);
        thread.join().unwrap();
        assert_eq!(stored.try_iter().flatten().map(|r| r.lsn).collect::<Vec<_>>(), vec![1, 2]);
        let (records, report) = replay_all(dir.path());
        assert_eq!(records.iter().map(|r| (r.lsn, r.seq)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
        assert_eq!((report.torn_tail_bytes, report.corrupt_ranges), (0, 0), "the failed group left nothing behind");
    }

    #[test]
    fn torn_tail_at_every_offset_is_cut_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 3, 1 << 20);
        let segment = list_segments(dir.path()).unwrap().pop().unwrap().1;
        let whole = fs::read(&segment).unwrap();
        let mut last_start = SEGMENT_HEADER_BYTES;
        while let Some((_, len)) = decode_record(&whole[last_start..]).filter(|_| last_start + 1 < whole.len()) {
            if last_start + len == whole.len() {
                break;
            }
            last_start += len;
        }
        for cut in last_start..whole.len() {
            fs::write(&segment, &whole[..cut]).unwrap();
            let (records, report) = replay_all(dir.path());
            assert_eq!(records.len(), 2, "cut at {cut}");
            assert_eq!(report.torn_tail_bytes, (cut - last_start) as u64, "cut at {cut}");
            assert_eq!(fs::metadata(&segment).unwrap().len(), last_start as u64, "tail removed");
            let (again, report) = replay_all(dir.path());
            assert_eq!((again.len(), report.torn_tail_bytes), (2, 0), "repair is durable");
        }
    }

    #[test]
    fn corrupt_record_in_the_middle_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 5, 1 << 20);
        let segment = list_segments(dir.path()).unwrap().pop().unwrap().1;
        let mut bytes = fs::read(&segment).unwrap();
        let record_len = decode_record(&bytes[SEGMENT_HEADER_BYTES..]).unwrap().1;
        // Flip a byte inside the second record's payload, then (separately) its length field.
        bytes[SEGMENT_HEADER_BYTES + record_len + 40] ^= 0xff;
        fs::write(&segment, &bytes).unwrap();
        let (records, report) = replay_all(dir.path());
        assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1, 3, 4, 5]);
        assert_eq!((report.corrupt_ranges, report.lsn_gaps, report.torn_tail_bytes), (1, 1, 0));
        bytes[SEGMENT_HEADER_BYTES + record_len + 40] ^= 0xff;
        bytes[SEGMENT_HEADER_BYTES + record_len] = 0xee;
        fs::write(&segment, &bytes).unwrap();
        let (records, _) = replay_all(dir.path());
        assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![1, 3, 4, 5]);
        assert!(dir.path().join("corrupt").read_dir().unwrap().count() >= 1, "a copy is kept");
    }

    #[test]
    fn removal_keeps_every_record_above_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 20, 200);
        let before = list_segments(dir.path()).unwrap().len();
        let removed = remove_flushed_segments(dir.path(), 10).unwrap();
        assert!(removed > 0 && removed < before);
        let (records, _) = replay_all(dir.path());
        assert!(records.first().unwrap().lsn <= 11, "every record above the watermark is kept");
        assert_eq!(records.last().unwrap().lsn, 20);
        remove_flushed_segments(dir.path(), 20).unwrap();
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1, "the last segment stays");
    }
}
