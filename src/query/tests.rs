//! Tests of the SQL context: the index library against hand-computed values over a small real
//! dataset (Parquet files written by the store), and the rule that counts every vote once.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use chrono::TimeZone;

use super::*;
use crate::model::{Channel, Face, IstatCode, Reason, Vote};
use crate::registry;
use crate::storage::buffer::VoteBuffer;
use crate::storage::dataset::Dataset;
use crate::storage::engine::{MemorySnapshot, flush_to_tables, take_over};

pub(crate) const AGLIE: u32 = 1001;
const ALA_DI_STURA: u32 = 1003;

/// Milliseconds of a time in Italy.
pub(crate) fn rome(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    chrono_tz::Europe::Rome.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().timestamp_millis()
}

/// `count` votes with one face (and reason), one second apart from `at_ms`.
#[allow(clippy::too_many_arguments, reason = "a test helper: each argument is a column of the rows it writes")]
pub(crate) fn votes(
    rows: &mut VoteBuffer,
    municipality: u32,
    service: u16,
    face: Face,
    reason: Option<Reason>,
    at_ms: i64,
    count: usize,
    misuse: u8,
) {
    for i in 0..count {
        let vote = Vote {
            municipality: IstatCode(municipality),
            terminal: 1,
            service,
            face,
            channel: Channel::Counter,
            reason,
            at_ms: at_ms + i as i64 * 1000,
        };
        rows.push(&vote, misuse);
    }
}

/// The library's test dataset (every count is used by a hand-computed expectation below):
/// - Agliè, anagrafe (1), Monday 2026-11-16 10:30: 60 positive, 25 neutral, 15 negative (reasons:
///   6 waiting time, 4 service, 3 had to come back, 2 none), plus 5 positive flagged as misuse
///   and 4 positive clock faults (terminal 2, its clock at 2000-01-01 00:00, one second apart);
/// - Agliè, anagrafe, Monday 2026-11-09 10:30 (the week before): 45 positive, 55 neutral;
/// - Ala di Stura, tributi (3), 2026-11-16 10:30: 3 positive;
/// - Agliè, tributi, 2026-11-16 10:30: 10 positive, 40 neutral, 50 negative (reason other).
fn library_rows() -> RecordBatch {
    let mut rows = VoteBuffer::default();
    let now = rome(2026, 11, 16, 10, 30);
    let before = rome(2026, 11, 9, 10, 30);
    votes(&mut rows, AGLIE, 1, Face::Positive, None, now, 60, 0);
    votes(&mut rows, AGLIE, 1, Face::Neutral, None, now, 25, 0);
    for (reason, count) in [(Some(Reason::WaitingTime), 6), (Some(Reason::Service), 4), (Some(Reason::HadToComeBack), 3), (None, 2)] {
        votes(&mut rows, AGLIE, 1, Face::Negative, reason, now, count, 0);
    }
    votes(&mut rows, AGLIE, 1, Face::Positive, None, now, 5, 7);
    let y2k = rome(2000, 1, 1, 1, 0);
    for i in 0..4 {
        let vote = Vote {
            municipality: IstatCode(AGLIE),
            terminal: 2,
            service: 1,
            face: Face::Positive,
            channel: Channel::Counter,
            reason: None,
            at_ms: y2k + i * 1000,
        };
        rows.push_at(&vote, crate::storage::buffer::CLOCK_FAULT, now, Some(vote.at_ms));
    }
    votes(&mut rows, AGLIE, 1, Face::Positive, None, before, 45, 0);
    votes(&mut rows, AGLIE, 1, Face::Neutral, None, before, 55, 0);
    votes(&mut rows, ALA_DI_STURA, 3, Face::Positive, None, now, 3, 0);
    votes(&mut rows, AGLIE, 3, Face::Positive, None, now, 10, 0);
    votes(&mut rows, AGLIE, 3, Face::Neutral, None, now, 40, 0);
    votes(&mut rows, AGLIE, 3, Face::Negative, Some(Reason::Other), now, 50, 0);
    rows.finish()
}

