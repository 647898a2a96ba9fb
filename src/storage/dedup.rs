//! Which batches each terminal has stored: the exactly-once rule.
//!
//! Per terminal the server keeps the highest stored sequence number and a bitmap of the
//! `limits::SEQ_WINDOW` numbers below it. A batch is
//! - `Stored` (answer "duplicate") if its number is in the window and its bit is set;
//! - `Stale` (answer "rejected: stale_sequence") if it is older than the window: the server can
//!   no longer tell, and a terminal that keeps fewer than `SEQ_WINDOW` batches in flight never
//!   sends one;
//! - `Pending` if another copy is being written right now: the second copy waits for the first
//!   and is answered "duplicate" once the first is durable (or "retry later" if it failed);
//! - `New` otherwise. Gaps are allowed: numbers a terminal skipped are simply never stored.
//!
//! A batch is marked stored only after its log record is fsync'd (the WAL writer does it), so
//! "duplicate" is as durable as "stored". The state survives restarts: the checkpoint holds a
//! snapshot and the log replay re-applies every record after it (marking is idempotent).
//!
//! Architecture invariant: no I/O here; `checkpoint` persists the snapshot.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::limits::SEQ_WINDOW;
use crate::model::TerminalId;

const WORDS: usize = (SEQ_WINDOW / 64) as usize;
const SHARDS: usize = 64;

/// The stored sequence numbers of one terminal, as a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SeqWindow {
    /// Highest stored sequence number; 0 when none.
    pub(crate) high: u64,
    /// Bit `i` (word `i / 64`, bit `i % 64`) is set when `high - i` is stored.
    pub(crate) bits: [u64; WORDS],
}

/// What the window says about a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    New,
    Stored,
    Stale,
}

impl SeqWindow {
    pub(crate) fn check(&self, seq: u64) -> Seen {
        if seq > self.high {
            return Seen::New;
        }
        let distance = self.high - seq;
        if distance >= SEQ_WINDOW {
            return Seen::Stale;
        }
        let (word, bit) = ((distance / 64) as usize, distance % 64);
        if self.bits[word] & (1 << bit) != 0 { Seen::Stored } else { Seen::New }
    }

    /// The stored numbers, highest first.
    pub(crate) fn stored(&self) -> impl Iterator<Item = u64> + '_ {
        (0..SEQ_WINDOW.min(self.high)).filter(|d| self.bits[(d / 64) as usize] & (1 << (d % 64)) != 0).map(|d| self.high - d)
    }

    /// Adds every number `other` holds (another node's window of the same terminal).
    pub(crate) fn merge(&mut self, other: &SeqWindow) {
        for seq in other.stored() {
            self.insert(seq);
        }
    }

    /// Marks `seq` stored. Idempotent; a number older than the window is ignored.
    pub(crate) fn insert(&mut self, seq: u64) {
        if seq > self.high {
            self.shift(seq - self.high);
            self.high = seq;
        }
        let distance = self.high - seq;
        if distance < SEQ_WINDOW {
            self.bits[(distance / 64) as usize] |= 1 << (distance % 64);
        }
    }

    /// Moves the window up by `by` numbers: bit `i` becomes bit `i + by`.
    fn shift(&mut self, by: u64) {
        if by >= SEQ_WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..WORDS).rev() {
            let from = i.checked_sub(words);
            let high_part = from.map_or(0, |f| self.bits[f] << bits);
            let low_part = match (bits, from.and_then(|f| f.checked_sub(1))) {
                (0, _) | (_, None) => 0,
                (_, Some(f)) => self.bits[f] >> (64 - bits),
            };
            self.bits[i] = high_part | low_part;
        }
    }
}

/// Outcome of a write that other copies of the same batch wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingOutcome {
    /// The first copy's write is not settled yet.
    Waiting,
    /// The first copy is durable: answer "duplicate".
    Stored,
    /// The first copy's write failed: answer "retry later".
    Failed,
}

/// What `Sequences::begin` decided for an arriving batch.
#[derive(Debug)]
pub enum Begin {
    /// Not seen: the caller writes it, holding the guard until the write is settled.
    New(PendingGuard),
    /// Already durable: answer "duplicate".
    Stored,
    /// Older than the window: answer "stale".
    Stale,
    /// Another copy is being written; wait for its outcome.
    Pending(watch::Receiver<PendingOutcome>),
    /// Too far above the window this node last published for the terminal (several nodes
    /// only, `Sequences::bound_by_publication`): answer "retry later".
    Unpublished,
}

