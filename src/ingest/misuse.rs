//! Misuse flags: votes that no person could have cast are kept, flagged, and not counted.
//!
//! Commercial emoticon terminals flag suspicious presses rather than delete them, and their
//! reports leave flagged votes out. faccia does the same, per terminal, at ingest: before a batch
//! is appended to the log, each vote gets a flag — 0 (counted) or the id of the first rule that
//! caught it — and the flags travel with the batch into the log and the Parquet `misuse` column.
//! They are decided once, in the order batches arrive; replay reads them from the log, so a
//! restart never changes a stored flag. `schemas/storage.md` lists the rules for analysts.
//!
//! Id 4, `clock`, is not a rule about presses: the vote's own time was implausible (a clock
//! fault, `wire::BatchRules::clock_fault`), so it is stored at the server's receive time with
//! the terminal's time beside it, and it takes no part in the rules below (its time says nothing
//! about when the press happened). `flags_with_clock` decides it.
//!
//! Rules, checked in this order (the ids are stored data: never renumber them):
//! 1. `debounce`: another press of the terminal lies within `debounce_ms` of this one;
//! 2. `repeat`: the nearest press before or after this one, within `repeat_window_ms`, has the
//!    same service, face, channel and reason;
//! 3. `burst`: the window of `burst_window_ms` holding this vote has already counted
//!    max(`burst_votes_min`, `burst_factor` × normal) votes, where normal is the terminal's
//!    average of counted votes per active window, learned from its earlier windows that were
//!    not bursts.
//!
//! "Another press" is one the detector remembers: the latest `RECENT_PRESSES` presses of the
//! terminal by time, and the earlier votes of the same batch. Of two presses too close together,
//! the one that arrives second is flagged, whatever their order in time. Times are the votes'
//! own (the terminal's clock), so the same arrivals always give the same flags.
//!
//! Architecture invariant: no I/O and no clock. State lives in memory, about half a KiB per
//! terminal that sent a batch since the server started (bounded by the terminal directory); it
//! is not persisted, so after a restart a terminal's history starts empty.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::limits::LimitError;
use crate::model::{Reason, TerminalId, Vote};

/// Presses remembered per terminal for the debounce and repeat rules: far more than a person
/// makes within `debounce_ms` or `repeat_window_ms`.
const RECENT_PRESSES: usize = 16;
/// Burst windows kept open per terminal; older ones are folded into the terminal's normal rate.
const WINDOWS_KEPT: usize = 4;
/// Weight of a closed window in the terminal's normal rate (an exponential moving average).
const NORMAL_WEIGHT: f64 = 1.0 / 8.0;
const SHARDS: usize = 64;

/// The misuse rules' windows, from the `[misuse]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MisuseRules {
    /// Two presses of one terminal closer than this: the later to arrive is flagged `debounce`.
    /// A citizen taps a service, then a face (and a reason after a red one); nobody votes twice
    /// within a second. 0 turns the rule off.
    pub debounce_ms: i64,
    /// The same service, face, channel and reason as the neighbouring press, closer than this:
    /// flagged `repeat`. The next citizen in a queue needs longer to step up and choose.
    /// 0 turns the rule off.
    pub repeat_window_ms: i64,
    /// Length of the windows in which the burst rule counts a terminal's votes.
    pub burst_window_ms: i64,
    /// A window never counts as a burst below this many votes: 30 a minute is a vote every two
    /// seconds, beyond any queue at a counter.
    pub burst_votes_min: u32,
    /// A window is a burst past this many times the terminal's normal votes per window.
    /// 0 turns the rule off.
    pub burst_factor: u32,
}

impl Default for MisuseRules {
    fn default() -> Self {
        MisuseRules { debounce_ms: 1_000, repeat_window_ms: 5_000, burst_window_ms: 60_000, burst_votes_min: 30, burst_factor: 5 }
    }
}

impl MisuseRules {
    /// # Errors
    /// A window outside its range, named.
    pub(crate) fn check(&self) -> Result<(), LimitError> {
        let fail = |field: &'static str, value: i64, allowed: &str| {
            Err(LimitError { table: "misuse", field, value: value.to_string(), allowed: allowed.to_string() })
        };
        for (field, value) in [("debounce_ms", self.debounce_ms), ("repeat_window_ms", self.repeat_window_ms)] {
            if !(0..=3_600_000).contains(&value) {
                return fail(field, value, "0..=3600000 (an hour; 0 turns the rule off)");
            }
        }
        if !(1_000..=86_400_000).contains(&self.burst_window_ms) {
            return fail("burst_window_ms", self.burst_window_ms, "1000..=86400000 (a second to a day)");
        }
        Ok(())
    }
}