pub(crate) async fn library_context() -> (tempfile::TempDir, SessionContext) {
    let dir = tempfile::tempdir().unwrap();
    let dataset = Dataset::local(dir.path(), "n1").unwrap();
    let mut tables = take_over(&dataset, 0).await.unwrap();
    flush_to_tables(&dataset, &mut tables, &[library_rows()], 1, 10).await.unwrap();
    crate::storage::checkpoint::Checkpoint { watermark: 10, windows: vec![] }.write(dir.path()).unwrap();
    std::fs::write(dir.path().join("node-id"), "n1\n").unwrap();
    let ctx = context(dir.path()).await.unwrap();
    (dir, ctx)
}

fn f64_at(batches: &[RecordBatch], column: &str, row: usize) -> Option<f64> {
    let batch = arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap();
    let array = arrow::compute::cast(batch.column_by_name(column).unwrap(), &arrow::datatypes::DataType::Float64).unwrap();
    let array = array.as_primitive::<Float64Type>();
    array.is_valid(row).then(|| array.value(row))
}

async fn one(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    let batches = run(ctx, sql).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "{sql}");
    batches
}

#[tokio::test]
async fn functions_and_tables_answer_sql() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path()).await.unwrap();
    let batches = run(&ctx, "SELECT csat(60, 100) AS c, net_score(60, 15, 100) AS n, round(wilson_lower(3, 3), 2) AS w").await.unwrap();
    let row = &batches[0];
    assert_eq!(row.column(0).as_primitive::<Float64Type>().value(0), 60.0);
    assert_eq!(row.column(1).as_primitive::<Float64Type>().value(0), 45.0);
    assert_eq!(row.column(2).as_primitive::<Float64Type>().value(0), 43.85);
    let batches = run(&ctx, "SELECT count(*) FROM municipalities WHERE eligible").await.unwrap();
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 5490);
    let batches = run(&ctx, "SELECT count(*) FROM votes").await.unwrap();
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 0);
    for view in views::definitions() {
        let name = view.split_whitespace().nth(2).unwrap();
        let rows: usize = run(&ctx, &format!("SELECT * FROM {name}")).await.unwrap().iter().map(|b| b.num_rows()).sum();
        // On an empty dataset only the registry views have rows.
        assert!(rows == 0 || name.contains("coverage"), "{name}: {rows} rows");
    }
}

#[tokio::test]
async fn index_views_match_hand_computed_values() {
    let (_dir, ctx) = library_context().await;
    // Anagrafe: 105 positive, 80 neutral, 15 negative of 200 counted (5 flagged left out).
    let b = one(&ctx, "SELECT * FROM service_index WHERE service = 1").await;
    assert_eq!(f64_at(&b, "votes", 0), Some(200.0));
    assert_eq!(f64_at(&b, "csat_pct", 0), Some(52.5));
    assert_eq!(f64_at(&b, "net_score", 0), Some(45.0));
    assert_eq!(f64_at(&b, "happy_index", 0), Some(72.5));
    // Wilson 105/200: centre (0.525 + 0.009604)/1.019207 = 0.524532, half-width
    // 1.959964/1.019207 · √(0.001247 + 0.000024) = 0.068562 → [45.6 %, 59.3 %].
    assert_eq!(f64_at(&b, "wilson_low_pct", 0), Some(45.6));
    assert_eq!(f64_at(&b, "wilson_high_pct", 0), Some(59.3));
    // The aggregate functions agree with the scalar ones over the same rows.
    let b = one(
        &ctx,
        "SELECT csat_of(face) AS c, net_score_of(face) AS n, happy_index_of(face) AS h, wilson_lower_of(face) AS w \
                      FROM counted_votes WHERE service = 1",
    )
    .await;
    assert_eq!(f64_at(&b, "c", 0), Some(52.5));
    assert_eq!(f64_at(&b, "n", 0), Some(45.0));
    assert_eq!(f64_at(&b, "h", 0), Some(72.5));
    assert!((f64_at(&b, "w", 0).unwrap() - 45.597).abs() < 0.001);
    // Piemonte: all 303 counted votes; the province and municipality views add up.
    let b = one(&ctx, "SELECT * FROM region_index").await;
    assert_eq!(f64_at(&b, "votes", 0), Some(303.0));
    // 118 positive, 120 neutral, 65 negative: CSAT 38.9, net 17.5, happy 58.7.
    assert_eq!(f64_at(&b, "csat_pct", 0), Some(38.9));
    assert_eq!(f64_at(&b, "net_score", 0), Some(17.5));
    assert_eq!(f64_at(&b, "happy_index", 0), Some(58.7));
    let b = one(&ctx, "SELECT * FROM municipality_index WHERE municipality = 1003").await;
    assert_eq!(f64_at(&b, "csat_pct", 0), Some(100.0));
    let b = one(&ctx, "SELECT sum(votes) AS v FROM province_index").await;
    assert_eq!(f64_at(&b, "v", 0), Some(303.0));
    let b = one(&ctx, "SELECT * FROM channel_index").await;
    assert_eq!(f64_at(&b, "votes", 0), Some(303.0));
}

