//! Simulated citizens and terminal fleets, for the demo and `faccia terminal`.
//!
//! Votes follow the shape of the real program: most votes at the counter, the registry office
//! busiest (service shares from `schemas/services.csv`), satisfaction that differs by service
//! and by municipality, and a reason on most red faces. Deterministic for a given seed.
//!
//! Simulated terminals send far faster than people vote, so a fleet compresses time: each
//! terminal's votes are spaced like citizens at a counter (6 to 30 s apart, so that no misuse
//! rule flags them), on a clock that starts two days back and runs ahead of the real one.
//!
//! `ClockFaults` gives simulated terminals wrong clocks (a skew, a reset to 2000-01-01 mid-run,
//! a backlog older than the server's window, no correction by the server's clock), so that load
//! testers can show what the server makes of them (`faccia terminal`, `faccia bench`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::model::{Channel, Face, IstatCode, Reason};
use crate::registry::{Catalog, Credential};
use crate::terminal::client::{DeviceClock, Event, ServerTarget, Terminal, TerminalVote};

/// 2000-01-01 00:00 UTC in ms since the Unix epoch: where a clock whose battery died restarts.
pub const CLOCK_RESET_MS: i64 = 946_684_800_000;

/// Clock faults of simulated terminals, so that load testers can show what happens to the votes
/// of a terminal with a wrong clock (`faccia terminal`, `faccia bench`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockFaults {
    /// The device clock runs this many ms ahead of the real one (negative: behind).
    pub skew_ms: i64,
    /// This long after the terminal starts, its clock jumps to 2000-01-01 00:00 UTC (a dead
    /// clock battery after a power cut) and runs on from there.
    pub reset_after: Option<Duration>,
    /// Before it first connects, the terminal holds a backlog of one batch of votes cast this
    /// many ms before its start (35 days: a terminal offline for five weeks, past `past_age_ms`).
    pub backlog_age_ms: Option<i64>,
    /// Whether the terminal corrects its votes by the server's clock (`Terminal::set_clock_correction`).
    pub correction: bool,
}

impl Default for ClockFaults {
    fn default() -> Self {
        ClockFaults { skew_ms: 0, reset_after: None, backlog_age_ms: None, correction: true }
    }
}

impl ClockFaults {
    /// A device clock with these faults, starting now.
    pub fn device_clock(&self) -> DeviceClock {
        let (start, skew_ms, reset_after) = (std::time::Instant::now(), self.skew_ms, self.reset_after);
        Arc::new(move || {
            let elapsed = start.elapsed();
            match reset_after {
                Some(after) if elapsed >= after => CLOCK_RESET_MS + (elapsed - after).as_millis() as i64,
                _ => crate::clock::now_ms().saturating_add(skew_ms),
            }
        })
    }

    /// Gives `terminal` these faults: its device clock, its correction, and its backlog
    /// (`backlog_votes` votes over the hour `backlog_age_ms` ago, from `citizens`).
    ///
    /// # Errors
    /// When the terminal's outbox cannot take the backlog.
    pub fn apply(
        &self,
        terminal: &mut Terminal,
        citizens: &mut VoteSimulator,
        backlog_votes: usize,
    ) -> Result<(), crate::terminal::client::ClientError> {
        terminal.set_device_clock(self.device_clock());
        terminal.set_clock_correction(self.correction);
        if let Some(age_ms) = self.backlog_age_ms {
            let votes = citizens.votes(terminal.device_now_ms().saturating_sub(age_ms), 3_600_000, backlog_votes.max(1));
            terminal.enqueue(&votes)?;
        }
        Ok(())
    }
}

