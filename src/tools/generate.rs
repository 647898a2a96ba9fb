//! `faccia generate`: a realistic synthetic dataset, written through the server's own Parquet
//! writer (`storage::dataset::Dataset::write_flush`), for measuring SQL at scale.
//!
//! Shape: the real small municipalities (`registry`), with skew — a municipality's share of the
//! votes grows with its population and varies with its adoption (log-normal-like), and 1 to 3
//! terminals each; weekdays busier than Saturday, hardly anything on Sunday; office hours at the
//! counter, evenings on the web; faces, services, channels and reasons from `terminal::simulate`; a small
//! share flagged as misuse. Each day is written as `flushes_per_day` flushes, as a server that
//! flushes every 24 h / N would leave it: flush k holds the votes of the k-th slice of the day
//! in Italy (a slice without votes writes nothing), and each flush is one commit per table
//! carrying the flush's watermark, as the server's. One flush a day by default. The generator
//! owns the tables while it runs: it writes each flush's commits without delta-rs's snapshot
//! refresh (`storage::table::append_owned`; a version another writer took is an error) and
//! brings its handles up to date once a day, ending the day on a checkpoint. Once a day is
//! written its files are compacted, as the server's maintenance does once a day is closed,
//! with the removals dated when the day closed (unless the plan keeps the files, to study the
//! small files themselves); on a directory the generator created, the merged-away files are vacuumed at the
//! end without the grace period, since no reader can have started on them, and the log is cut
//! to the last two days of commits (`storage::table::LOG_RETENTION`), as a server's would be.
//! Deterministic for a given seed (whatever the number of flushes, the same votes).
//!
//! Files are named after the node `generated`, so a server started later on the same directory
//! (another node id) counts them as committed data of another node.

use std::path::Path;

use chrono::{Datelike, NaiveDate, TimeZone};
use deltalake::protocol::checkpoints::{cleanup_expired_logs_for, create_checkpoint};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{IstatCode, Vote};
use crate::registry::Catalog;
use crate::storage::StoreError;
use crate::storage::buffer::VoteBuffer;
use crate::storage::compaction::{CompactScope, Grace, compact, vacuum};
use crate::storage::dataset::Dataset;
use crate::storage::engine::take_over;
use crate::storage::location::Location;
use crate::storage::table::{self, Table, Tables};
use crate::terminal::simulate::VoteSimulator;

/// The node name in generated file names.
pub(crate) const NODE: &str = "generated";
/// Share of votes flagged as misuse (repeated presses), rule 1.
const MISUSE_SHARE: f64 = 0.002;
/// Relative volume per weekday, Monday first.
const WEEKDAY_WEIGHTS: [f64; 7] = [1.15, 1.1, 1.1, 1.05, 1.0, 0.35, 0.05];
/// Relative volume per hour of the day at the counter and on the phone (offices).
const OFFICE_HOURS: [f64; 24] =
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.8, 1.6, 1.9, 1.8, 1.5, 0.7, 0.3, 0.7, 0.9, 0.6, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0];
/// Relative volume per hour of the day on the web.
const WEB_HOURS: [f64; 24] =
    [0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 0.9, 0.9, 1.0, 1.0, 1.0, 1.0, 1.1, 1.3, 1.4, 1.2, 0.8, 0.3];

/// What to generate.
#[derive(Debug, Clone)]
pub(crate) struct GeneratePlan {
    /// Votes to generate in total, spread over the days by weekday.
    pub(crate) votes: u64,
    pub(crate) days: u32,
    /// The last day (in Italy) of the dataset.
    pub(crate) end: NaiveDate,
    /// Seed of the random generator: the same plan and seed give the same dataset.
    pub(crate) seed: u64,
    /// Flushes per day, 1..=`FLUSHES_PER_DAY_MAX`: each day's votes are written as this many
    /// flushes of consecutive time slices (the small files a server flushing on its age
    /// threshold leaves).
    pub(crate) flushes_per_day: u32,
    /// Compact each day once written (as the server does once the day is closed); false keeps
    /// the `flushes_per_day` files of every day.
    pub(crate) compact: bool,
}