#[tokio::test]
async fn time_views_use_italian_time() {
    let (_dir, ctx) = library_context().await;
    // Every vote was cast on a Monday at 10:30 in Italy (09:30 UTC).
    let b = one(&ctx, "SELECT weekday, hour, votes FROM heat_map").await;
    assert_eq!((f64_at(&b, "weekday", 0), f64_at(&b, "hour", 0), f64_at(&b, "votes", 0)), (Some(1.0), Some(10.0), Some(303.0)));
    let b = one(&ctx, "SELECT votes, csat_pct FROM service_index_weekly WHERE service = 1 AND week = DATE '2026-11-09'").await;
    assert_eq!((f64_at(&b, "votes", 0), f64_at(&b, "csat_pct", 0)), (Some(100.0), Some(45.0)));
    let b = one(&ctx, "SELECT votes FROM service_index_hourly WHERE service = 3 AND date_part('hour', hour) = 10").await;
    assert_eq!(f64_at(&b, "votes", 0), Some(103.0));
    let b = one(&ctx, "SELECT count(*) AS days FROM service_index_daily").await;
    assert_eq!(f64_at(&b, "days", 0), Some(3.0));
    let b = one(&ctx, "SELECT votes FROM service_index_monthly WHERE service = 1").await;
    assert_eq!(f64_at(&b, "votes", 0), Some(200.0));
    // Week of 16 November against the week before: 60/100 against 45/100 positive.
    // Pooled 0.525, se = √(0.525·0.475·(1/100 + 1/100)) = 0.070622, z = 0.15/0.070622 = 2.12.
    let b = one(&ctx, "SELECT * FROM service_trend_weekly WHERE service = 1 AND period = DATE '2026-11-16'").await;
    assert_eq!(f64_at(&b, "change_pts", 0), Some(15.0));
    assert_eq!(f64_at(&b, "z", 0), Some(2.12));
    let significant = b[0].column_by_name("significant").unwrap().as_boolean().value(0);
    assert!(significant);
    let b = one(&ctx, "SELECT previous_votes FROM service_trend_weekly WHERE service = 1 AND period = DATE '2026-11-09'").await;
    assert_eq!(f64_at(&b, "previous_votes", 0), None);
}