/// Share of each channel: counter, phone, web.
const CHANNEL_SHARES: [f64; 3] = [0.82, 0.10, 0.08];
/// Share of each reason among red faces that give one: waiting time, service, came back, other.
const REASON_SHARES: [f64; 4] = [0.42, 0.28, 0.18, 0.12];
/// Share of red faces where the citizen skips the reason question.
const REASON_SKIPPED: f64 = 0.10;
/// Time between two citizens at one terminal: stepping up, choosing a service, then a face.
/// Longer than the misuse rules' windows (`ingest::misuse::MisuseRules` defaults: 1 s and 5 s).
const CITIZEN_GAP_MS: std::ops::RangeInclusive<i64> = 6_000..=30_000;
/// How far back a simulated terminal's clock may start (and goes back to when it would pass the
/// real clock): a week, so that the dashboard's weekday × hour map and "this week" fill, well
/// inside `past_age_ms`.
const COMPRESSED_SPAN_MS: i64 = 7 * 24 * 3_600_000;
/// Opening hours of the simulated offices, Italian time: Monday to Saturday, 08:00 to 18:00.
/// Simulated citizens vote only then, as at a real counter.
const OPENING_HOURS: std::ops::Range<u32> = 8..18;

/// The opening hours (Italian time, `OPENING_HOURS`, Monday to Saturday) between `from_ms` and
/// `until_ms`, as [start, end) intervals in ms, oldest first.
fn opening_intervals(from_ms: i64, until_ms: i64) -> Vec<(i64, i64)> {
    use chrono::{Datelike, TimeZone};
    let rome = chrono_tz::Europe::Rome;
    let Some(first) = chrono::DateTime::from_timestamp_millis(from_ms) else { return Vec::new() };
    let mut day = first.with_timezone(&rome).date_naive();
    let mut intervals = Vec::new();
    loop {
        let at =
            |hour: u32| day.and_hms_opt(hour, 0, 0).and_then(|t| rome.from_local_datetime(&t).earliest()).map(|t| t.timestamp_millis());
        let (Some(open), Some(close)) = (at(OPENING_HOURS.start), at(OPENING_HOURS.end)) else { break };
        if open >= until_ms {
            break;
        }
        if day.weekday() != chrono::Weekday::Sun && close > from_ms {
            intervals.push((open.max(from_ms), close.min(until_ms)));
        }
        day = day.succ_opt().expect("a next day");
    }
    intervals
}

fn pick(rng: &mut SmallRng, shares: &[f64]) -> usize {
    let mut x = rng.random::<f64>() * shares.iter().sum::<f64>();
    for (i, share) in shares.iter().enumerate() {
        if x < *share {
            return i;
        }
        x -= share;
    }
    shares.len() - 1
}

/// Index of the first cumulative share above a uniform draw (the shares sum to 1).
fn pick_cumulative(rng: &mut SmallRng, cumulative: &[f64]) -> usize {
    let x = rng.random::<f64>() * cumulative.last().copied().unwrap_or(1.0);
    cumulative.partition_point(|&c| c <= x).min(cumulative.len() - 1)
}