/// A misuse rule; its id is what the `misuse` column stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rule {
    /// Another press of the terminal lies within `debounce_ms` of this one.
    Debounce = 1,
    /// The nearest press before or after, within `repeat_window_ms`, has the same service, face, channel and reason.
    Repeat = 2,
    /// The vote's `burst_window_ms` window has already counted max(`burst_votes_min`, `burst_factor` × normal) votes.
    Burst = 3,
    /// Not a press rule: the vote's time was a clock fault; it is stored at the receive time.
    Clock = 4,
}

impl Rule {
    /// Every flag, in the order they are checked (`Clock` first: a faulted vote meets no other rule).
    pub(crate) const ALL: [Rule; 4] = [Rule::Clock, Rule::Debounce, Rule::Repeat, Rule::Burst];

    /// The id stored in the `misuse` column (1–4; 0 there means counted).
    pub(crate) fn id(self) -> u8 {
        self as u8
    }

    /// The rule's name (`debounce`, `repeat`, `burst`), as the metrics' `rule` label and `schemas/storage.md` give it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Rule::Debounce => "debounce",
            Rule::Repeat => "repeat",
            Rule::Burst => "burst",
            Rule::Clock => "clock",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Press {
    at_ms: i64,
    seq: u64,
    /// Service, face, channel and reason packed together: equal keys are identical presses.
    key: u32,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    index: i64,
    counted: u32,
    burst: bool,
}

/// What the detector remembers of one terminal.
#[derive(Debug, Default)]
struct History {
    /// Recent presses sorted by time.
    recent: Vec<Press>,
    /// Open burst windows sorted by index.
    windows: Vec<Window>,
    /// Counted votes per window, on average over closed windows that were not bursts.
    normal: Option<f64>,
}

fn key(vote: &Vote) -> u32 {
    (u32::from(vote.service) << 16)
        | (u32::from(vote.face.code()) << 8)
        | (u32::from(vote.channel.code()) << 4)
        | u32::from(vote.reason.map_or(0, Reason::code))
}

impl History {
    /// Judges one press of a batch, given the batch's press just before it in time (batches are
    /// judged in time order, so that is its nearest earlier press within the batch).
    fn judge(&mut self, rules: &MisuseRules, press: Press, previous: Option<Press>) -> u8 {
        let at = self.recent.partition_point(|p| p.at_ms <= press.at_ms);
        let remembered = at.checked_sub(1).map(|i| self.recent[i]);
        let before = match (remembered, previous) {
            (Some(a), Some(b)) => Some(if b.at_ms >= a.at_ms { b } else { a }),
            (a, b) => a.or(b),
        };
        let neighbours = [before, self.recent.get(at).copied()];
        let within = |p: &Press, window_ms: i64| p.at_ms.abs_diff(press.at_ms) < window_ms.unsigned_abs();
        if neighbours.iter().flatten().any(|p| within(p, rules.debounce_ms)) {
            Rule::Debounce.id()
        } else if neighbours.iter().flatten().any(|p| p.key == press.key && within(p, rules.repeat_window_ms)) {
            Rule::Repeat.id()
        } else if rules.burst_factor > 0 && self.burst(rules, press.at_ms) {
            Rule::Burst.id()
        } else {
            0
        }
    }

    /// Counts a vote in its window; `true` when the window is already full (a burst).
    fn burst(&mut self, rules: &MisuseRules, at_ms: i64) -> bool {
        let position = self.open_window(at_ms.div_euclid(rules.burst_window_ms));
        let normal = self.normal.unwrap_or(0.0);
        let threshold = f64::from(rules.burst_votes_min).max(f64::from(rules.burst_factor) * normal);
        let window = &mut self.windows[position];
        if f64::from(window.counted) >= threshold {
            window.burst = true;
            return true;
        }
        window.counted += 1;
        false
    }

    /// The position of window `index`, opened if needed; closing the oldest other window when
    /// too many are open.
    fn open_window(&mut self, index: i64) -> usize {
        let mut position = match self.windows.binary_search_by_key(&index, |w| w.index) {
            Ok(position) => return position,
            Err(position) => position,
        };
        self.windows.insert(position, Window { index, counted: 0, burst: false });
        if self.windows.len() > WINDOWS_KEPT {
            // Close the oldest window, unless that is the one just opened (a backlog arriving
            // late): then the next oldest.
            let closing = usize::from(position == 0);
            let closed = self.windows.remove(closing);
            if !closed.burst {
                let counted = f64::from(closed.counted);
                self.normal = Some(self.normal.map_or(counted, |n| n + (counted - n) * NORMAL_WEIGHT));
            }
            if closing < position {
                position -= 1;
            }
        }
        position
    }