#[tokio::test]
async fn rankings_and_reasons_match_hand_computed_values() {
    let (_dir, ctx) = library_context().await;
    // Groups: Agliè×anagrafe 105/200, Ala di Stura×tributi 3/3, Agliè×tributi 10/100.
    // Prior μ = 118/303 = 0.389439; rates 0.525, 1.0, 0.1 have var_pop 0.135139; binomial noise
    // μ(1−μ)·mean(1/T) = 0.237776 · 0.116111 = 0.027608; strength m = 0.237776/0.107530 − 1 = 1.211.
    // Shrunk: (105 + 0.4717)/201.211 = 52.4 %, (3 + 0.4717)/4.211 = 82.4 %, (10 + 0.4717)/101.211 = 10.3 %.
    let b = run(&ctx, "SELECT municipality, service, eb_score_pct, prior_votes, rank_wilson, rank_eb FROM municipality_service_ranking ORDER BY municipality, service").await.unwrap();
    let eb: Vec<Option<f64>> = (0..3).map(|i| f64_at(&b, "eb_score_pct", i)).collect();
    assert_eq!(eb, vec![Some(52.4), Some(10.3), Some(82.4)]);
    assert_eq!(f64_at(&b, "prior_votes", 0), Some(1.2));
    // 3 votes are under the 30-vote minimum: no rank.
    let ranks: Vec<Option<f64>> = (0..3).map(|i| f64_at(&b, "rank_wilson", i)).collect();
    assert_eq!(ranks, vec![Some(1.0), Some(2.0), None]);
    // Anagrafe's 15 negative votes: 6 waiting (40 %), 4 service (26.7 %), 3 came back (20 %), 2 no reason (13.3 %).
    let b = run(&ctx, "SELECT reason_name, share_pct FROM reason_shares WHERE service = 1 ORDER BY negative_votes DESC").await.unwrap();
    let shares: Vec<Option<f64>> = (0..4).map(|i| f64_at(&b, "share_pct", i)).collect();
    assert_eq!(shares, vec![Some(40.0), Some(26.7), Some(20.0), Some(13.3)]);
    assert_eq!(b[0].column_by_name("reason_name").unwrap().as_string::<i32>().value(0), "waiting_time");
    // Flagged votes are countable on request.
    let b = one(&ctx, "SELECT flagged_votes, rule FROM misuse_summary WHERE rule = 7").await;
    assert_eq!((f64_at(&b, "flagged_votes", 0), f64_at(&b, "rule", 0)), (Some(5.0), Some(7.0)));
}

#[tokio::test]
async fn clock_faults_stay_out_of_every_index_and_clock_summary_counts_them() {
    // Proves: votes stored as clock faults (misuse 4, at the receive time, the terminal's time
    // in terminal_ts) are in `votes`, not in `counted_votes` nor any index, and `clock_summary`
    // gives per terminal how many, when they arrived, and the typical offset of its clock.
    let (_dir, ctx) = library_context().await;
    let b = one(&ctx, "SELECT count(*) AS n FROM votes WHERE misuse = 4 AND terminal_ts IS NOT NULL").await;
    assert_eq!(f64_at(&b, "n", 0), Some(4.0));
    let b = one(&ctx, "SELECT count(*) AS n FROM counted_votes WHERE terminal = 2").await;
    assert_eq!(f64_at(&b, "n", 0), Some(0.0));
    // Anagrafe's index is the 100 counted votes of the week, as without the faults.
    let b = one(&ctx, "SELECT votes FROM service_index_daily WHERE service = 1 AND day = DATE '2026-11-16'").await;
    assert_eq!(f64_at(&b, "votes", 0), Some(100.0));
    let b = one(&ctx, "SELECT * FROM clock_summary").await;
    assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!((f64_at(&b, "terminal", 0), f64_at(&b, "faulted_votes", 0)), (Some(2.0), Some(4.0)));
    let offset = rome(2000, 1, 1, 1, 0) + 1_500 - rome(2026, 11, 16, 10, 30);
    assert_eq!(f64_at(&b, "typical_offset_ms", 0), Some(offset as f64));
    assert!(f64_at(&b, "typical_offset_days", 0).unwrap() < -9_800.0);
}