/// Days of log a server keeps (`storage::table::LOG_RETENTION`), past which its maintenance
/// deletes the commits below a checkpoint.
const LOG_RETENTION_DAYS: usize = 2;

/// Most flushes a day: one a minute.
pub(crate) const FLUSHES_PER_DAY_MAX: u32 = 1440;

/// What was written.
#[derive(Debug, Default, Clone)]
pub(crate) struct GenerateReport {
    /// Votes written.
    pub(crate) votes: u64,
    /// Files in the votes table (after compaction, when the plan compacts).
    pub(crate) files: usize,
    /// Size of the files of the three tables, in bytes.
    pub(crate) bytes: u64,
}

struct Site {
    code: IstatCode,
    first_terminal: u32,
    terminals: u32,
    simulator: VoteSimulator,
}

/// Writes the dataset into `data_dir`, calling `progress` after each day.
///
/// # Errors
/// Encoding or storage errors.
pub(crate) async fn generate(
    data_dir: &Path,
    plan: &GeneratePlan,
    mut progress: impl FnMut(NaiveDate, &GenerateReport),
) -> Result<GenerateReport, StoreError> {
    let dataset = Dataset::new(Location::of_data_dir(data_dir)?, NODE)?;
    let mut fresh = true;
    for t in Table::ALL {
        fresh &= !table::exists(&dataset.location, t).await?;
    }
    let mut tables = take_over(&dataset, 0).await?;
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let (mut sites, weights) = sites(&mut rng, plan.seed);
    let pick_site = WeightedIndex::new(&weights).expect("positive weights");
    let office = WeightedIndex::new(OFFICE_HOURS).expect("positive weights");
    let web = WeightedIndex::new(WEB_HOURS).expect("positive weights");
    let first = plan.end - chrono::Days::new(u64::from(plan.days.max(1) - 1));
    let days: Vec<NaiveDate> = first.iter_days().take(plan.days.max(1) as usize).collect();
    let total_weight: f64 = days.iter().map(|d| WEEKDAY_WEIGHTS[d.weekday().num_days_from_monday() as usize]).sum();
    let mut report = GenerateReport::default();
    // Each table's version at the end of each day.
    let mut day_versions: Vec<[u64; 3]> = Vec::with_capacity(days.len());
    for (index, day) in days.iter().enumerate() {
        let weight = WEEKDAY_WEIGHTS[day.weekday().num_days_from_monday() as usize];
        let count = (plan.votes as f64 * weight / total_weight).round() as u64;
        let count = if index + 1 == days.len() { plan.votes.saturating_sub(report.votes) } else { count };
        let flushes = plan.flushes_per_day.clamp(1, FLUSHES_PER_DAY_MAX);
        let mut slices: Vec<VoteBuffer> = (0..flushes).map(|_| VoteBuffer::with_capacity(count as usize / flushes as usize)).collect();
        let midnight = midnight_ms(*day);
        // The day in Italy is 23 or 25 hours long when the clocks change.
        let day_ms = midnight_ms(*day + chrono::Days::new(1)) - midnight;
        for _ in 0..count {
            let site = &mut sites[pick_site.sample(&mut rng)];
            let vote = site.simulator.vote(0);
            let hours = if vote.channel == crate::model::Channel::Web { &web } else { &office };
            let hour = hours.sample(&mut rng) as i64;
            let at_ms = local_ms(midnight, hour) + rng.random_range(0..3_600_000);
            let vote = Vote {
                municipality: site.code,
                terminal: site.first_terminal + rng.random_range(0..site.terminals),
                service: vote.service,
                face: vote.face,
                channel: vote.channel,
                reason: vote.reason,
                at_ms,
            };
            let slice = ((at_ms - midnight).clamp(0, day_ms - 1) * i64::from(flushes) / day_ms) as usize;
            slices[slice].push(&vote, u8::from(rng.random_bool(MISUSE_SHARE)));
        }
        // Each flush covers the next log range of the day, as a server's flushes do, and is one
        // commit per table; the handles' snapshots are brought up to date once the day is written.
        let mut lsn_first = index as u64 * (1 << 32) + 1;
        let mut versions = tables.versions();
        for mut rows in slices.into_iter().filter(|rows| !rows.is_empty()) {
            let lsn_last = lsn_first + rows.len() as u64 - 1;
            let files = dataset.write_flush(&[rows.finish()], lsn_first, lsn_last, &Table::ALL).await?;
            for table in Table::ALL {
                let i = table.index();
                versions[i] += 1;
                table::append_owned(&tables.tables[i], versions[i], NODE, lsn_last, &files.adds[i]).await?;
            }
            lsn_first = lsn_last + 1;
        }
        if plan.compact {
            let closed_ms = midnight + day_ms;
            compact(&dataset, &mut tables, CompactScope::Generated { day: *day, closed_ms }, |_, _| {}).await?;
        }
        // A checkpoint closes every day: readers and the next day's commits start from it.
        for delta in &mut tables.tables {
            delta.update_state().await?;
            create_checkpoint(delta, None).await?;
        }
        (report.files, report.bytes) = active_files(&tables)?;
        report.votes += count;
        day_versions.push(tables.versions());
        // Written in minutes, the year's commits all look recent to Delta's log retention;
        // keep the log a server would, the last LOG_RETENTION_DAYS days of commits above a
        // checkpoint (on a directory this run created).
        if let Some(keep) = day_versions.len().checked_sub(LOG_RETENTION_DAYS + 1).map(|day| day_versions[day])
            && fresh
        {
            let cutoff = chrono::Utc::now().timestamp_millis() + 1;
            for table in Table::ALL {
                let log_store = tables.tables[table.index()].log_store();
                cleanup_expired_logs_for(keep[table.index()], log_store.as_ref(), cutoff, None).await?;
            }
        }
        progress(*day, &report);
    }
    if fresh && plan.compact {
        vacuum(&mut tables, Grace::None).await?;
    }
    Ok(report)
}

