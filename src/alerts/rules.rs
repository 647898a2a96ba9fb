//! The alert rules, their settings (`[alerts.<rule>]`), and the SQL that finds which subjects
//! meet each rule at a given time. Every rule reads `votes` (and `terminals`) as an analyst does,
//! filtered on `date` and `ts` so that an evaluation opens only the days it needs.
//!
//! - `red_share`: a municipality × service whose counted votes (misuse = 0) in the last
//!   `window_minutes` are at least `votes_min` and at least `share_pct_min` % red (face = −1).
//! - `terminal_silent`: an active terminal with no vote at all (flagged or not) in the last
//!   `silent_minutes`, while every Italian weekday × hour slot that span touches is one of its
//!   **usual slots**: a slot in which it had counted votes on at least `weeks_min` different days
//!   of the last `history_weeks` weeks. A terminal without such history never fires.
//! - `misuse_burst`: a terminal with at least `votes_min` votes flagged by a misuse rule
//!   (misuse 1–3; clock faults are not misuse) in the last `window_minutes`.
//! - `clock_fault`: a terminal with at least `votes_min` votes stored as clock faults
//!   (misuse = 4, `ts` then being the receive time) in the last `window_minutes`.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use chrono::{Datelike, TimeZone, Timelike};
use datafusion::error::Result as DfResult;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::limits::LimitError;

/// A rule, by the name it has in the configuration, the `alerts` table and the webhook's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Too many red faces for a municipality × service.
    RedShare,
    /// A terminal silent inside its usual opening hours.
    TerminalSilent,
    /// A burst of misuse-flagged votes from a terminal.
    MisuseBurst,
    /// Votes of a terminal stored as clock faults.
    ClockFault,
}

impl Rule {
    /// Every rule, in the order they are evaluated.
    pub const ALL: [Rule; 4] = [Rule::RedShare, Rule::TerminalSilent, Rule::MisuseBurst, Rule::ClockFault];

    /// The rule's name: `red_share`, `terminal_silent`, `misuse_burst`, `clock_fault`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::RedShare => "red_share",
            Rule::TerminalSilent => "terminal_silent",
            Rule::MisuseBurst => "misuse_burst",
            Rule::ClockFault => "clock_fault",
        }
    }
}

/// `[alerts.red_share]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedShare {
    /// Evaluate this rule.
    pub enabled: bool,
    /// The span of votes looked at, in minutes back from now; 15.
    pub window_minutes: u32,
    /// The share of red faces, in percent, at or above which the alert fires; 50.
    pub share_pct_min: f64,
    /// The fewest counted votes in the window for the share to mean anything; 4.
    pub votes_min: u32,
}

impl Default for RedShare {
    fn default() -> Self {
        RedShare { enabled: true, window_minutes: 15, share_pct_min: 50.0, votes_min: 4 }
    }
}

/// `[alerts.terminal_silent]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TerminalSilent {
    /// Evaluate this rule.
    pub enabled: bool,
    /// How long without a vote, in minutes, inside the usual slots; 120.
    pub silent_minutes: u32,
    /// How many weeks of history teach the usual slots; 4.
    pub history_weeks: u32,
    /// On how many different days of that history a slot must have had votes to be usual; 2.
    pub weeks_min: u32,
}

impl Default for TerminalSilent {
    fn default() -> Self {
        TerminalSilent { enabled: true, silent_minutes: 120, history_weeks: 4, weeks_min: 2 }
    }
}

/// `[alerts.misuse_burst]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MisuseBurst {
    /// Evaluate this rule.
    pub enabled: bool,
    /// The span of votes looked at, in minutes back from now; 15.
    pub window_minutes: u32,
    /// The fewest misuse-flagged votes (misuse 1–3) of one terminal in the window that fire; 10.
    pub votes_min: u32,
}

impl Default for MisuseBurst {
    fn default() -> Self {
        MisuseBurst { enabled: true, window_minutes: 15, votes_min: 10 }
    }
}