#[tokio::test]
async fn coverage_counts_eligible_administrations_and_their_bonus() {
    let (dir, ctx) = library_context().await;
    registry::add_terminals(dir.path(), IstatCode(AGLIE), 1, "").unwrap();
    let revoked = registry::add_terminals(dir.path(), IstatCode(ALA_DI_STURA), 1, "").unwrap();
    registry::revoke_terminal(dir.path(), revoked[0].id).unwrap();
    registry::set_administration(dir.path(), IstatCode(ALA_DI_STURA), Some(false), Some(false)).unwrap();
    let eligible_piemonte = registry::Catalog::builtin().eligible().filter(|m| m.region_code == 1).count() as f64;
    // Terminals and attributes are read at each scan: no new context needed.
    let b = one(&ctx, "SELECT * FROM coverage_by_region WHERE region_code = 1").await;
    assert_eq!(f64_at(&b, "eligible", 0), Some(eligible_piemonte));
    assert_eq!(f64_at(&b, "with_terminals", 0), Some(1.0));
    assert_eq!(f64_at(&b, "with_votes", 0), Some(2.0));
    // Agliè has the only active terminal; its attributes are not recorded: 400 €.
    assert_eq!(f64_at(&b, "bonus_eur", 0), Some(400.0));
    // Ala di Stura lacks both signature and PEC: 400 + 50 + 10 = 460 €.
    let b = one(&ctx, "SELECT bonus_eur, terminals_active, votes FROM administration_coverage WHERE municipality = 1003").await;
    assert_eq!(
        (f64_at(&b, "bonus_eur", 0), f64_at(&b, "terminals_active", 0), f64_at(&b, "votes", 0)),
        (Some(460.0), Some(0.0), Some(3.0))
    );
    let b = one(&ctx, "SELECT with_votes, eligible FROM coverage_by_region_month WHERE region_code = 1").await;
    assert_eq!(f64_at(&b, "with_votes", 0), Some(2.0));
    // Rome (58091) is not eligible: no bonus.
    let b = one(&ctx, "SELECT bonus_eur FROM administration_coverage WHERE municipality = 58091").await;
    assert_eq!(f64_at(&b, "bonus_eur", 0), None);
}

#[tokio::test]
async fn every_view_with_municipalities_offers_the_six_digit_istat_code_beside_the_number() {
    // Proves: `istat_code(municipality)` is the six-digit text a spreadsheet keeps (NULL for a
    // number no code has), and every view and registry table that holds `municipality` has
    // `istat_code` right after it.
    let (dir, ctx) = library_context().await;
    registry::add_terminals(dir.path(), IstatCode(AGLIE), 1, "").unwrap();
    registry::add_union(dir.path(), "U", "Unione", &[IstatCode(AGLIE), IstatCode(ALA_DI_STURA)], None, None).unwrap();
    let b = one(&ctx, "SELECT istat_code(1001) AS a, istat_code(CAST(58091 AS INT UNSIGNED)) AS r, istat_code(1234567) AS big, istat_code(0) AS zero, istat_code(NULL) AS n").await;
    let text = |i: usize| b[0].column(i).as_string::<i32>().is_valid(0).then(|| b[0].column(i).as_string::<i32>().value(0).to_string());
    assert_eq!((0..5).map(text).collect::<Vec<_>>(), vec![Some("001001".into()), Some("058091".into()), None, None, None]);
    let mut with_municipality = Vec::new();
    let names = run(&ctx, "SELECT table_name FROM information_schema.columns WHERE column_name = 'municipality' ORDER BY table_name")
        .await
        .unwrap();
    for batch in &names {
        let column = batch.column(0).as_string::<i32>();
        with_municipality.extend((0..batch.num_rows()).map(|i| column.value(i).to_string()));
    }
    // The stored tables keep the number alone (their schema is the files'); `istat_code()` works on them.
    let stored = ["votes", "municipality_service_counts"];
    for name in with_municipality.iter().filter(|n| !stored.contains(&n.as_str())) {
        if name == "municipality_successors" || name == "alerts" {
            // Empty until an edition is imported (`it::registry`) or an alert fires
            // (`it::alerts`): the schema only.
            let schema = ctx.table(name.as_str()).await.unwrap().schema().as_arrow().clone();
            assert_eq!(schema.field(schema.index_of("municipality").unwrap() + 1).name(), "istat_code");
            continue;
        }
        let b = run(&ctx, &format!("SELECT * FROM {name} WHERE municipality = {AGLIE} LIMIT 1")).await.unwrap();
        let schema = b.first().map(|b| b.schema()).expect(name);
        let at = schema.index_of("municipality").unwrap();
        assert_eq!(schema.field(at + 1).name(), "istat_code", "{name}: istat_code beside municipality");
        assert_eq!(b[0].column(at + 1).as_string::<i32>().value(0), "001001", "{name}");
    }
    for name in [
        "counted_votes",
        "municipality_index",
        "municipality_service_ranking",
        "misuse_summary",
        "terminals",
        "administrations",
        "administration_coverage",
    ] {
        assert!(with_municipality.iter().any(|n| n == name), "{name} has municipality: {with_municipality:?}");
    }
    // counted_votes is still votes otherwise, column for column.
    let votes = run(&ctx, "SELECT * FROM votes LIMIT 1").await.unwrap()[0].schema();
    let counted = run(&ctx, "SELECT * FROM counted_votes LIMIT 1").await.unwrap()[0].schema();
    let mut names: Vec<&String> = counted.fields().iter().map(|f| f.name()).filter(|n| *n != "istat_code").collect();
    let mut expected: Vec<&String> = votes.fields().iter().map(|f| f.name()).collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
}

