//! Compaction, retention and vacuum: what keeps the tables fast and bounded for years.
//!
//! - **Compaction** merges the files of one day of a table into one file. The vote files of a
//!   day are each sorted (municipality, service, time, terminal), so they are merged in order
//!   by a streaming k-way merge (DataFusion's `SortPreservingMergeExec`: memory bounded by one
//!   batch per file, whatever the day's size) and the merged file keeps the sort order, the
//!   encodings and the statistics of a flushed one; a rollup's files are added up by key.
//!   The commit removes the day's files and adds the merged one, both with `dataChange =
//!   false` (Delta's OPTIMIZE): readers see one or the other, never both, and appends carry on
//!   (delta-rs's conflict checker lets blind appends through). delta-rs's own `optimize` is not
//!   used: it rewrites files in the table's Delta types (signed, microsecond timestamps) and
//!   without our sort order.
//! - **Retention** removes whole days older than a cutoff from all three tables, one commit per
//!   table (`remove` actions, `dataChange = true`, Delta's DELETE by partition predicate):
//!   nothing is rewritten.
//! - **Vacuum** deletes the files no commit references any more once they have been removed
//!   for longer than the grace period (`table::DELETED_FILE_RETENTION`), so queries that
//!   started before a removal finish reading; full mode also deletes orphans (files of a
//!   compaction interrupted before its commit).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use chrono::NaiveDate;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::prelude::{SessionContext, col};
use deltalake::kernel::{Action, Add, LogicalFileView, Remove};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use parquet::arrow::ArrowWriter;
use serde_json::json;

use crate::storage::StoreError;
use crate::storage::dataset::{Dataset, rollup_properties, table_relative};
use crate::storage::location::Location;
use crate::storage::parquet::{compacted_properties, votes_ordering};
use crate::storage::table::{self, Table, Tables, add_action};

/// Attempts at a compaction commit while other commits (flushes) keep landing first.
const COMMIT_ATTEMPTS_MAX: usize = 8;
/// Rows per batch read from each file during a merge: the merge holds about one batch per
/// file (144 files a day at a 10-minute flush: 144 × 8192 rows, about 20 MB).
const MERGE_BATCH_ROWS: usize = 8192;

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CompactionReport {
    /// (table, day) pairs merged.
    pub days: usize,
    /// Files removed from the tables (they stay on disk until vacuumed).
    pub files_removed: usize,
    /// Merged files added.
    pub files_added: usize,
    /// Bytes of the removed files.
    pub bytes_before: u64,
    /// Bytes of the merged files.
    pub bytes_after: u64,
    /// Days skipped because another commit removed one of their files first.
    pub conflicts: usize,
}

/// Which days a compaction takes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CompactScope {
    /// Every day that needs it: a closed day with two files or more, today's (and a later
    /// day's) with `today_files_max` or more (the background task, and `faccia compact`).
    Due {
        /// Today in Italy.
        today: NaiveDate,
        /// `StorageLimits::today_files_max`.
        today_files_max: usize,
    },
    /// One day, whatever its number of files above one (`faccia compact --date`).
    Day(NaiveDate),
    /// Every day of the vote table, even a day of one file, rewritten with today's encodings
    /// (`faccia compact --rewrite`): files written before a change of encoding (byte-stream
    /// split timestamps, which DuckDB 1.4 and Spark 3.x cannot read) become readable by all.
    Rewrite,
    /// One day of `faccia generate`, which writes days in the past, compacted as the server's
    /// maintenance would have just after the day closed: the merged-away files' `remove`s
    /// carry `closed_ms` (milliseconds since the epoch) as their deletion time, so the
    /// checkpoints written after it drop them once the grace has passed in simulated time, not
    /// an hour after the generator ran.
    Generated {
        /// The day.
        day: NaiveDate,
        /// When it closed: the next midnight in Italy.
        closed_ms: i64,
    },
}

impl CompactScope {
    fn takes(self, date: NaiveDate, files: usize) -> bool {
        match self {
            CompactScope::Due { today, today_files_max } => files >= if date >= today { today_files_max.max(2) } else { 2 },
            CompactScope::Day(day) | CompactScope::Generated { day, .. } => date == day && files >= 2,
            CompactScope::Rewrite => files >= 1,
        }
    }