/// `[alerts.clock_fault]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockFault {
    /// Evaluate this rule.
    pub enabled: bool,
    /// The span of receive times looked at, in minutes back from now; 60 (a faulted terminal
    /// votes rarely enough that 15 minutes would resolve and fire it again and again).
    pub window_minutes: u32,
    /// The fewest clock-fault votes of one terminal in the window that fire; 1.
    pub votes_min: u32,
}

impl Default for ClockFault {
    fn default() -> Self {
        ClockFault { enabled: true, window_minutes: 60, votes_min: 1 }
    }
}

/// The longest window a rule may look at, in minutes (a day: alerts are about now).
const WINDOW_MINUTES_MAX: u32 = 1_440;

fn check_window(table: &'static str, field: &'static str, minutes: u32) -> Result<(), LimitError> {
    if (1..=WINDOW_MINUTES_MAX).contains(&minutes) {
        return Ok(());
    }
    Err(LimitError { table, field, value: minutes.to_string(), allowed: "1..=1440 (a minute to a day)".into() })
}

fn check_votes(table: &'static str, votes_min: u32) -> Result<(), LimitError> {
    if (1..=1_000_000).contains(&votes_min) {
        return Ok(());
    }
    Err(LimitError { table, field: "votes_min", value: votes_min.to_string(), allowed: "1..=1000000".into() })
}

impl RedShare {
    pub(crate) fn check(&self) -> Result<(), LimitError> {
        check_window("alerts.red_share", "window_minutes", self.window_minutes)?;
        check_votes("alerts.red_share", self.votes_min)?;
        if !(self.share_pct_min > 0.0 && self.share_pct_min <= 100.0) {
            let value = self.share_pct_min.to_string();
            return Err(LimitError { table: "alerts.red_share", field: "share_pct_min", value, allowed: "above 0, at most 100".into() });
        }
        Ok(())
    }
}

impl TerminalSilent {
    pub(crate) fn check(&self) -> Result<(), LimitError> {
        check_window("alerts.terminal_silent", "silent_minutes", self.silent_minutes)?;
        if !(1..=12).contains(&self.history_weeks) {
            let value = self.history_weeks.to_string();
            return Err(LimitError { table: "alerts.terminal_silent", field: "history_weeks", value, allowed: "1..=12".into() });
        }
        if !(1..=self.history_weeks).contains(&self.weeks_min) {
            let value = self.weeks_min.to_string();
            return Err(LimitError { table: "alerts.terminal_silent", field: "weeks_min", value, allowed: "1..=history_weeks".into() });
        }
        Ok(())
    }
}

impl MisuseBurst {
    pub(crate) fn check(&self) -> Result<(), LimitError> {
        check_window("alerts.misuse_burst", "window_minutes", self.window_minutes)?;
        check_votes("alerts.misuse_burst", self.votes_min)
    }
}

impl ClockFault {
    pub(crate) fn check(&self) -> Result<(), LimitError> {
        check_window("alerts.clock_fault", "window_minutes", self.window_minutes)?;
        check_votes("alerts.clock_fault", self.votes_min)
    }
}

/// A subject meeting a rule at the time of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The rule met.
    pub rule: Rule,
    /// The comune (ISTAT code as a number): of the votes, or the terminal's.
    pub municipality: Option<u32>,
    /// The service, for `red_share`.
    pub service: Option<u16>,
    /// The terminal, for the terminal rules.
    pub terminal: Option<u32>,
    /// What was measured: the red share in %, a count of votes; none for `terminal_silent`.
    pub value: Option<f64>,
    /// The rule's threshold in the same unit (for `terminal_silent`, `silent_minutes`).
    pub threshold: f64,
    /// One English sentence saying what happened.
    pub message: String,
}

/// The subject key of an alert: its rule and what it is about (`red_share/1001/3`,
/// `clock_fault/t12`). One alert per key fires at a time.
pub fn key(rule: Rule, municipality: Option<u32>, service: Option<u16>, terminal: Option<u32>) -> String {
    match (terminal, service) {
        (Some(t), _) => format!("{}/t{t}", rule.name()),
        (None, Some(s)) => format!("{}/{}/{s}", rule.name(), municipality.unwrap_or(0)),
        (None, None) => format!("{}/{}", rule.name(), municipality.unwrap_or(0)),
    }
}