/// The votes table's files and the bytes of the three tables' files (their active files: not
/// those compaction removed and vacuum has yet to delete).
fn active_files(tables: &Tables) -> Result<(usize, u64), StoreError> {
    let (mut files, mut bytes) = (0, 0);
    for table in Table::ALL {
        for file in tables.tables[table.index()].snapshot()?.log_data().iter() {
            files += usize::from(table == Table::Votes);
            bytes += file.size() as u64;
        }
    }
    Ok((files, bytes))
}

/// The small municipalities with their terminals and their weights (share of votes).
fn sites(rng: &mut StdRng, seed: u64) -> (Vec<Site>, Vec<f64>) {
    let mut sites = Vec::new();
    let mut weights = Vec::new();
    let mut next_terminal = 1;
    for m in Catalog::builtin().eligible() {
        let terminals = rng.random_range(1..=3);
        // Adoption varies a lot between municipalities: a heavy-tailed factor around 1.
        let adoption = (rng.random::<f64>() * 3.0 - 1.5).exp();
        weights.push((f64::from(m.population) + 200.0).powf(0.8) * adoption);
        sites.push(Site { code: m.code, first_terminal: next_terminal, terminals, simulator: VoteSimulator::new(seed, m.code) });
        next_terminal += terminals;
    }
    (sites, weights)
}

/// Milliseconds of midnight of `day` in Italy.
fn midnight_ms(day: NaiveDate) -> i64 {
    let tz: chrono_tz::Tz = crate::storage::buffer::TIME_ZONE.parse().expect("valid time zone");
    tz.from_local_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight")).earliest().expect("midnight exists in Italy").timestamp_millis()
}