    /// The fewest files of a day this scope merges.
    fn files_min(self) -> usize {
        if matches!(self, CompactScope::Rewrite) { 1 } else { 2 }
    }

    /// Whether this scope takes `table` at all: a rewrite takes the vote table only (the
    /// rollups never used the encodings it replaces).
    fn takes_table(self, table: Table) -> bool {
        !matches!(self, CompactScope::Rewrite) || table == Table::Votes
    }

    /// The deletion time of the removed files' `remove`s: now, except for a generated day.
    fn removed_at_ms(self) -> i64 {
        match self {
            CompactScope::Generated { closed_ms, .. } => closed_ms,
            _ => chrono::Utc::now().timestamp_millis(),
        }
    }
}

/// The active files of a table by day (`date` partition).
fn files_by_day(table: &deltalake::DeltaTable) -> Result<BTreeMap<NaiveDate, Vec<LogicalFileView>>, StoreError> {
    let mut days: BTreeMap<NaiveDate, Vec<LogicalFileView>> = BTreeMap::new();
    for file in table.snapshot()?.log_data().iter() {
        let date = file.partition_values_map().get("date").cloned().flatten().and_then(|d| d.parse().ok());
        if let Some(date) = date {
            days.entry(date).or_default().push(file);
        }
    }
    Ok(days)
}

/// Compacts the days `scope` takes in every table, one day and table at a time, calling
/// `progress` after each (done, total).
///
/// # Errors
/// Read, write or log errors; a day whose files another commit removed first is skipped and
/// counted in `conflicts`, not an error.
pub(crate) async fn compact(
    dataset: &Dataset,
    tables: &mut Tables,
    scope: CompactScope,
    mut progress: impl FnMut(usize, usize),
) -> Result<CompactionReport, StoreError> {
    let mut report = CompactionReport::default();
    let mut plan = Vec::new();
    for table in Table::ALL.into_iter().filter(|t| scope.takes_table(*t)) {
        let delta = tables.get_mut(table);
        delta.update_state().await?;
        for (date, files) in files_by_day(delta)? {
            if scope.takes(date, files.len()) {
                plan.push((table, date));
            }
        }
    }
    for (done, (table, date)) in plan.iter().enumerate() {
        compact_day(dataset, tables.get_mut(*table), *table, *date, scope, &mut report).await?;
        progress(done + 1, plan.len());
    }
    Ok(report)
}