impl Condition {
    /// This condition's subject key (`key`).
    pub fn key(&self) -> String {
        key(self.rule, self.municipality, self.service, self.terminal)
    }
}

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// A SQL timestamp literal of the type of `ts` for `ms` since the epoch (no time-zone shift:
/// the integer is the instant).
fn at(ms: i64) -> String {
    format!("arrow_cast({ms}, 'Timestamp(ms, \"Europe/Rome\")')")
}

/// The Italian day of `ms`, as `DATE 'YYYY-MM-DD'`, to prune partitions.
fn day(ms: i64) -> String {
    let local = chrono_tz::Europe::Rome.timestamp_millis_opt(ms).single().map(|t| t.date_naive());
    format!("DATE '{}'", local.map_or_else(|| "1970-01-01".to_string(), |d| d.to_string()))
}

/// The votes received in `(now − minutes, now]`: the `WHERE` clause.
fn window(now_ms: i64, minutes: u32) -> String {
    let start = now_ms - i64::from(minutes) * MINUTE_MS;
    format!("date >= {} AND ts > {} AND ts <= {}", day(start), at(start), at(now_ms))
}

async fn rows(ctx: &SessionContext, sql: &str) -> DfResult<Vec<RecordBatch>> {
    ctx.sql(sql).await?.collect().await
}

fn ints(batch: &RecordBatch, column: usize) -> Vec<Option<i64>> {
    let array = batch.column(column).as_primitive::<Int64Type>();
    (0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i))).collect()
}

fn floats(batch: &RecordBatch, column: usize) -> Vec<Option<f64>> {
    let array = batch.column(column).as_primitive::<Float64Type>();
    (0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i))).collect()
}

/// `red_share` at `now_ms`.
///
/// # Errors
/// DataFusion's, when the query fails.
pub async fn red_share(ctx: &SessionContext, rule: &RedShare, now_ms: i64) -> DfResult<Vec<Condition>> {
    let red = "sum(CASE WHEN face = -1 THEN 1 ELSE 0 END)";
    let sql = format!(
        "SELECT CAST(municipality AS BIGINT) AS m, CAST(service AS BIGINT) AS s, count(*) AS n, CAST(100.0 * {red} / count(*) AS DOUBLE) AS share \
         FROM votes WHERE misuse = 0 AND {} GROUP BY municipality, service \
         HAVING count(*) >= {} AND 100.0 * {red} / count(*) >= {} ORDER BY m, s",
        window(now_ms, rule.window_minutes),
        rule.votes_min,
        rule.share_pct_min
    );
    let mut found = Vec::new();
    for batch in rows(ctx, &sql).await? {
        let (m, s, n, share) = (ints(&batch, 0), ints(&batch, 1), ints(&batch, 2), floats(&batch, 3));
        for i in 0..batch.num_rows() {
            let (municipality, service) = (m[i].map(|x| x as u32), s[i].map(|x| x as u16));
            let share = share[i].unwrap_or(0.0);
            found.push(Condition {
                rule: Rule::RedShare,
                municipality,
                service,
                terminal: None,
                value: Some(share),
                threshold: rule.share_pct_min,
                message: format!(
                    "{share:.1} % red faces in the last {} minutes ({} votes) for service {} in comune {:06}.",
                    rule.window_minutes,
                    n[i].unwrap_or(0),
                    service.unwrap_or(0),
                    municipality.unwrap_or(0)
                ),
            });
        }
    }
    Ok(found)
}

/// Which votes a terminal rule counts.
#[derive(Debug, Clone, Copy)]
enum Flagged {
    Misuse,
    ClockFault,
}