/// A stable pseudo-random number in [0, 1) for a key (satisfaction levels).
fn unit_hash(key: u64) -> f64 {
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The citizens of one municipality, voting. A fast, non-cryptographic generator: the load
/// generator makes hundreds of thousands of votes a second with it.
pub struct VoteSimulator {
    rng: SmallRng,
    shift: f64,
    /// (service id, probability of a positive face before the municipality's shift).
    services: Vec<(u16, f64)>,
    /// Cumulative service shares, for drawing a service.
    cumulative: Vec<f64>,
    /// The simulated terminal clock of `next_votes`.
    cursor_ms: Option<i64>,
}

impl VoteSimulator {
    /// The citizens of `municipality`, drawing from `seed`: the same seed and municipality give the same votes.
    pub fn new(seed: u64, municipality: IstatCode) -> VoteSimulator {
        let catalog = &Catalog::builtin().services;
        let services = catalog.iter().map(|s| (s.id, 0.50 + 0.30 * unit_hash(u64::from(s.id)))).collect();
        let cumulative = catalog
            .iter()
            .scan(0.0, |total, s| {
                *total += s.share;
                Some(*total)
            })
            .collect();
        VoteSimulator {
            rng: SmallRng::seed_from_u64(seed ^ u64::from(municipality.0) << 20),
            shift: 0.30 * unit_hash(u64::from(municipality.0) + 7919) - 0.15,
            services,
            cumulative,
            cursor_ms: None,
        }
    }

    /// One vote at `at_ms`.
    pub(crate) fn vote(&mut self, at_ms: i64) -> TerminalVote {
        let (service, satisfaction) = self.services[pick_cumulative(&mut self.rng, &self.cumulative)];
        let positive = (satisfaction + self.shift).clamp(0.05, 0.95);
        let negative = (1.0 - positive) * 0.45;
        let face = match self.rng.random::<f64>() {
            x if x < positive => Face::Positive,
            x if x < positive + negative => Face::Negative,
            _ => Face::Neutral,
        };
        let reason =
            (face == Face::Negative && !self.rng.random_bool(REASON_SKIPPED)).then(|| Reason::ALL[pick(&mut self.rng, &REASON_SHARES)]);
        let channel = Channel::ALL[pick(&mut self.rng, &CHANNEL_SHARES)];
        TerminalVote { at_ms, service, face, channel, reason }
    }

    /// `count` votes spread over the `span_ms` before `now_ms`, oldest first.
    pub fn votes(&mut self, now_ms: i64, span_ms: i64, count: usize) -> Vec<TerminalVote> {
        let mut times: Vec<i64> = (0..count).map(|_| now_ms - self.rng.random_range(0..span_ms.max(1))).collect();
        times.sort_unstable();
        times.into_iter().map(|t| self.vote(t)).collect()
    }

    /// The next `count` votes of one terminal, each a citizen's: 6 to 30 s apart on the
    /// simulated clock, inside the offices' opening hours (`OPENING_HOURS`) of the
    /// `COMPRESSED_SPAN_MS` before `now_ms`. The clock starts at a random moment of those hours
    /// (so that a fleet covers the whole span, today included), skips to the next opening when
    /// an office closes, and goes back to the span's first opening when it would pass `now_ms`.
    pub fn next_votes(&mut self, now_ms: i64, count: usize) -> Vec<TerminalVote> {
        let open = opening_intervals(now_ms - COMPRESSED_SPAN_MS, now_ms);
        let total: i64 = open.iter().map(|(a, b)| b - a).sum();
        if total <= 0 {
            return self.votes(now_ms, COMPRESSED_SPAN_MS, count);
        }
        let mut cursor_ms = self.cursor_ms.unwrap_or_else(|| {
            let mut offset = self.rng.random_range(0..total);
            for &(a, b) in &open {
                if offset < b - a {
                    return a + offset;
                }
                offset -= b - a;
            }
            open[0].0
        });
        let votes = (0..count)
            .map(|_| {
                cursor_ms += self.rng.random_range(CITIZEN_GAP_MS);
                // Closed: the next opening, or back to the first one past the real clock.
                if !open.iter().any(|&(a, b)| (a..b).contains(&cursor_ms)) {
                    cursor_ms = open.iter().map(|&(a, _)| a).find(|&a| a > cursor_ms).unwrap_or(open[0].0);
                }
                self.vote(cursor_ms)
            })
            .collect();
        self.cursor_ms = Some(cursor_ms);
        votes
    }

    /// The simulator's random generator, so that the rest of a simulation (batch sizes, pauses) follows the same seed.
    pub(crate) fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }
}

/// How a simulated fleet behaves.
#[derive(Debug, Clone)]
pub(crate) struct FleetPlan {
    pub(crate) duration: Duration,
    /// Votes per batch are drawn from 1..=batch_votes_max.
    pub(crate) batch_votes_max: usize,
    /// Mean pause between a terminal's batches.
    pub(crate) think_time: Duration,
    pub(crate) in_flight_max: usize,
    /// Client UDP sockets the terminals share.
    pub(crate) endpoints: usize,
    /// How long to keep delivering the backlog after `duration`.
    pub(crate) drain_timeout: Duration,
    /// How long a batch's reply may take before the terminal drops the connection and moves on.
    pub(crate) reply_timeout: Duration,
    pub(crate) seed: u64,
    /// The terminals' clock faults.
    pub(crate) clock: ClockFaults,
}