/// A fixed memory snapshot of node n1, as the engine would hand it over at one instant.
#[derive(Debug)]
pub(crate) struct Fixed(pub(crate) MemorySnapshot);

#[async_trait::async_trait]
impl votes::Fresh for Fixed {
    async fn snapshot(
        &self,
        table: Table,
        handle: &mut Option<deltalake::DeltaTable>,
    ) -> DfResult<(Option<deltalake::table::state::DeltaTableState>, MemorySnapshot)> {
        Ok((Some(votes::matching_snapshot(&self.0, table, handle, "n1").await?), self.0.clone()))
    }
}

#[tokio::test]
async fn a_flush_in_progress_is_counted_once() {
    // Proves: a flush committed to the table before its rows leave memory is not counted
    // twice (the scan reads the version of the memory's watermark), and other nodes' commits
    // are always counted.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node-id"), "n1\n").unwrap();
    let at = rome(2026, 11, 16, 10, 0);
    let rows = |count: usize| {
        let mut buffer = VoteBuffer::default();
        votes(&mut buffer, AGLIE, 1, Face::Positive, None, at, count, 0);
        buffer.finish()
    };
    let n1 = Dataset::local(dir.path(), "n1").unwrap();
    let n2 = Dataset::local(dir.path(), "n2").unwrap();
    let mut tables = take_over(&n1, 0).await.unwrap(); // version 0
    flush_to_tables(&n2, &mut tables, &[rows(40)], 1, 1).await.unwrap(); // version 1
    flush_to_tables(&n1, &mut tables, &[rows(10)], 1, 2).await.unwrap(); // version 2
    flush_to_tables(&n1, &mut tables, &[rows(20)], 3, 4).await.unwrap(); // version 3, not yet out of memory
    let count = |watermark: u64, version: u64, generations: Vec<(u64, Vec<RecordBatch>)>| {
        let dir = dir.path().to_path_buf();
        async move {
            let fresh = Arc::new(Fixed(MemorySnapshot { watermark, versions: [version; 3], generations }));
            let ctx = build(&dir, fresh, &QueryLimits::default(), Runs::Here).await.unwrap();
            let b = run(&ctx, "SELECT count(*) FROM votes WHERE date = DATE '2026-11-16'").await.unwrap();
            let votes = b[0].column(0).as_primitive::<Int64Type>().value(0);
            let b = run(&ctx, "SELECT CAST(sum(votes) AS BIGINT) FROM vote_counts WHERE date = DATE '2026-11-16'").await.unwrap();
            assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), votes, "the counts agree with the votes");
            votes
        }
    };
    // Before the memory moved: the 20 rows come from memory, version 2 of the table.
    assert_eq!(count(2, 2, vec![(4, vec![rows(20)])]).await, 70);
    // After: from the table only.
    assert_eq!(count(4, 3, vec![]).await, 70);
    // Rows still in memory with no commit yet.
    assert_eq!(count(4, 3, vec![(6, vec![rows(5)])]).await, 75);
    // A generation at or below the watermark is in the table already.
    assert_eq!(count(4, 3, vec![(4, vec![rows(20)]), (6, vec![rows(5)])]).await, 75);
}