/// `misuse_burst` or `clock_fault` at `now_ms`: terminals with at least `votes_min` such votes
/// in the last `window_minutes`.
async fn flagged(ctx: &SessionContext, kind: Flagged, window_minutes: u32, votes_min: u32, now_ms: i64) -> DfResult<Vec<Condition>> {
    let (rule, filter, what) = match kind {
        Flagged::Misuse => (Rule::MisuseBurst, "misuse <> 0 AND misuse <> 4", "misuse-flagged votes"),
        Flagged::ClockFault => (Rule::ClockFault, "misuse = 4", "votes stored as clock faults (the terminal's clock is wrong)"),
    };
    let sql = format!(
        "SELECT CAST(terminal AS BIGINT) AS t, CAST(max(municipality) AS BIGINT) AS m, count(*) AS n FROM votes \
         WHERE {filter} AND {} GROUP BY terminal HAVING count(*) >= {votes_min} ORDER BY t",
        window(now_ms, window_minutes)
    );
    let mut found = Vec::new();
    for batch in rows(ctx, &sql).await? {
        let (t, m, n) = (ints(&batch, 0), ints(&batch, 1), ints(&batch, 2));
        for i in 0..batch.num_rows() {
            let (terminal, municipality, count) = (t[i].map(|x| x as u32), m[i].map(|x| x as u32), n[i].unwrap_or(0));
            found.push(Condition {
                rule,
                municipality,
                service: None,
                terminal,
                value: Some(count as f64),
                threshold: f64::from(votes_min),
                message: format!(
                    "Terminal {} in comune {:06} sent {count} {what} in the last {window_minutes} minutes.",
                    terminal.unwrap_or(0),
                    municipality.unwrap_or(0)
                ),
            });
        }
    }
    Ok(found)
}

/// `misuse_burst` at `now_ms`.
///
/// # Errors
/// DataFusion's, when the query fails.
pub async fn misuse_burst(ctx: &SessionContext, rule: &MisuseBurst, now_ms: i64) -> DfResult<Vec<Condition>> {
    flagged(ctx, Flagged::Misuse, rule.window_minutes, rule.votes_min, now_ms).await
}

/// `clock_fault` at `now_ms`.
///
/// # Errors
/// DataFusion's, when the query fails.
pub async fn clock_fault(ctx: &SessionContext, rule: &ClockFault, now_ms: i64) -> DfResult<Vec<Condition>> {
    flagged(ctx, Flagged::ClockFault, rule.window_minutes, rule.votes_min, now_ms).await
}

/// An Italian weekday (1 = Monday … 7, ISO) and hour (0–23): the unit of a terminal's usual hours.
pub type Slot = (u8, u8);

/// The Italian weekday × hour slot of `ms`.
pub fn slot(ms: i64) -> Slot {
    let local = chrono_tz::Europe::Rome.timestamp_millis_opt(ms).single().expect("every instant has one local time");
    (local.weekday().number_from_monday() as u8, local.hour() as u8)
}

/// The slots the span `[start_ms, end_ms]` touches: the slot of its start, of every whole hour
/// after it, and of its end.
pub fn slots_touched(start_ms: i64, end_ms: i64) -> BTreeSet<Slot> {
    let hour_ms = 3_600_000;
    let mut slots: BTreeSet<Slot> = (0..).map(|h| start_ms + h * hour_ms).take_while(|t| *t < end_ms).map(slot).collect();
    slots.insert(slot(end_ms));
    slots
}

/// Each terminal's usual slots at `now_ms`: those with counted votes on at least `weeks_min`
/// days of the last `history_weeks` weeks.
///
/// # Errors
/// DataFusion's, when the query fails.
pub async fn usual_slots(ctx: &SessionContext, rule: &TerminalSilent, now_ms: i64) -> DfResult<BTreeMap<u32, BTreeSet<Slot>>> {
    let start = now_ms - i64::from(rule.history_weeks) * 7 * DAY_MS;
    let sql = format!(
        "SELECT CAST(terminal AS BIGINT), CAST(local_weekday(ts) AS BIGINT), CAST(local_hour(ts) AS BIGINT) FROM votes \
         WHERE misuse = 0 AND date >= {} AND ts > {} AND ts <= {} \
         GROUP BY terminal, local_weekday(ts), local_hour(ts) HAVING count(DISTINCT date) >= {}",
        day(start),
        at(start),
        at(now_ms),
        rule.weeks_min
    );
    let mut usual: BTreeMap<u32, BTreeSet<Slot>> = BTreeMap::new();
    for batch in rows(ctx, &sql).await? {
        let (t, w, h) = (ints(&batch, 0), ints(&batch, 1), ints(&batch, 2));
        for i in 0..batch.num_rows() {
            if let (Some(t), Some(w), Some(h)) = (t[i], w[i], h[i]) {
                usual.entry(t as u32).or_default().insert((w as u8, h as u8));
            }
        }
    }
    Ok(usual)
}