impl Default for FleetPlan {
    fn default() -> Self {
        FleetPlan {
            duration: Duration::from_secs(5),
            batch_votes_max: 40,
            think_time: Duration::from_millis(50),
            in_flight_max: 4,
            endpoints: 4,
            drain_timeout: Duration::from_secs(30),
            reply_timeout: crate::terminal::client::ACK_TIMEOUT,
            seed: 1,
            clock: ClockFaults::default(),
        }
    }
}

/// What a fleet saw. Votes count once per batch acknowledged, however often it was resent.
#[derive(Debug, Default)]
pub(crate) struct FleetReport {
    pub(crate) terminals: usize,
    pub(crate) votes_acknowledged: AtomicU64,
    pub(crate) batches_acknowledged: AtomicU64,
    pub(crate) batches_duplicate: AtomicU64,
    pub(crate) votes_rejected: AtomicU64,
    pub(crate) batches_rejected: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) retries: AtomicU64,
    /// Batches still unacknowledged when the drain timed out.
    pub(crate) batches_undelivered: AtomicU64,
    pub(crate) fatal: AtomicU64,
}

impl FleetReport {
    pub(crate) fn votes(&self) -> u64 {
        self.votes_acknowledged.load(Ordering::Relaxed)
    }
}

/// Runs one terminal per credential against `target` for `plan.duration`, then delivers what is
/// left. Returns when every terminal is done.
///
/// # Errors
/// When no client socket can be bound.
pub(crate) async fn run_fleet(credentials: Vec<Credential>, target: ServerTarget, plan: FleetPlan) -> anyhow::Result<Arc<FleetReport>> {
    let endpoints: Vec<crate::terminal::client::ClientEndpoint> =
        (0..plan.endpoints.max(1)).map(|_| crate::terminal::client::client_endpoint(target.addr)).collect::<Result<_, _>>()?;
    let report = Arc::new(FleetReport { terminals: credentials.len(), ..FleetReport::default() });
    let deadline = tokio::time::Instant::now() + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, credential) in credentials.into_iter().enumerate() {
        let mut terminal = Terminal::new(credential, endpoints[i % endpoints.len()].clone(), target.clone(), plan.in_flight_max);
        terminal.set_ack_timeout(plan.reply_timeout);
        let report = Arc::clone(&report);
        let plan = plan.clone();
        tasks.spawn(run_terminal(terminal, plan, deadline, report, i as u64));
    }
    while tasks.join_next().await.is_some() {}
    for endpoint in endpoints {
        crate::terminal::client::close_endpoint(&endpoint);
        endpoint.wait_idle().await;
    }
    Ok(report)
}

async fn run_terminal(mut terminal: Terminal, plan: FleetPlan, deadline: tokio::time::Instant, report: Arc<FleetReport>, index: u64) {
    let mut citizens = VoteSimulator::new(plan.seed.wrapping_add(index), terminal.credential.municipality);
    if let Err(error) = plan.clock.apply(&mut terminal, &mut citizens, plan.batch_votes_max) {
        tracing::error!(error = %crate::error_chain(&error), "terminal outbox");
        return;
    }
    // Stagger the start so that the fleet does not connect in one burst.
    let stagger = citizens.rng().random_range(0..plan.think_time.as_millis().max(1) as u64 * 4);
    tokio::time::sleep(Duration::from_millis(stagger)).await;
    while tokio::time::Instant::now() < deadline {
        if terminal.unacknowledged() < plan.in_flight_max {
            let count = citizens.rng().random_range(1..=plan.batch_votes_max.max(1));
            let votes = citizens.next_votes(terminal.device_now_ms(), count);
            if terminal.enqueue(&votes).is_err() {
                break;
            }
        }
        let think = Duration::from_millis(citizens.rng().random_range(0..=plan.think_time.as_millis() as u64 * 2));
        let pause = tokio::time::sleep(think);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                event = terminal.next_event() => match event {
                    Event::Idle => {
                        (&mut pause).await;
                        break;
                    }
                    event => if !record(&report, event) { return },
                },
            }
        }
    }
    let drain = tokio::time::Instant::now() + plan.drain_timeout;
    while terminal.unacknowledged() > 0 {
        tokio::select! {
            _ = tokio::time::sleep_until(drain) => break,
            event = terminal.next_event() => if !record(&report, event) { return },
        }
    }
    report.batches_undelivered.fetch_add(terminal.unacknowledged() as u64, Ordering::Relaxed);
    terminal.close();
}