    /// Forgets the presses of an earlier attempt at batch `seq` (one that was not stored), so
    /// that its retransmission is not judged against itself.
    fn forget_batch(&mut self, seq: u64) {
        self.recent.retain(|p| p.seq != seq);
    }

    /// Remembers a judged batch (sorted by time): the newest `RECENT_PRESSES` of the presses
    /// remembered and the batch's.
    fn remember(&mut self, batch: impl DoubleEndedIterator<Item = Press>) {
        let mut newest = Vec::with_capacity(RECENT_PRESSES);
        let (mut old, mut new) = (self.recent.iter().copied().rev().peekable(), batch.rev().peekable());
        while newest.len() < RECENT_PRESSES {
            let next = match (old.peek(), new.peek()) {
                (Some(a), Some(b)) if a.at_ms > b.at_ms => old.next(),
                (_, Some(_)) => new.next(),
                (Some(_), None) => old.next(),
                (None, None) => break,
            };
            newest.extend(next);
        }
        newest.reverse();
        self.recent = newest;
    }
}

/// Decides the misuse flags of every terminal's votes.
#[derive(Debug)]
pub struct MisuseDetector {
    rules: MisuseRules,
    shards: Vec<Mutex<HashMap<TerminalId, History>>>,
}

impl MisuseDetector {
    /// A detector applying `rules`, with no terminal's history yet.
    pub fn new(rules: MisuseRules) -> MisuseDetector {
        MisuseDetector { rules, shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    /// The flags of batch `seq` of `terminal`, one per vote in batch order (0: counted, else
    /// the id of the rule), or empty when no vote is flagged — the convention of the log and
    /// the store. Judged in time order, against the terminal's history, which then remembers
    /// them.
    pub fn flags(&self, terminal: TerminalId, seq: u64, votes: impl IntoIterator<Item = Vote>) -> Vec<u8> {
        let mut presses: Vec<(Press, usize)> =
            votes.into_iter().enumerate().map(|(i, v)| (Press { at_ms: v.at_ms, seq, key: key(&v) }, i)).collect();
        presses.sort_unstable_by_key(|(p, i)| (p.at_ms, *i));
        let mut shard = self.shards[terminal as usize % SHARDS].lock().expect("misuse shard lock");
        let history = shard.entry(terminal).or_default();
        history.forget_batch(seq);
        let mut flags = vec![0u8; presses.len()];
        let mut previous = None;
        for &(press, i) in &presses {
            flags[i] = history.judge(&self.rules, press, previous);
            previous = Some(press);
        }
        history.remember(presses.iter().map(|(p, _)| *p));
        if flags.iter().all(|&f| f == 0) { Vec::new() } else { flags }
    }

    /// As `flags`, with the votes whose time is a clock fault (`faulted(at_ms)`) flagged `clock`
    /// and left out of the press rules and the history. Same convention: empty when none is flagged.
    pub fn flags_with_clock(
        &self,
        terminal: TerminalId,
        seq: u64,
        votes: impl IntoIterator<Item = Vote>,
        faulted: impl Fn(i64) -> bool,
    ) -> Vec<u8> {
        let votes: Vec<Vote> = votes.into_iter().collect();
        let clock: Vec<bool> = votes.iter().map(|v| faulted(v.at_ms)).collect();
        if !clock.contains(&true) {
            return self.flags(terminal, seq, votes);
        }
        let judged = self.flags(terminal, seq, votes.iter().zip(&clock).filter(|(_, f)| !**f).map(|(v, _)| *v));
        let mut judged = judged.into_iter();
        clock.iter().map(|&f| if f { Rule::Clock.id() } else { judged.next().unwrap_or(0) }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Channel, Face, IstatCode};

    const T0: i64 = 1_700_000_040_000;
    const _: () = assert!(T0 % 60_000 == 0, "T0 starts a minute");

    fn vote(at_ms: i64, service: u16, face: Face) -> Vote {
        Vote { municipality: IstatCode(1003), terminal: 1, service, face, channel: Channel::Counter, reason: None, at_ms }
    }

    /// Votes `gap_ms` apart from `start_ms`, each different from its neighbours.
    fn spaced(start_ms: i64, gap_ms: i64, count: usize) -> Vec<Vote> {
        (0..count).map(|i| vote(start_ms + i as i64 * gap_ms, (i % 15) as u16 + 1, Face::ALL[i % 3])).collect()
    }

    #[test]
    fn people_at_a_counter_are_never_flagged() {
        let detector = MisuseDetector::default_rules();
        for (seq, chunk) in spaced(T0, 7_000, 200).chunks(10).enumerate() {
            assert!(detector.flags(1, seq as u64 + 1, chunk.iter().copied()).is_empty(), "batch {seq}");
        }
    }

    #[test]
    fn presses_within_the_debounce_window_are_flagged_whichever_arrives_first() {
        let detector = MisuseDetector::default_rules();
        let presses = [vote(T0, 1, Face::Positive), vote(T0 + 300, 2, Face::Negative), vote(T0 + 5_000, 3, Face::Neutral)];
        assert_eq!(detector.flags(1, 1, presses), vec![0, 1, 0]);
        // A later batch arrives first; an earlier one then lands 200 ms before its first vote.
        assert!(detector.flags(1, 3, [vote(T0 + 20_000, 4, Face::Positive)]).is_empty());
        assert_eq!(detector.flags(1, 2, [vote(T0 + 19_800, 5, Face::Positive), vote(T0 + 12_000, 6, Face::Positive)]), vec![1, 0]);
        // Another terminal has its own history.
        assert!(detector.flags(2, 1, [vote(T0 + 100, 1, Face::Positive)]).is_empty());
    }

    #[test]
    fn clock_faults_are_flagged_clock_and_judge_no_press() {
        // Proves: a vote whose time is a clock fault gets id 4 whatever its neighbours, and takes
        // no part in the press rules: a fault 300 ms before a press does not make it `debounce`.
        assert_eq!(Rule::Clock.id(), crate::storage::buffer::CLOCK_FAULT, "the id the store writes at the receive time");
        let detector = MisuseDetector::default_rules();
        let faulted = |at_ms: i64| at_ms < T0 - 86_400_000;
        let batch =
            [vote(T0, 1, Face::Positive), vote(0, 2, Face::Negative), vote(T0 + 5_000, 3, Face::Neutral), vote(300, 4, Face::Positive)];
        assert_eq!(detector.flags_with_clock(1, 1, batch, faulted), vec![0, 4, 0, 4]);
        let near = [vote(T0 - 300, 5, Face::Positive)];
        assert_eq!(detector.flags_with_clock(1, 2, near, faulted), vec![1], "the remembered presses are the plausible ones");
        assert!(detector.flags_with_clock(2, 1, [vote(T0, 1, Face::Positive)], faulted).is_empty(), "nothing flagged: empty");
    }

    #[test]
    fn identical_presses_in_a_row_are_flagged_repeat() {
        let detector = MisuseDetector::default_rules();
        let same = |at_ms| vote(at_ms, 3, Face::Positive);
        assert_eq!(detector.flags(1, 1, [same(T0), same(T0 + 2_000), same(T0 + 4_000), same(T0 + 10_000)]), vec![0, 2, 2, 0]);
        let other = vote(T0 + 12_000, 3, Face::Negative);
        assert!(detector.flags(1, 2, [other]).is_empty(), "another face is another vote");
    }

    #[test]
    fn a_burst_is_counted_up_to_its_threshold_and_flagged_beyond() {
        let rules = MisuseRules { debounce_ms: 0, repeat_window_ms: 0, ..MisuseRules::default() };
        let detector = MisuseDetector::new(rules);
        let flags = detector.flags(1, 1, spaced(T0, 1_200, 50));
        assert_eq!(flags.iter().filter(|&&f| f == 0).count(), 30, "burst_votes_min counted in one minute");
        assert!(flags[30..].iter().all(|&f| f == Rule::Burst.id()), "{flags:?}");
        assert!(detector.flags(1, 2, spaced(T0 + 60_000, 1_200, 20)).is_empty(), "the next minute starts again");
    }

    #[test]
    fn a_busy_terminal_learns_its_normal_rate() {
        let rules = MisuseRules { debounce_ms: 0, repeat_window_ms: 0, burst_votes_min: 10, burst_factor: 2, ..MisuseRules::default() };
        let detector = MisuseDetector::new(rules);
        // Six quiet minutes of 8 votes: closed windows teach a normal of 8 a minute.
        for minute in 0..6 {
            assert!(detector.flags(1, minute as u64 + 1, spaced(T0 + minute * 60_000, 5_000, 8)).is_empty());
        }
        // 15 votes: above the floor of 10, below 2 × 8.
        assert!(detector.flags(1, 10, spaced(T0 + 6 * 60_000, 3_000, 15)).is_empty());
        // 30 votes: 16 counted, the rest flagged.
        let flags = detector.flags(1, 11, spaced(T0 + 7 * 60_000, 1_500, 30));
        assert_eq!(flags.iter().filter(|&&f| f == 0).count(), 16, "{flags:?}");
    }

    #[test]
    fn a_retransmitted_batch_gets_the_same_flags() {
        let detector = MisuseDetector::default_rules();
        let batch = [vote(T0, 1, Face::Positive), vote(T0 + 100, 1, Face::Positive)];
        assert_eq!(detector.flags(1, 1, batch), vec![0, 1]);
        assert_eq!(detector.flags(1, 1, batch), vec![0, 1], "not judged against its own first attempt");
    }

    #[test]
    fn rules_set_to_zero_flag_nothing() {
        let detector = MisuseDetector::new(MisuseRules { debounce_ms: 0, repeat_window_ms: 0, burst_factor: 0, ..MisuseRules::default() });
        assert!(detector.flags(1, 1, (0..100).map(|i| vote(T0 + i, 1, Face::Positive))).is_empty());
    }

    #[test]
    fn memory_per_terminal_stays_bounded() {
        let detector = MisuseDetector::default_rules();
        for seq in 1..200u64 {
            detector.flags(9, seq, spaced(T0 + seq as i64 * 3_600_000, 7_000, 50));
        }
        detector.flags(9, 200, spaced(T0 + 1_000 * 3_600_000, 7_000, 4_096));
        let shard = detector.shards[9].lock().unwrap();
        let history = &shard[&9];
        assert_eq!(history.recent.len(), RECENT_PRESSES);
        assert!(history.recent.capacity() <= RECENT_PRESSES, "a large batch leaves no memory behind");
        assert!(history.windows.len() <= WINDOWS_KEPT);
    }

    #[test]
    fn windows_are_read_from_the_configuration_and_checked() {
        let rules: MisuseRules = toml::from_str("debounce_ms = 500\n").unwrap();
        assert_eq!((rules.debounce_ms, rules.burst_votes_min), (500, 30));
        assert!(toml::from_str::<MisuseRules>("debounce = 5\n").unwrap_err().to_string().contains("debounce"));
        let error = MisuseRules { burst_window_ms: 10, ..MisuseRules::default() }.check().unwrap_err();
        assert_eq!(error.to_string(), "[misuse] burst_window_ms = 10 is not allowed: 1000..=86400000 (a second to a day)");
        assert_eq!(MisuseRules::default().check(), Ok(()));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_two_counted_presses_are_closer_than_the_debounce_window(
                times in prop::collection::vec(0i64..120_000, 1..=RECENT_PRESSES),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
                order in any::<prop::sample::Index>(),
            ) {
                // Random presses, split into batches that arrive in a random order.
                let votes: Vec<Vote> = times.iter().enumerate().map(|(i, t)| vote(T0 + t, (i % 15) as u16 + 1, Face::ALL[i % 3])).collect();
                let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(votes.len() + 1)).collect();
                bounds.extend([0, votes.len()]);
                bounds.sort_unstable();
                bounds.dedup();
                let mut batches: Vec<(u64, &[Vote])> = bounds.windows(2).enumerate().map(|(i, w)| (i as u64 + 1, &votes[w[0]..w[1]])).collect();
                let rotate = order.index(batches.len());
                batches.rotate_left(rotate);
                let detector = MisuseDetector::default_rules();
                let mut counted = Vec::new();
                for (seq, batch) in batches {
                    let flags = detector.flags(1, seq, batch.iter().copied());
                    for (i, vote) in batch.iter().enumerate() {
                        if flags.get(i).copied().unwrap_or(0) == 0 {
                            counted.push(vote.at_ms);
                        }
                    }
                }
                counted.sort_unstable();
                prop_assert!(counted.windows(2).all(|w| w[1] - w[0] >= 1_000), "counted {counted:?}");
                prop_assert!(!counted.is_empty(), "the first press is always counted");
            }
        }
    }

    impl MisuseDetector {
        fn default_rules() -> MisuseDetector {
            MisuseDetector::new(MisuseRules::default())
        }
    }
}