#[derive(Debug, Default)]
struct TerminalState {
    window: SeqWindow,
    /// The highest number of this terminal's window as this node last published it.
    published: u64,
    pending: Vec<(u64, watch::Sender<PendingOutcome>)>,
}

/// The stored-batch state of every terminal, sharded for concurrent ingest tasks.
#[derive(Debug)]
pub struct Sequences {
    shards: Vec<Mutex<HashMap<TerminalId, TerminalState>>>,
    /// Whether a batch more than `SEQ_WINDOW` above the published window is refused.
    bounded: AtomicBool,
}

impl Default for Sequences {
    fn default() -> Self {
        Sequences { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), bounded: AtomicBool::new(false) }
    }
}

impl Sequences {
    fn shard(&self, terminal: TerminalId) -> std::sync::MutexGuard<'_, HashMap<TerminalId, TerminalState>> {
        self.shards[terminal as usize % SHARDS].lock().expect("sequence shard lock")
    }

    /// Decides what to do with batch `seq` of `terminal`, atomically with respect to other
    /// copies of it.
    pub fn begin(&self, terminal: TerminalId, seq: u64) -> Begin {
        let mut shard = self.shard(terminal);
        let state = shard.entry(terminal).or_default();
        match state.window.check(seq) {
            Seen::Stored => return Begin::Stored,
            Seen::Stale => return Begin::Stale,
            Seen::New => {}
        }
        if self.bounded.load(Ordering::Relaxed) && seq > state.published.saturating_add(SEQ_WINDOW) {
            return Begin::Unpublished;
        }
        if let Some((_, sender)) = state.pending.iter().find(|(s, _)| *s == seq) {
            return Begin::Pending(sender.subscribe());
        }
        let (sender, _) = watch::channel(PendingOutcome::Waiting);
        state.pending.push((seq, sender));
        Begin::New(PendingGuard { terminal, seq, settled: false })
    }

    /// Marks a batch durable and wakes the copies waiting for it. Called by the log writer after
    /// the fsync that covers the batch, and by the replay.
    pub(crate) fn mark_stored(&self, terminal: TerminalId, seq: u64) {
        let mut shard = self.shard(terminal);
        let state = shard.entry(terminal).or_default();
        state.window.insert(seq);
        settle(state, seq, PendingOutcome::Stored);
    }

    /// Ends a pending write that did not become durable; waiting copies are told to retry.
    pub(crate) fn abort(&self, guard: &mut PendingGuard) {
        guard.settled = true;
        let mut shard = self.shard(guard.terminal);
        if let Some(state) = shard.get_mut(&guard.terminal) {
            settle(state, guard.seq, PendingOutcome::Failed);
        }
    }

    /// Highest stored sequence number of `terminal` (0: none).
    pub(crate) fn last_seq(&self, terminal: TerminalId) -> u64 {
        self.shard(terminal).get(&terminal).map_or(0, |s| s.window.high)
    }

    /// From now on, refuses (`Begin::Unpublished`) a batch numbered more than `SEQ_WINDOW` above
    /// its terminal's window as last published (`set_published`): another node taking the
    /// terminal over knows this node stored nothing beyond that (`storage::membership`).
    pub(crate) fn bound_by_publication(&self) {
        self.bounded.store(true, Ordering::Relaxed);
    }

    /// Records that `terminal`'s window, up to `high`, is published.
    pub(crate) fn set_published(&self, terminal: TerminalId, high: u64) {
        let mut shard = self.shard(terminal);
        let state = shard.entry(terminal).or_default();
        state.published = state.published.max(high);
    }

    /// Adds another node's window of `terminal` to this node's (a terminal taken over).
    pub(crate) fn merge(&self, terminal: TerminalId, window: &SeqWindow) {
        self.shard(terminal).entry(terminal).or_default().window.merge(window);
    }

    /// A copy of every terminal's window, for the checkpoint.
    pub(crate) fn snapshot(&self) -> Vec<(TerminalId, SeqWindow)> {
        let mut all: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().expect("sequence shard lock");
                shard.iter().filter(|(_, s)| s.window.high > 0).map(|(t, s)| (*t, s.window)).collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|(t, _)| *t);
        all
    }

    /// Restores windows read from a checkpoint.
    pub(crate) fn restore(&self, windows: impl IntoIterator<Item = (TerminalId, SeqWindow)>) {
        for (terminal, window) in windows {
            self.shard(terminal).entry(terminal).or_default().window = window;
        }
    }
}