/// Counts an event; `false` when the terminal must stop.
fn record(report: &FleetReport, event: Event) -> bool {
    match event {
        Event::Acknowledged { votes, duplicate, .. } => {
            report.votes_acknowledged.fetch_add(votes as u64, Ordering::Relaxed);
            report.batches_acknowledged.fetch_add(1, Ordering::Relaxed);
            if duplicate {
                report.batches_duplicate.fetch_add(1, Ordering::Relaxed);
            }
        }
        Event::Rejected { votes, rejection, seq, .. } => {
            tracing::warn!(seq, %rejection, "batch rejected");
            report.votes_rejected.fetch_add(votes as u64, Ordering::Relaxed);
            report.batches_rejected.fetch_add(1, Ordering::Relaxed);
        }
        Event::Disconnected { .. } => {
            report.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        Event::RetryLater { .. } => {
            report.retries.fetch_add(1, Ordering::Relaxed);
        }
        Event::Fatal(error) => {
            tracing::error!(error = %crate::error_chain(&error), "terminal stopped");
            report.fatal.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        Event::Connected { .. } | Event::Idle => {}
    }
    true
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, TimeZone, Timelike};

    use super::*;

    #[test]
    fn a_fleets_votes_fall_in_opening_hours_over_the_week_up_to_now() {
        // A Tuesday 10:30, Italian time: the span runs back to the Tuesday before.
        let rome = chrono_tz::Europe::Rome;
        let now_ms = rome.with_ymd_and_hms(2026, 12, 1, 10, 30, 0).unwrap().timestamp_millis();
        let mut days = std::collections::BTreeSet::new();
        for terminal in 0..200u64 {
            let mut citizens = VoteSimulator::new(terminal, IstatCode(1001));
            let votes = citizens.next_votes(now_ms, 50);
            for pair in votes.windows(2).filter(|p| p[1].at_ms > p[0].at_ms && p[1].at_ms - p[0].at_ms < 3_600_000) {
                assert!(CITIZEN_GAP_MS.contains(&(pair[1].at_ms - pair[0].at_ms)), "citizens 6 to 30 s apart");
            }
            for vote in votes {
                let local = rome.timestamp_millis_opt(vote.at_ms).unwrap();
                assert!(vote.at_ms <= now_ms && vote.at_ms >= now_ms - COMPRESSED_SPAN_MS, "{local}");
                assert!(OPENING_HOURS.contains(&local.hour()) && local.weekday() != chrono::Weekday::Sun, "{local}");
                days.insert(local.date_naive());
            }
        }
        // Seven opening days back to last Tuesday 10:30 (no Sunday), this morning among them.
        assert_eq!(days.len(), 7, "{days:?}");
        assert!(days.contains(&chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()));
    }

    #[test]
    fn opening_intervals_skip_nights_and_sundays_and_clip_to_the_span() {
        let rome = chrono_tz::Europe::Rome;
        let at = |d, h, m| rome.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap().timestamp_millis();
        // Saturday 12:00 to Monday 09:15: Saturday's afternoon, no Sunday, Monday's first 75 minutes.
        assert_eq!(opening_intervals(at(28, 12, 0), at(30, 9, 15)), vec![(at(28, 12, 0), at(28, 18, 0)), (at(30, 8, 0), at(30, 9, 15))]);
    }
}