/// The start of local hour `hour` of the day beginning at `midnight` (a day with a clock change
/// is an hour longer or shorter; votes then shift by that hour, which is harmless here).
fn local_ms(midnight: i64, hour: i64) -> i64 {
    midnight + hour * 3_600_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn generated_days_are_readable_and_counted_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let plan = GeneratePlan {
            votes: 20_000,
            days: 3,
            end: NaiveDate::from_ymd_opt(2026, 11, 18).unwrap(),
            seed: 7,
            flushes_per_day: 1,
            compact: true,
        };
        let report = generate(dir.path(), &plan, |_, _| {}).await.unwrap();
        assert_eq!((report.votes, report.files), (20_000, 3));
        let ctx = crate::query::context(dir.path()).await.unwrap();
        let batches = crate::query::run(&ctx, "SELECT count(*), count(DISTINCT date), min(date) FROM votes").await.unwrap();
        let counts = arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
        assert!(counts.contains("| 20000 ") && counts.contains("| 3 ") && counts.contains("2026-11-16"), "{counts}");
        // Office hours: nothing at the counter at 3 a.m. in Italy.
        let night = crate::query::run(&ctx, "SELECT count(*) FROM votes WHERE channel = 0 AND date_part('hour', ts) = 3").await.unwrap();
        assert_eq!(night[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0), 0);
    }

    #[tokio::test]
    async fn flushes_per_day_split_each_day_into_consecutive_slices_of_the_same_votes() {
        // Proves: with N flushes a day the same votes are written (same counts by day and hour),
        // as up to N files a day, each holding one slice of the day and its own log range.
        let (one, many, report) = once_and_as(|plan| GeneratePlan { flushes_per_day: 24, compact: false, ..plan }).await;
        assert_eq!(report.votes, 20_000);
        assert!(report.files > 2 * 12 && report.files <= 2 * 24, "up to 24 files a day, one per busy hour: {}", report.files);
        let by_hour =
            "SELECT date, date_part('hour', ts AT TIME ZONE 'Europe/Rome') AS h, count(*) AS n FROM votes GROUP BY 1, 2 ORDER BY 1, 2";
        assert_eq!(answer(one.path(), by_hour).await, answer(many.path(), by_hour).await, "the same votes by day and hour");
        let store = object_store::local::LocalFileSystem::new_with_prefix(many.path()).unwrap();
        let parts = crate::storage::dataset::list_parts(&store).await.unwrap();
        assert_eq!(parts.len(), report.files);
        let mut ranges: Vec<(u64, u64)> = parts.iter().map(|p| (p.lsn_first, p.lsn_last)).collect();
        ranges.sort_unstable();
        assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "log ranges are disjoint: {ranges:?}");
        for part in &parts {
            // Every vote of a file lies in one hour of the day in Italy (the 24 slices of a
            // 24-hour day).
            let file = std::fs::File::open(many.path().join(part.path.as_ref())).unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
            let mut clock = crate::storage::buffer::LocalClock::default();
            let mut hours = std::collections::BTreeSet::new();
            for batch in reader {
                let batch = batch.unwrap();
                let ts = arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampMillisecondType>(
                    batch.column(crate::storage::buffer::col::TS),
                );
                hours.extend(ts.values().iter().map(|&t| clock.local_ms(t).rem_euclid(86_400_000) / 3_600_000));
            }
            assert_eq!(hours.len(), 1, "{} holds one hour's votes: {hours:?}", part.path);
        }
    }

    #[tokio::test]
    async fn a_compacting_generator_leaves_one_file_per_day_and_table_and_the_same_votes() {
        // Proves: generating with N flushes a day and compaction leaves what the server's
        // maintenance would (one file per day in each table, nothing removed left on disk in a
        // directory the generator created) with the votes of one flush a day.
        let (one, compacted, report) = once_and_as(|plan| GeneratePlan { flushes_per_day: 24, ..plan }).await;
        assert_eq!((report.votes, report.files), (20_000, 2));
        let on_disk = |dir: &Path, table: Table| {
            walk_parquet(&dir.join(table.dir())).iter().map(|p| std::fs::metadata(p).unwrap().len()).collect::<Vec<u64>>()
        };
        let sizes: Vec<u64> = Table::ALL.iter().flat_map(|t| on_disk(compacted.path(), *t)).collect();
        assert_eq!(sizes.len(), 6, "one file per day and table on disk");
        assert_eq!(sizes.iter().sum::<u64>(), report.bytes, "the report's bytes are the tables' files");
        let sql = "SELECT date, municipality, service, face, count(*) AS n FROM votes GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4";
        assert_eq!(answer(one.path(), sql).await, answer(compacted.path(), sql).await);
    }

    #[tokio::test]
    async fn a_generated_log_is_a_servers_without_its_expired_tombstones() {
        // Proves: the generator's commits (written without delta-rs's refresh) carry the node's
        // watermark as the server's do, each day ends on a checkpoint, and the files merged away
        // by compaction, removed in simulated time days ago, leave no tombstone in it (a reader
        // of a freshly generated year does not replay them); a version another writer took is
        // refused, not overwritten.
        let dir = tempfile::tempdir().unwrap();
        let end = NaiveDate::from_ymd_opt(2026, 11, 18).unwrap();
        let plan = GeneratePlan { votes: 5_000, days: 2, end, seed: 3, flushes_per_day: 12, compact: true };
        generate(dir.path(), &plan, |_, _| {}).await.unwrap();
        for t in Table::ALL {
            let delta = table::open(&Location::local(dir.path()).unwrap(), t).await.unwrap();
            let watermark = table::applied(&delta, NODE).await.unwrap();
            assert_eq!(watermark >> 32, 1, "{}: the second day's last log sequence number, {watermark:#x}", t.dir());
            let log = dir.path().join(t.dir()).join("_delta_log");
            let hint: serde_json::Value = serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
            let version = hint["version"].as_u64().unwrap();
            for after in version + 1..=delta.version().unwrap() {
                let commit = std::fs::read_to_string(log.join(format!("{after:020}.json"))).unwrap();
                assert!(commit.contains("\"operation\":\"VACUUM"), "{}: the last day ends on a checkpoint, then vacuum: {commit}", t.dir());
            }
            let checkpoint = std::fs::File::open(log.join(format!("{version:020}.checkpoint.parquet"))).unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(checkpoint).unwrap().build().unwrap();
            let (mut adds, mut removes) = (0, 0);
            for batch in reader {
                let batch = batch.unwrap();
                adds += batch.column_by_name("add").unwrap().logical_nulls().map_or(batch.num_rows(), |n| n.len() - n.null_count());
                removes +=
                    batch.column_by_name("remove").map_or(0, |c| c.logical_nulls().map_or(batch.num_rows(), |n| n.len() - n.null_count()));
            }
            assert_eq!((adds, removes), (2, 0), "{}: one file a day, no tombstone", t.dir());
            let taken = table::append_owned(&delta, version, NODE, watermark + 1, &[]).await;
            assert!(matches!(taken, Err(StoreError::Commit(ref m)) if m.contains("another writer")), "{taken:?}");
        }
    }

    /// Two days of 20,000 votes written once as one flush a day, compacted, and once with the
    /// plan `other` makes of that: both directories, and the second run's report.
    async fn once_and_as(other: impl FnOnce(GeneratePlan) -> GeneratePlan) -> (tempfile::TempDir, tempfile::TempDir, GenerateReport) {
        let end = NaiveDate::from_ymd_opt(2026, 11, 18).unwrap();
        let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plan = GeneratePlan { votes: 20_000, days: 2, end, seed: 7, flushes_per_day: 1, compact: true };
        generate(one.path(), &plan, |_, _| {}).await.unwrap();
        let report = generate(many.path(), &other(plan), |_, _| {}).await.unwrap();
        (one, many, report)
    }

    /// `sql`'s answer over the data directory `dir`, as a text table.
    async fn answer(dir: &Path, sql: &str) -> String {
        let ctx = crate::query::context(dir).await.unwrap();
        arrow::util::pretty::pretty_format_batches(&crate::query::run(&ctx, sql).await.unwrap()).unwrap().to_string()
    }

    /// Every data file under `dir` (not the log's checkpoints).
    fn walk_parquet(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("_delta_log") {
                continue;
            }
            if path.is_dir() {
                found.extend(walk_parquet(&path));
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found.push(path);
            }
        }
        found
    }
}