fn settle(state: &mut TerminalState, seq: u64, outcome: PendingOutcome) {
    if let Some(i) = state.pending.iter().position(|(s, _)| *s == seq) {
        let (_, sender) = state.pending.swap_remove(i);
        sender.send_replace(outcome);
    }
}

/// Held by the task writing a new batch. It must be settled by `mark_stored` (through the log
/// writer) or `Sequences::abort`; forgetting is a programmer error caught in debug builds.
#[derive(Debug)]
pub struct PendingGuard {
    /// The terminal that sent the batch.
    pub(crate) terminal: TerminalId,
    /// The batch's sequence number, as the terminal numbered it.
    pub(crate) seq: u64,
    settled: bool,
}

impl PendingGuard {
    /// Records that the log writer settled this write (it called `mark_stored`).
    pub(crate) fn settled_by_log(&mut self) {
        self.settled = true;
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        debug_assert!(self.settled || std::thread::panicking(), "pending batch {} of terminal {} never settled", self.seq, self.terminal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn window_tracks_stored_numbers() {
        let mut w = SeqWindow::default();
        assert_eq!(w.check(1), Seen::New);
        w.insert(1);
        w.insert(3);
        assert_eq!((w.check(1), w.check(2), w.check(3), w.check(4)), (Seen::Stored, Seen::New, Seen::Stored, Seen::New));
        w.insert(3 + SEQ_WINDOW);
        assert_eq!(w.check(3), Seen::Stale);
        assert_eq!(w.check(4), Seen::New, "a gap stays new inside the window");
        assert_eq!(w.check(3 + SEQ_WINDOW), Seen::Stored);
    }

    #[test]
    fn window_matches_a_set_on_random_sequences() {
        let seed: u64 = rand::rng().random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut window = SeqWindow::default();
        let mut set = std::collections::BTreeSet::new();
        let mut next = 1u64;
        for _ in 0..20_000 {
            let seq = if rng.random_bool(0.7) {
                next += rng.random_range(1..80);
                next
            } else {
                next.saturating_sub(rng.random_range(0..1200)).max(1)
            };
            let expected = if seq + SEQ_WINDOW <= window.high {
                Seen::Stale
            } else if set.contains(&seq) {
                Seen::Stored
            } else {
                Seen::New
            };
            assert_eq!(window.check(seq), expected, "seq {seq} high {} (seed {seed})", window.high);
            window.insert(seq);
            set.insert(seq);
        }
    }

    #[tokio::test]
    async fn second_copy_waits_for_the_first() {
        let sequences = Sequences::default();
        let Begin::New(mut guard) = sequences.begin(7, 1) else { panic!("first copy is new") };
        let Begin::Pending(mut waiting) = sequences.begin(7, 1) else { panic!("second copy waits") };
        sequences.mark_stored(7, 1);
        guard.settled_by_log();
        waiting.wait_for(|o| *o != PendingOutcome::Waiting).await.unwrap();
        assert_eq!(*waiting.borrow(), PendingOutcome::Stored);
        assert!(matches!(sequences.begin(7, 1), Begin::Stored));
        assert_eq!(sequences.last_seq(7), 1);

        let Begin::New(mut guard) = sequences.begin(7, 2) else { panic!() };
        let Begin::Pending(waiting) = sequences.begin(7, 2) else { panic!() };
        sequences.abort(&mut guard);
        assert_eq!(*waiting.borrow(), PendingOutcome::Failed);
        let Begin::New(mut guard) = sequences.begin(7, 2) else { panic!("a failed write can be retried") };
        sequences.abort(&mut guard);
    }

    #[test]
    fn snapshot_restores() {
        let sequences = Sequences::default();
        for (t, s) in [(1, 5), (2, 9), (1, 6)] {
            sequences.mark_stored(t, s);
        }
        let restored = Sequences::default();
        restored.restore(sequences.snapshot());
        assert_eq!(restored.snapshot(), sequences.snapshot());
        assert_eq!(restored.last_seq(1), 6);
    }
}