/// `terminal_silent` at `now_ms`, given the terminals' usual slots (`usual_slots`, which an
/// evaluator may keep for an hour: a month of history does not change by the minute).
///
/// # Errors
/// DataFusion's, when a query fails.
pub async fn terminal_silent(
    ctx: &SessionContext,
    rule: &TerminalSilent,
    usual: &BTreeMap<u32, BTreeSet<Slot>>,
    now_ms: i64,
) -> DfResult<Vec<Condition>> {
    let start = now_ms - i64::from(rule.silent_minutes) * MINUTE_MS;
    let span = slots_touched(start, now_ms);
    let candidates: BTreeSet<u32> = usual.iter().filter(|(_, slots)| span.is_subset(slots)).map(|(t, _)| *t).collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let heard = format!("SELECT DISTINCT CAST(terminal AS BIGINT) FROM votes WHERE {}", window(now_ms, rule.silent_minutes));
    let mut voted = BTreeSet::new();
    for batch in rows(ctx, &heard).await? {
        voted.extend(ints(&batch, 0).into_iter().flatten().map(|t| t as u32));
    }
    let mut found = Vec::new();
    for batch in rows(ctx, "SELECT CAST(terminal AS BIGINT), CAST(municipality AS BIGINT) FROM terminals WHERE active").await? {
        let (t, m) = (ints(&batch, 0), ints(&batch, 1));
        for i in 0..batch.num_rows() {
            let Some(terminal) = t[i].map(|x| x as u32) else { continue };
            if !candidates.contains(&terminal) || voted.contains(&terminal) {
                continue;
            }
            let municipality = m[i].map(|x| x as u32);
            found.push(Condition {
                rule: Rule::TerminalSilent,
                municipality,
                service: None,
                terminal: Some(terminal),
                value: None,
                threshold: f64::from(rule.silent_minutes),
                message: format!(
                    "Terminal {terminal} in comune {:06} has had no vote for {} minutes inside its usual opening hours.",
                    municipality.unwrap_or(0),
                    rule.silent_minutes
                ),
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_italian_and_a_span_touches_each_hour() {
        // 2026-11-30 is a Monday; 09:30 UTC is 10:30 in Rome (CET, UTC+1).
        let monday_0930_utc = chrono::Utc.with_ymd_and_hms(2026, 11, 30, 9, 30, 0).unwrap().timestamp_millis();
        assert_eq!(slot(monday_0930_utc), (1, 10));
        let two_hours = slots_touched(monday_0930_utc - 2 * 3_600_000, monday_0930_utc);
        assert_eq!(two_hours.into_iter().collect::<Vec<_>>(), vec![(1, 8), (1, 9), (1, 10)]);
        // Sunday 23:30 in Rome (22:30 UTC) to Monday 00:30: two weekdays.
        let sunday_2230_utc = chrono::Utc.with_ymd_and_hms(2026, 11, 29, 22, 30, 0).unwrap().timestamp_millis();
        assert_eq!(slots_touched(sunday_2230_utc, sunday_2230_utc + 3_600_000).into_iter().collect::<Vec<_>>(), vec![(1, 0), (7, 23)]);
    }

    #[test]
    fn keys_name_the_rule_and_the_subject() {
        assert_eq!(key(Rule::RedShare, Some(1001), Some(3), None), "red_share/1001/3");
        assert_eq!(key(Rule::ClockFault, Some(1001), None, Some(12)), "clock_fault/t12");
    }
}