/// Merges one day of one table into one file and commits the swap.
async fn compact_day(
    dataset: &Dataset,
    delta: &mut deltalake::DeltaTable,
    table: Table,
    date: NaiveDate,
    scope: CompactScope,
    report: &mut CompactionReport,
) -> Result<(), StoreError> {
    delta.update_state().await?;
    let Some(files) = files_by_day(delta)?.remove(&date).filter(|f| f.len() >= scope.files_min()) else { return Ok(()) };
    let removed_at_ms = scope.removed_at_ms();
    let location = &dataset.location;
    let paths: Vec<(String, u64)> = files.iter().map(|f| (location.scan_path(table.dir(), &f.path()), f.size() as u64)).collect();
    let name = format!("{}/date={date}/compacted-{:020}-{}.parquet", table.dir(), delta.version().unwrap_or(0) + 1, random_suffix());
    let path = ObjectPath::from(name);
    let (bytes, footer) = match table {
        Table::Votes => merge_votes(location, &paths, files.len()).await?,
        Table::Rollup(rollup) => {
            let merged = add_up(location, &paths, table, rollup).await?;
            crate::storage::parquet::encode_parquet(&merged, rollup_properties())?
        }
    };
    let size = bytes.len() as u64;
    dataset.publish(&path, bytes).await?;
    crate::storage::faults::crash_point("compact.after_file");
    let add: Add = add_action(table_relative(table, &path), date, size, &footer, &table.schema(), false)?;
    let removed_bytes: u64 = files.iter().map(|f| f.size() as u64).sum();
    let remove = |f: &LogicalFileView| Remove { deletion_timestamp: Some(removed_at_ms), ..f.remove_action(false) };
    let mut actions: Vec<Action> = files.iter().map(|f| Action::Remove(remove(f))).collect();
    actions.push(Action::Add(add));
    let operation = DeltaOperation::Optimize { predicate: Some(format!("date = '{date}'")), target_size: size as i64 };
    let metrics = json!({ "numAddedFiles": 1, "numRemovedFiles": files.len(), "numOutputRows": footer.file_metadata().num_rows() });
    let metrics = metrics.as_object().cloned().unwrap_or_default();
    let merged: Vec<String> = files.iter().map(|f| f.path().to_string()).collect();
    for _ in 0..COMMIT_ATTEMPTS_MAX {
        match table::commit_on_snapshot(delta, actions.clone(), operation.clone(), metrics.clone()).await {
            Ok(version) => {
                tracing::info!(table = table.dir(), %date, files = files.len(), bytes_before = removed_bytes, bytes_after = size, version, "compacted a day");
                report.days += 1;
                report.files_removed += files.len();
                report.files_added += 1;
                report.bytes_before += removed_bytes;
                report.bytes_after += size;
                return Ok(());
            }
            Err(deltalake::DeltaTableError::Transaction { source }) => {
                // The table moved since it was read: commit again on the new version if every
                // merged file is still in it (only appends landed), else another compaction or
                // retention took the day first.
                delta.update_state().await?;
                let active: std::collections::HashSet<String> =
                    files_by_day(delta)?.remove(&date).unwrap_or_default().iter().map(|f| f.path().to_string()).collect();
                if !merged.iter().all(|path| active.contains(path)) {
                    tracing::warn!(table = table.dir(), %date, error = %source, "another commit changed this day first; compaction skipped it");
                    break;
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    report.conflicts += 1;
    dataset.store.delete(&path).await?;
    Ok(())
}

/// A random file-name suffix: two compactions of one day never write the same name.
fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A scan of `paths` (`Location::scan_path`s) with their `table` schema, one file per partition.
fn scan(location: &Location, paths: &[(String, u64)], table: Table, ordering: Option<LexOrdering>) -> Arc<dyn ExecutionPlan> {
    let source = ParquetSource::new(TableSchema::from(table.schema()));
    let groups = paths.iter().map(|(path, size)| FileGroup::new(vec![PartitionedFile::new(path.clone(), *size)])).collect();
    let mut config = FileScanConfigBuilder::new(location.object_store_url(), Arc::new(source)).with_file_groups(groups);
    if let Some(ordering) = ordering {
        config = config.with_output_ordering(vec![ordering]);
    }
    DataSourceExec::from_data_source(config.build())
}

/// A DataFusion session that reads the files of `location`.
fn session(location: &Location, config: datafusion::prelude::SessionConfig) -> SessionContext {
    let ctx = SessionContext::new_with_config(config);
    location.register(&ctx.runtime_env());
    ctx
}

/// Merges sorted vote files into one sorted file (streaming: one batch per file in memory).
async fn merge_votes(
    location: &Location,
    paths: &[(String, u64)],
    count: usize,
) -> Result<(Vec<u8>, parquet::file::metadata::ParquetMetaData), StoreError> {
    let schema = Table::Votes.schema();
    let ordering = votes_ordering(&schema).map_err(datafusion_error)?;
    let merge = SortPreservingMergeExec::new(ordering.clone(), scan(location, paths, Table::Votes, Some(ordering)));
    let ctx = session(location, datafusion::prelude::SessionConfig::new().with_batch_size(MERGE_BATCH_ROWS));
    let mut stream = merge.execute(0, ctx.task_ctx()).map_err(datafusion_error)?;
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, Arc::clone(&schema), Some(compacted_properties(count)))?;
    while let Some(batch) = stream.next().await {
        writer.write(&batch.map_err(datafusion_error)?)?;
    }
    let footer = writer.close()?;
    Ok((bytes, footer))
}

/// Adds up rollup files by their key: the rollup of the union of their votes.
async fn add_up(
    location: &Location,
    paths: &[(String, u64)],
    table: Table,
    rollup: crate::storage::rollup::Rollup,
) -> Result<RecordBatch, StoreError> {
    let schema = rollup.schema();
    let ctx = session(location, datafusion::prelude::SessionConfig::new());
    let batches = datafusion::physical_plan::collect(scan(location, paths, table, None), ctx.task_ctx()).await.map_err(datafusion_error)?;
    // A rollup's Int64 columns are its counts; the others are its key.
    let is_count = |f: &arrow::datatypes::Field| f.data_type() == &arrow::datatypes::DataType::Int64;
    let keys: Vec<_> = schema.fields().iter().filter(|f| !is_count(f)).map(|f| col(f.name())).collect();
    let counts: Vec<_> = schema.fields().iter().filter(|f| is_count(f)).map(|f| sum(col(f.name())).alias(f.name())).collect();
    let summed = ctx
        .read_batches(batches)
        .and_then(|frame| frame.aggregate(keys.clone(), counts))
        .and_then(|frame| frame.sort(keys.into_iter().map(|k| k.sort(true, false)).collect()))
        .map_err(datafusion_error)?
        .collect()
        .await
        .map_err(datafusion_error)?;
    // The sum comes back as the type of the column (Int64); conform to the stored schema.
    let batches = summed.iter().map(|b| RecordBatch::try_new(Arc::clone(&schema), b.columns().to_vec())).collect::<Result<Vec<_>, _>>()?;
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

fn datafusion_error(error: datafusion::error::DataFusionError) -> StoreError {
    StoreError::Commit(format!("merging files: {error}"))
}

/// What retention removed (or would remove, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RetentionReport {
    /// Distinct days removed.
    pub days: Vec<NaiveDate>,
    /// Files removed, all tables.
    pub files: usize,
    /// Votes removed (from the votes table's statistics).
    pub votes: u64,
    /// Bytes of the removed files, all tables.
    pub bytes: u64,
}

/// Removes every day before `cutoff` from the three tables: one commit per table (nothing on a
/// dry run). The files are deleted later by `vacuum`, after the grace period.
///
/// # Errors
/// Log errors (a concurrent compaction of a removed day makes the commit retry or fail).
pub(crate) async fn apply_retention(tables: &mut Tables, cutoff: NaiveDate, dry_run: bool) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    for table in Table::ALL {
        let delta = tables.get_mut(table);
        delta.update_state().await?;
        let old: Vec<(NaiveDate, LogicalFileView)> = files_by_day(delta)?
            .into_iter()
            .filter(|(date, _)| *date < cutoff)
            .flat_map(|(d, files)| files.into_iter().map(move |f| (d, f)))
            .collect();
        if old.is_empty() {
            continue;
        }
        for (date, _) in &old {
            if !report.days.contains(date) {
                report.days.push(*date);
            }
        }
        report.files += old.len();
        report.bytes += old.iter().map(|(_, f)| f.size() as u64).sum::<u64>();
        let rows: u64 = old.iter().filter_map(|(_, f)| f.num_records()).map(|n| n as u64).sum();
        if table == Table::Votes {
            report.votes = rows;
        }
        if dry_run {
            continue;
        }
        let actions = old.iter().map(|(_, f)| Action::Remove(f.remove_action(true))).collect();
        let operation = DeltaOperation::Delete { predicate: Some(format!("date < '{cutoff}'")) };
        let metrics = json!({ "numAddedFiles": 0, "numRemovedFiles": old.len(), "numDeletedRows": rows });
        let version = table::commit(delta, actions, operation, None, metrics.as_object().cloned().unwrap_or_default()).await?;
        tracing::info!(table = table.dir(), %cutoff, files = old.len(), rows, version, "removed the days before the retention cutoff");
    }
    report.days.sort();
    Ok(report)
}

/// When vacuum deletes the files the tables no longer reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grace {
    /// After `table::DELETED_FILE_RETENTION`, so that queries that started before a removal
    /// finish reading (the server, `faccia compact`, `faccia retention`).
    Period,
    /// At once: only for tables no reader can have opened yet (`faccia generate` on a
    /// directory it created).
    None,
}

/// Deletes the files of every table that no version within the grace period references:
/// removed files once the grace has passed, and orphans. Returns how many files were deleted.
///
/// # Errors
/// Listing, deleting or log errors.
pub(crate) async fn vacuum(tables: &mut Tables, grace: Grace) -> Result<usize, StoreError> {
    let mut deleted = 0;
    for table in Table::ALL {
        let delta = tables.get_mut(table);
        delta.update_state().await?;
        let mut builder = delta.clone().vacuum().with_mode(VacuumMode::Full);
        if grace == Grace::None {
            builder = builder.with_retention_period(chrono::TimeDelta::zero()).with_enforce_retention_duration(false);
        }
        let (vacuumed, metrics) = builder.await?;
        *delta = vacuumed;
        if !metrics.files_deleted.is_empty() {
            tracing::info!(table = table.dir(), files = metrics.files_deleted.len(), "vacuumed files removed from the table");
        }
        deleted += metrics.files_deleted.len();
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::storage::buffer::testing::buffer_with;
    use crate::storage::checkpoint::Checkpoint;
    use crate::storage::engine::{flush_to_tables, take_over};
    use crate::storage::table::applied;

    const DAY_MS: i64 = 86_400_000;
    /// 2026-09-21 10:00 in Italy.
    const MONDAY: i64 = 1_790_000_000_000 - 1_790_000_000_000 % DAY_MS + 8 * 3_600_000;

    /// Votes of `days` days, `flushes` flushes a day (one vote per municipality and flush).
    async fn written(dir: &Path, node: &str, days: i64, flushes: i64) -> (Dataset, Tables) {
        let dataset = Dataset::local(dir, node).unwrap();
        let mut tables = take_over(&dataset, 0).await.unwrap();
        let mut lsn = 0;
        for day in 0..days {
            for flush in 0..flushes {
                let at = MONDAY + day * DAY_MS + flush * 60_000;
                let rows = buffer_with(&[(1003, 2, at), (1001, 9, at + 1), (1001, 2, at + 2)]);
                flush_to_tables(&dataset, &mut tables, &[rows], lsn + 1, lsn + 3).await.unwrap();
                lsn += 3;
            }
        }
        (dataset, tables)
    }

    #[tokio::test]
    async fn a_file_without_terminal_ts_merges_with_one_that_has_it_in_either_order() {
        // Proves: compaction of a day holding a file from before `terminal_ts` (no such column)
        // and a file with a clock fault keeps the fault's terminal_ts, whichever file comes first.
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path()).unwrap();
        let fault = crate::model::Vote {
            municipality: crate::model::IstatCode(1001),
            terminal: 5,
            service: 1,
            face: crate::model::Face::Positive,
            channel: crate::model::Channel::Counter,
            reason: None,
            at_ms: 946_684_800_000,
        };
        let mut new = crate::storage::buffer::VoteBuffer::default();
        new.push_at(&fault, crate::storage::buffer::CLOCK_FAULT, MONDAY + 5, Some(fault.at_ms));
        let new = new.finish();
        let old = buffer_with(&[(1001, 2, MONDAY), (1003, 2, MONDAY + 9)]);
        let old = old.project(&(0..crate::storage::buffer::col::TERMINAL_TS).collect::<Vec<_>>()).unwrap();
        let mut paths = Vec::new();
        for (name, rows) in [("old.parquet", &old), ("new.parquet", &new)] {
            let bytes = crate::storage::parquet::encode_parquet(rows, crate::storage::parquet::writer_properties("t", 1, 1)).unwrap().0;
            std::fs::create_dir_all(dir.path().join("votes")).unwrap();
            std::fs::write(dir.path().join("votes").join(name), &bytes).unwrap();
            paths.push((location.scan_path("votes", name), bytes.len() as u64));
        }
        for order in [paths.clone(), paths.iter().rev().cloned().collect()] {
            let (bytes, _) = merge_votes(&location, &order, 2).await.unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap().build().unwrap();
            let rows: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
            let rows = arrow::compute::concat_batches(&rows[0].schema(), &rows).unwrap();
            assert_eq!(rows.num_rows(), 3);
            let kept = arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampMillisecondType>(
                rows.column(crate::storage::buffer::col::TERMINAL_TS),
            );
            assert_eq!(
                kept.iter().flatten().collect::<Vec<_>>(),
                vec![fault.at_ms],
                "order {:?}",
                order.iter().map(|p| &p.0).collect::<Vec<_>>()
            );
        }
    }

    async fn sql_count(dir: &Path, sql: &str) -> i64 {
        let ctx = crate::query::context(dir).await.unwrap();
        let batches = crate::query::run(&ctx, sql).await.unwrap();
        let column = arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Int64).unwrap();
        column.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0)
    }

    fn active_files(tables: &Tables, table: Table) -> usize {
        tables.tables[table.index()].snapshot().unwrap().log_data().num_files()
    }

    #[tokio::test]
    async fn a_flush_committed_twice_is_stored_once() {
        // Proves: `commit_flush` with a watermark the table holds commits nothing (a retry
        // after a crash or a timeout), and the node's watermark is the table's txn version.
        let dir = tempfile::tempdir().unwrap();
        let (dataset, mut tables) = written(dir.path(), "n1", 1, 2).await;
        // The flusher retrying the second flush: the same rows, the same files.
        let at = MONDAY + 60_000;
        let rows = buffer_with(&[(1003, 2, at), (1001, 9, at + 1), (1001, 2, at + 2)]);
        let files = dataset.write_flush(&[rows], 4, 6, &Table::ALL).await.unwrap();
        let before = tables.versions();
        for table in Table::ALL {
            assert_eq!(applied(tables.get_mut(table), "n1").await.unwrap(), 6);
            table::commit_flush(&mut tables, table, 6, files.adds[table.index()].clone()).await.unwrap();
        }
        assert_eq!(tables.versions(), before, "nothing committed");
        assert_eq!(sql_count(dir.path(), "SELECT count(*) FROM votes").await, 6);
    }

    #[tokio::test]
    async fn a_flush_whose_commit_landed_unseen_is_not_committed_again() {
        // Proves: a handle that does not know its flush landed (the commit's reply lost: its
        // snapshot and its watermark are from before) commits nothing when it retries: the
        // conflict checker finds the newer commit with the node's app id, the table is read
        // again and the flush is found there.
        let dir = tempfile::tempdir().unwrap();
        let (dataset, mut tables) = written(dir.path(), "n1", 1, 1).await;
        let mut stale = take_over(&dataset, 0).await.unwrap();
        let at = MONDAY + 60_000;
        let files = dataset.write_flush(&[buffer_with(&[(1003, 2, at), (1001, 9, at + 1)])], 4, 5, &Table::ALL).await.unwrap();
        for table in Table::ALL {
            table::commit_flush(&mut tables, table, 5, files.adds[table.index()].clone()).await.unwrap();
        }
        assert_eq!(stale.applied, [3; 3], "the stale handle knows only the first flush");
        for table in Table::ALL {
            table::commit_flush(&mut stale, table, 5, files.adds[table.index()].clone()).await.unwrap();
        }
        assert_eq!(stale.applied, [5; 3]);
        assert_eq!(stale.versions(), tables.versions(), "nothing committed twice");
        assert_eq!(sql_count(dir.path(), "SELECT count(*) FROM votes").await, 5);
        assert_eq!(sql_count(dir.path(), "SELECT CAST(sum(votes) AS BIGINT) FROM vote_counts").await, 5);
    }

    #[tokio::test]
    async fn compaction_leaves_one_sorted_file_per_day_and_the_same_answers() {
        // Proves: every closed day ends with one file per table, counts and rollups unchanged,
        // the merged vote file keeps the storage sort order, and a compacted day is not taken again.
        let dir = tempfile::tempdir().unwrap();
        let (dataset, mut tables) = written(dir.path(), "n1", 3, 5).await;
        let queries = [
            "SELECT count(*) FROM votes",
            "SELECT CAST(sum(votes) AS BIGINT) FROM vote_counts",
            "SELECT CAST(sum(votes) AS BIGINT) FROM municipality_service_counts WHERE municipality = 1001",
            "SELECT count(*) FROM votes WHERE municipality = 1001 AND date = DATE '2026-09-22'",
        ];
        let mut before = Vec::new();
        for sql in queries {
            before.push(sql_count(dir.path(), sql).await);
        }
        assert_eq!(active_files(&tables, Table::Votes), 15);
        let today = crate::storage::buffer::partition_date(MONDAY + 2 * DAY_MS);
        let report = compact(&dataset, &mut tables, CompactScope::Due { today, today_files_max: 16 }, |_, _| {}).await.unwrap();
        assert_eq!((report.days, report.files_removed, report.files_added), (6, 30, 6), "two closed days × three tables; today has 5 < 16");
        for table in Table::ALL {
            assert_eq!(active_files(&tables, table), 2 + 5, "{table:?}");
        }
        for (sql, expected) in queries.into_iter().zip(before) {
            assert_eq!(sql_count(dir.path(), sql).await, expected, "{sql}");
        }
        let again = compact(&dataset, &mut tables, CompactScope::Due { today, today_files_max: 16 }, |_, _| {}).await.unwrap();
        assert_eq!(again.days, 0);
        let day = compact(&dataset, &mut tables, CompactScope::Day(today), |_, _| {}).await.unwrap();
        assert_eq!(day.days, 3, "an operator's --date takes today too");
        let merged = tables.tables[0].snapshot().unwrap().log_data().iter().next().unwrap().path().to_string();
        let file = std::fs::File::open(dir.path().join("votes").join(merged)).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        let batch = arrow::compute::concat_batches(&Table::Votes.schema(), &reader.collect::<Result<Vec<_>, _>>().unwrap()).unwrap();
        let sorted = crate::storage::buffer::partition_by_day(std::slice::from_ref(&batch)).unwrap();
        assert_eq!(sorted.values().next().unwrap(), &batch, "the merged file is in storage order");
    }

    #[tokio::test]
    async fn two_nodes_compacting_the_same_days_at_once_merge_each_once() {
        // Proves: compaction is conflict-safe across nodes (issue 12: maintenance runs on every
        // node): two nodes compacting the same days at the same time commit one merge per day
        // and table between them (the loser's commit meets the winner's removes, is skipped and
        // its merged file deleted), and every answer is unchanged.
        let dir = tempfile::tempdir().unwrap();
        let (first, mut first_tables) = written(dir.path(), "n1", 3, 5).await;
        let second = Dataset::local(dir.path(), "n2").unwrap();
        let mut second_tables = take_over(&second, 0).await.unwrap();
        let sql = "SELECT date, municipality, count(*) FROM votes GROUP BY 1, 2 ORDER BY 1, 2";
        let ctx = crate::query::context(dir.path()).await.unwrap();
        let before = arrow::util::pretty::pretty_format_batches(&crate::query::run(&ctx, sql).await.unwrap()).unwrap().to_string();
        let today = crate::storage::buffer::partition_date(MONDAY + 2 * DAY_MS);
        let scope = CompactScope::Due { today, today_files_max: 16 };
        let (a, b) =
            tokio::join!(compact(&first, &mut first_tables, scope, |_, _| {}), compact(&second, &mut second_tables, scope, |_, _| {}));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.days + b.days, 6, "each of two closed days × three tables merged once: {a:?} {b:?}");
        assert!(a.conflicts + b.conflicts > 0, "the two nodes met: {a:?} {b:?}");
        vacuum(&mut first_tables, Grace::None).await.unwrap();
        for table in Table::ALL {
            first_tables.get_mut(table).update_state().await.unwrap();
            assert_eq!(active_files(&first_tables, table), 2 + 5, "{table:?}");
            let closed = dir.path().join(table.dir()).join("date=2026-09-21");
            let on_disk =
                std::fs::read_dir(&closed).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "parquet"));
            assert_eq!(on_disk.count(), 1, "{}: one file left on disk for a closed day", closed.display());
        }
        let ctx = crate::query::context(dir.path()).await.unwrap();
        let after = arrow::util::pretty::pretty_format_batches(&crate::query::run(&ctx, sql).await.unwrap()).unwrap().to_string();
        assert_eq!(before, after);
    }

    #[tokio::test]
    async fn retention_removes_whole_old_days_from_every_table_and_vacuum_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut tables) = written(dir.path(), "n1", 3, 2).await;
        let cutoff = crate::storage::buffer::partition_date(MONDAY + 2 * DAY_MS);
        let dry = apply_retention(&mut tables, cutoff, true).await.unwrap();
        assert_eq!((dry.days.len(), dry.files, dry.votes), (2, 12, 12));
        assert_eq!(sql_count(dir.path(), "SELECT count(*) FROM votes").await, 18, "a dry run removes nothing");
        let report = apply_retention(&mut tables, cutoff, false).await.unwrap();
        assert_eq!(report, dry);
        assert_eq!(sql_count(dir.path(), "SELECT count(*) FROM votes").await, 6);
        assert_eq!(sql_count(dir.path(), "SELECT CAST(sum(votes) AS BIGINT) FROM vote_counts").await, 6);
        assert_eq!(sql_count(dir.path(), "SELECT count(*) FROM table_history WHERE operation = 'DELETE'").await, 3);
        // Within the grace period the removed files stay for running queries.
        assert_eq!(vacuum(&mut tables, Grace::Period).await.unwrap(), 0);
        assert_eq!(sql_count(dir.path(), "SELECT count(*) FROM votes").await, 6);
        // Without a grace period (a directory nobody reads yet) they go at once; the answers stay.
        assert_eq!(vacuum(&mut tables, Grace::None).await.unwrap(), 12);
        assert_eq!(sql_count(dir.path(), "SELECT count(*) FROM votes").await, 6);
        assert_eq!(sql_count(dir.path(), "SELECT CAST(sum(votes) AS BIGINT) FROM municipality_service_counts").await, 6);
    }

    #[tokio::test]
    async fn take_over_adopts_the_files_of_a_pre_delta_directory() {
        // Proves: a directory as the release before the table format left it (files and a
        // checkpoint, no `_delta_log/`) is taken over without rewriting a file: committed files
        // are adopted, a file above the checkpoint (never committed) is removed, a missing
        // rollup is written, and the node's watermark becomes its txn version.
        let dir = tempfile::tempdir().unwrap();
        let dataset = Dataset::local(dir.path(), "n1").unwrap();
        let at = MONDAY;
        dataset.write_flush(&[buffer_with(&[(1003, 2, at), (1001, 2, at + 1)])], 1, 2, &Table::ALL).await.unwrap();
        dataset.write_flush(&[buffer_with(&[(1003, 2, at + DAY_MS)])], 3, 3, &Table::ALL).await.unwrap();
        dataset.write_flush(&[buffer_with(&[(1003, 2, at + 5)])], 4, 4, &Table::ALL).await.unwrap(); // above the checkpoint
        Checkpoint { watermark: 3, windows: vec![] }.write(dir.path()).unwrap();
        std::fs::write(dir.path().join("node-id"), "n1\n").unwrap();
        let pairs = crate::storage::dataset::list_parts_in(dataset.store.as_ref(), crate::storage::rollup::PAIRS_DIR).await.unwrap();
        std::fs::remove_file(dir.path().join(pairs[0].path.as_ref())).unwrap();
        let inode = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let first = dir.path().join(crate::storage::dataset::list_parts(dataset.store.as_ref()).await.unwrap()[0].path.as_ref());
        let written_at = inode(&first);
        assert!(crate::query::context(dir.path()).await.is_err(), "faccia sql says the directory must be taken over first");

        let mut tables = take_over(&dataset, 3).await.unwrap();
        for table in Table::ALL {
            assert_eq!(applied(tables.get_mut(table), "n1").await.unwrap(), 3);
            assert_eq!(active_files(&tables, table), 2, "{table:?}");
        }
        assert_eq!(inode(&first), written_at, "adopted, not rewritten");
        assert_eq!(sql_count(dir.path(), "SELECT count(*) FROM votes").await, 3);
        assert_eq!(sql_count(dir.path(), "SELECT CAST(sum(votes) AS BIGINT) FROM municipality_service_counts").await, 3);
        assert_eq!(sql_count(dir.path(), "SELECT count(*) FROM votes WHERE ts > TIMESTAMP '2026-09-21T12:00:00Z'").await, 1);
        // A second start finds the tables and adopts nothing again.
        let again = take_over(&dataset, 3).await.unwrap();
        assert_eq!(again.versions(), tables.versions());
    }
}