#[tokio::test]
async fn a_union_is_one_administration_with_its_own_terminals_index_and_bonus() {
    // Proves: terminals registered to a union count for the union (its coverage, its bonus,
    // once, its index), not for the member comune they stand in; the 50 % rule at exactly half.
    let (dir, ctx) = library_context().await;
    let ivrea = IstatCode(1125); // 23,592 inhabitants: the union is exactly half small
    registry::add_union(dir.path(), "UM-1", "Unione di prova", &[IstatCode(AGLIE), ivrea], Some(false), None).unwrap();
    registry::add_union_terminals(dir.path(), "UM-1", IstatCode(AGLIE), 1, "sportello unico").unwrap(); // terminal 1: every test vote
    registry::add_terminals(dir.path(), IstatCode(AGLIE), 1, "anagrafe").unwrap(); // terminal 2: Agliè's own
    let error = registry::add_union_terminals(dir.path(), "UM-1", IstatCode(ALA_DI_STURA), 1, "").unwrap_err().to_string();
    assert!(error.contains("comune 001003 is not a member of union UM-1"), "{error}");

    let row = |sql: &'static str| {
        let ctx = ctx.clone();
        async move { arrow::util::pretty::pretty_format_batches(&run(&ctx, sql).await.unwrap()).unwrap().to_string() }
    };
    let coverage = row("SELECT members, small_members, eligible, bonus_eur, terminals_active, votes FROM union_coverage").await;
    assert!(coverage.contains("| 2       | 1             | true     | 450       | 1                | 303   |"), "{coverage}");
    // Agliè keeps its own terminal only: one bonus per administration.
    let aglie = row("SELECT terminals_active FROM administration_coverage WHERE municipality = 1001").await;
    assert!(aglie.contains("| 1                |"), "{aglie}");
    // A second terminal of the union earns nothing more.
    registry::add_union_terminals(dir.path(), "UM-1", ivrea, 1, "").unwrap();
    let coverage = row("SELECT bonus_eur, terminals_active FROM union_coverage").await;
    assert!(coverage.contains("| 450       | 2                |"), "{coverage}");
    // Piemonte: Agliè's own terminal (400 €, attributes not recorded) and the union (450 €, no
    // digital signature), once each.
    let region =
        row("SELECT with_terminals, unions_eligible, unions_with_terminals, bonus_eur FROM coverage_by_region WHERE region_code = 1").await;
    assert!(region.contains("| 1              | 1               | 1                     | 850       |"), "{region}");
    let index = row("SELECT service, votes, positive, csat_pct FROM union_index WHERE union_code = 'UM-1' ORDER BY service").await;
    assert!(index.contains("| 1       | 200   | 105      | 52.5     |"), "{index}");
    let members = row("SELECT count(*) AS n FROM union_members m JOIN municipalities USING (municipality) WHERE union_code = 'UM-1'").await;
    assert!(members.contains("| 2 |"), "{members}");
}
