//! The dataset as three Delta Lake tables (`votes/`, `vote_counts/`,
//! `municipality_service_counts/`), each with its `_delta_log/`: which files a reader sees is
//! what the table's log says, never what a directory listing finds.
//!
//! - **Schema.** The files keep faccia's Arrow types (unsigned integers, millisecond timestamps
//!   shown in Europe/Rome). Delta has no unsigned types and one UTC timestamp type, so the
//!   table's schema declares each column the way Spark reads an unsigned Parquet column
//!   (UINT_8 → SHORT, UINT_16 → INTEGER, UINT_32 and UINT_64 → LONG; `delta_type`) and `ts` as
//!   TIMESTAMP (an instant; Parquet stores it as UTC-adjusted milliseconds, which every Delta
//!   reader rescales). Every value fits the wider type, so readers cast without loss, and the
//!   statistics in the log are the exact values (`file_stats`).
//! - **Exactly once.** A flush is one commit per table carrying a Delta transaction identifier
//!   (`txn`: app id `faccia-{node}`, version = the flush's last log sequence number, the
//!   mechanism Spark Structured Streaming uses for idempotent sinks, Delta protocol §
//!   "Transaction Identifiers"). `commit_flush` skips a commit whose version the table already
//!   holds, so a flush retried after a crash or a timeout never doubles a vote, and a table's
//!   `applied` watermark tells recovery and readers which log records it holds.
//! - **Rewrites.** Compaction and retention commit `remove` (+ `add`) actions through the same
//!   `commit`; delta-rs's conflict checker lets appends go on while they run.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::kernels::aggregate;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use chrono::NaiveDate;
use deltalake::kernel::transaction::{CommitBuilder, CommitConflictError, CommitData, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, DataType as DeltaType, PrimitiveType, StructField, Transaction};
use deltalake::logstore::CommitOrBytes;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError, TableProperty};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::file::metadata::ParquetMetaData;
use serde_json::{Map, Value, json};

use crate::storage::StoreError;
use crate::storage::buffer;
use crate::storage::location::Location;
use crate::storage::rollup::Rollup;

/// The votes table's directory inside the data location.
pub(crate) const VOTES_DIR: &str = "votes";
/// Commits of a table between two checkpoints of its log (Delta's default): opening a table
/// reads the last checkpoint and at most this many JSON commits, and so does delta-rs after
/// every commit to refresh the writer's snapshot (a flush is one commit per table). At 50 a
/// flush's three commits cost 40 ms on a 10-day table at 144 flushes a day, at 10 29 ms
/// (`faccia generate --days 10 --flushes-per-day 144`, release build).
pub(crate) const CHECKPOINT_INTERVAL: u32 = 10;
/// How long a file removed by compaction or retention stays on disk before `vacuum` deletes it:
/// the grace period that lets queries started before the removal finish reading it. Ten times
/// the longest a query may run (`limits::QueryLimits`) would be 50 minutes; one hour.
pub(crate) const DELETED_FILE_RETENTION: &str = "interval 1 hour";
/// How long the table's log keeps a commit (`delta.logRetentionDuration`; Delta's default is
/// 30 days): time travel and `table_history` reach back this far. Every reader lists the whole
/// `_delta_log/` of a local table when it loads or refreshes it (object_store's local listing
/// walks the directory even from an offset), and at a flush every 10 minutes 30 days are 4,400
/// entries per table: 16 ms added to every `faccia sql` query against 7 ms with a short log
/// (BENCHMARKS.md). Two days keep about 300.
pub(crate) const LOG_RETENTION: &str = "interval 2 days";
/// Attempts at a commit that keeps meeting another writer's commit with the same app id.
const COMMIT_ATTEMPTS_MAX: u32 = 8;

/// One of the dataset's three tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// `votes`: one row per vote.
    Votes,
    /// A rollup: `vote_counts` or `municipality_service_counts`.
    Rollup(Rollup),
}

impl Table {
    /// The three tables, in the order a flush commits them (the votes first).
    pub(crate) const ALL: [Table; 3] = [Table::Votes, Table::Rollup(Rollup::Counts), Table::Rollup(Rollup::Pairs)];

    /// The table's directory inside the data directory, and its name in SQL.
    pub(crate) fn dir(self) -> &'static str {
        match self {
            Table::Votes => VOTES_DIR,
            Table::Rollup(rollup) => rollup.dir(),
        }
    }

    /// The Arrow schema of the table's files (without the `date` partition).
    pub(crate) fn schema(self) -> SchemaRef {
        match self {
            Table::Votes => buffer::schema(),
            Table::Rollup(rollup) => rollup.schema(),
        }
    }

    /// Position in `Table::ALL`.
    pub(crate) fn index(self) -> usize {
        Table::ALL.iter().position(|t| *t == self).expect("every table is in ALL")
    }
}

/// The app id of a node's `txn` actions.
pub(crate) fn app_id(node: &str) -> String {
    format!("faccia-{node}")
}

/// The Delta type of a column of faccia's files: the signed type Spark reads an unsigned
/// Parquet column as (wide enough for every value), TIMESTAMP for the vote time.
///
/// # Panics
/// For a type faccia's schemas do not use (a programming error, caught by the tests).
pub(crate) fn delta_type(data_type: &DataType) -> DeltaType {
    DeltaType::Primitive(match data_type {
        DataType::Int8 => PrimitiveType::Byte,
        DataType::UInt8 | DataType::Int16 => PrimitiveType::Short,
        DataType::UInt16 | DataType::Int32 => PrimitiveType::Integer,
        DataType::UInt32 | DataType::UInt64 | DataType::Int64 => PrimitiveType::Long,
        DataType::Timestamp(_, Some(_)) => PrimitiveType::Timestamp,
        DataType::Date32 => PrimitiveType::Date,
        DataType::Boolean => PrimitiveType::Boolean,
        DataType::Utf8 => PrimitiveType::String,
        other => panic!("no Delta type for the stored type {other}"),
    })
}

/// Whether the table exists: its log (`_delta_log/`) holds a commit.
///
/// # Errors
/// Listing errors of the store.
pub(crate) async fn exists(location: &Location, table: Table) -> Result<bool, StoreError> {
    let log = ObjectPath::from(format!("{}/_delta_log/", table.dir()));
    let mut entries = location.store().list(Some(&log));
    while let Some(entry) = entries.next().await {
        if entry?.location.as_ref().ends_with(".json") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A handle on the table at `location`, not loaded.
fn handle(location: &Location, table: Table) -> Result<DeltaTable, StoreError> {
    Ok(deltalake::DeltaTableBuilder::from_url(location.table_url(table.dir()))?.with_storage_options(location.options().clone()).build()?)
}

/// Opens a table that exists.
///
/// # Errors
/// When the log cannot be read (or the table does not exist: `DeltaTableError::NotATable`).
pub(crate) async fn open(location: &Location, table: Table) -> Result<DeltaTable, StoreError> {
    let mut delta = handle(location, table)?;
    delta.load().await?;
    Ok(delta)
}

/// Opens the table, creating it when it does not exist yet; a new table's first commit holds
/// `adopt` (files already in the directory, written by a release before the table format) and
/// the node watermarks `txns`, so that taking a directory over is one atomic step.
///
/// # Errors
/// Storage and log errors.
pub(crate) async fn open_or_create(
    location: &Location,
    table: Table,
    adopt: Vec<Add>,
    txns: &[(String, u64)],
) -> Result<DeltaTable, StoreError> {
    // Probed with `exists` (a listing of `_delta_log/`): delta-rs's own probe logs an error
    // for a table that does not exist yet.
    if exists(location, table).await? {
        return add_missing_columns(location, table, open(location, table).await?).await;
    }
    if let Some(dir) = location.local_dir() {
        let dir = dir.join(table.dir());
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Sync { path: dir.display().to_string(), source })?;
    }
    // Built without loading: `DeltaTable::try_from_url` loads the log first, and delta-rs logs
    // an error for a table that does not exist yet.
    let handle = handle(location, table)?;
    let mut columns: Vec<StructField> =
        table.schema().fields().iter().map(|f| StructField::new(f.name(), delta_type(f.data_type()), f.is_nullable())).collect();
    columns.push(StructField::new("date", DeltaType::Primitive(PrimitiveType::Date), false));
    let adopted = adopt.len();
    let mut actions: Vec<Action> = adopt.into_iter().map(Action::Add).collect();
    actions.extend(txns.iter().map(|(node, watermark)| Action::Txn(Transaction::new(app_id(node), *watermark as i64))));
    let created = handle
        .create()
        .with_table_name(table.dir())
        .with_comment(match table {
            Table::Votes => "faccia: one row per vote (schemas/storage.md)",
            Table::Rollup(Rollup::Counts) => "faccia: votes counted by region, service, hour, channel, face, reason, misuse",
            Table::Rollup(Rollup::Pairs) => "faccia: votes counted by municipality, service, misuse",
        })
        .with_columns(columns)
        .with_partition_columns(["date"])
        .with_save_mode(SaveMode::Ignore)
        .with_configuration_property(TableProperty::CheckpointInterval, Some(CHECKPOINT_INTERVAL.to_string()))
        .with_configuration_property(TableProperty::DeletedFileRetentionDuration, Some(DELETED_FILE_RETENTION))
        .with_configuration_property(TableProperty::LogRetentionDuration, Some(LOG_RETENTION))
        .with_actions(actions)
        .await?;
    if adopted > 0 {
        tracing::info!(table = table.dir(), files = adopted, "took over the files of the directory into the Delta table");
    }
    Ok(created)
}

/// Adds to a table created by an earlier release the nullable columns faccia's files have
/// gained since (the votes' `terminal_ts`), in one Delta `ADD COLUMNS` commit (a metadata
/// action; no file is rewritten, and files without the column read it as null). Delta readers
/// (Spark, DuckDB, delta-rs) then see the column; faccia's own scans read files by its schema.
/// Another node adding the same columns at once wins or loses the commit; the loser reloads.
///
/// # Errors
/// Log errors.
async fn add_missing_columns(location: &Location, table: Table, delta: DeltaTable) -> Result<DeltaTable, StoreError> {
    let missing = |delta: &DeltaTable| -> Result<Vec<StructField>, StoreError> {
        let schema = delta.snapshot()?.schema();
        let present: std::collections::HashSet<&str> = schema.fields().map(|f| f.name().as_str()).collect();
        Ok(table
            .schema()
            .fields()
            .iter()
            .filter(|f| !present.contains(f.name().as_str()))
            .map(|f| {
                assert!(f.is_nullable(), "a column added after a table was created must be nullable: {}", f.name());
                StructField::new(f.name(), delta_type(f.data_type()), true)
            })
            .collect())
    };
    let fields = missing(&delta)?;
    if fields.is_empty() {
        return Ok(delta);
    }
    let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
    match delta.add_columns().with_fields(fields).with_commit_properties(commit_properties(Map::new())).await {
        Ok(evolved) => {
            tracing::info!(table = table.dir(), columns = ?names, "added the columns of this release to the table's schema");
            Ok(evolved)
        }
        Err(error) => {
            let reloaded = open(location, table).await?;
            if missing(&reloaded)?.is_empty() { Ok(reloaded) } else { Err(error.into()) }
        }
    }
}

/// The highest log sequence number of `node` the table holds (0 when none).
///
/// # Errors
/// Log read errors.
pub(crate) async fn applied(table: &DeltaTable, node: &str) -> Result<u64, StoreError> {
    let version = table.snapshot()?.transaction_version(table.log_store().as_ref(), app_id(node)).await?;
    Ok(version.map_or(0, |v| v.max(0) as u64))
}

/// Commits `actions` as one new version of the table, with `metrics` in the commit's
/// `operationMetrics` (shown by `table_history`) and the `txn` when given. Returns the version.
///
/// # Errors
/// Log errors, and conflicts delta-rs's checker finds with commits made since the table was
/// loaded (e.g. two compactions of one day).
pub(crate) async fn commit(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    txn: Option<Transaction>,
    metrics: Map<String, Value>,
) -> Result<u64, DeltaTableError> {
    let mut properties = commit_properties(metrics);
    if let Some(txn) = txn {
        properties = properties.with_application_transaction(txn);
    }
    commit_with(table, actions, operation, properties).await
}

/// The properties of every commit: `metrics` as its `operationMetrics`, and no expired-log
/// cleanup — maintenance does that (`cleanup_log`): delta-rs's per-commit cleanup lists the
/// whole `_delta_log/` each time.
fn commit_properties(metrics: Map<String, Value>) -> CommitProperties {
    CommitProperties::default()
        .with_metadata([("operationMetrics".to_string(), Value::Object(metrics))])
        .with_cleanup_expired_logs(Some(false))
}

/// Commits `actions` with `properties` on the handle's snapshot and moves the handle to the new
/// version. Returns the version.
async fn commit_with(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    properties: CommitProperties,
) -> Result<u64, DeltaTableError> {
    // `From<CommitProperties>`, not `default()`: the post-commit hook writes the log's checkpoints.
    let finalized =
        CommitBuilder::from(properties).with_actions(actions).build(Some(table.snapshot()?), table.log_store(), operation).await?;
    table.state = Some(finalized.snapshot());
    Ok(finalized.version())
}

/// Commits `actions` as the version after the one `table` holds, or not at all: when any commit
/// landed since the handle was loaded, the commit fails with `TransactionError::MaxCommitAttempts`
/// and the caller reloads and decides again. For compaction: delta-rs's conflict checker
/// (`check_for_deleted_files_against_current_txn_deleted_files`) ignores removes with
/// `dataChange = false`, so two OPTIMIZE commits removing the same files would both succeed and
/// the day's rows would be in two merged files (`compaction::tests::two_nodes_compacting_the_same_days_at_once_merge_each_once`).
///
/// # Errors
/// As `commit`.
pub(crate) async fn commit_on_snapshot(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    metrics: Map<String, Value>,
) -> Result<u64, DeltaTableError> {
    commit_with(table, actions, operation, commit_properties(metrics).with_max_retries(0)).await
}

/// Deletes the table's log entries older than its `delta.logRetentionDuration` (`LOG_RETENTION`)
/// below its newest checkpoint (delta-rs's `cleanup_metadata`). Returns how many.
///
/// # Errors
/// Listing or deleting errors.
pub(crate) async fn cleanup_log(table: &DeltaTable) -> Result<usize, StoreError> {
    Ok(deltalake::protocol::checkpoints::cleanup_metadata(table, None).await?)
}

/// Commits one flush's files of `tables.node` (log records up to `watermark`) to `table`, once:
/// a table that already holds `watermark` is left as it is. Returns the table's version.
///
/// The first attempt trusts what this process knows the table holds (`Tables::applied`,
/// read from the log when the tables were opened and kept up by every commit since): no log
/// listing and no log replay per flush. A commit of this node that landed unseen (a commit
/// whose reply was lost) is found by delta-rs's conflict checker, which refuses a commit
/// whose `txn` app id a newer commit also carries (`ConcurrentTransaction`); then the table is
/// reloaded and its watermark read again.
///
/// # Errors
/// Log errors; a commit that keeps meeting other commits.
pub(crate) async fn commit_flush(tables: &mut Tables, table: Table, watermark: u64, adds: Vec<Add>) -> Result<u64, StoreError> {
    let node = tables.node.clone();
    for attempt in 0..COMMIT_ATTEMPTS_MAX {
        let index = table.index();
        if attempt > 0 {
            tables.tables[index].update_state().await?;
            tables.applied[index] = applied(&tables.tables[index], &node).await?;
        }
        let delta = &mut tables.tables[index];
        if tables.applied[index] >= watermark {
            return Ok(delta.version().unwrap_or(0));
        }
        let flush = FlushCommit::new(&node, watermark, &adds);
        match commit(delta, flush.actions, flush.operation, Some(flush.txn), flush.metrics).await {
            Ok(version) => {
                tables.applied[index] = watermark;
                return Ok(version);
            }
            Err(DeltaTableError::Transaction {
                source:
                    TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction) | TransactionError::MaxCommitAttempts(_),
            }) => {
                tracing::warn!(node, watermark, table = table.dir(), "the table moved under the commit; reading it again");
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(StoreError::Commit(format!("{COMMIT_ATTEMPTS_MAX} attempts (COMMIT_ATTEMPTS_MAX) met other commits; node {node}")))
}

/// What one flush commits to one table: its files' `add`s, the `txn` of its node at its
/// watermark, and the metrics `table_history` shows.
struct FlushCommit {
    actions: Vec<Action>,
    operation: DeltaOperation,
    txn: Transaction,
    metrics: Map<String, Value>,
}

impl FlushCommit {
    fn new(node: &str, watermark: u64, adds: &[Add]) -> FlushCommit {
        let rows: i64 = adds.iter().filter_map(|a| a.get_stats().ok().flatten().map(|s| s.num_records)).sum();
        let metrics = json!({ "numAddedFiles": adds.len(), "numRemovedFiles": 0, "numOutputRows": rows, "faccia.watermark": watermark });
        FlushCommit {
            actions: adds.iter().cloned().map(Action::Add).collect(),
            operation: DeltaOperation::Write { mode: SaveMode::Append, partition_by: Some(vec!["date".into()]), predicate: None },
            txn: Transaction::new_with_last_update(app_id(node), watermark as i64, Some(chrono::Utc::now().timestamp_millis())),
            metrics: metrics.as_object().cloned().unwrap_or_default(),
        }
    }
}

/// Writes one flush of `node` as version `version` of `table`, for a writer that owns the
/// table (`faccia generate` on its own directory): the same actions as `commit_flush` (`add`s,
/// `txn`, `commitInfo`, serialized by delta-rs), written with the log store's put-if-absent, but
/// no conflict check and no refresh of the handle's snapshot, which stays at the version it
/// was loaded at until the caller updates it. At 144 flushes a day delta-rs's refresh after
/// every commit is what a generated year would spend its hour on (BENCHMARKS.md).
///
/// # Errors
/// `StoreError::Commit` when `version` already exists (another writer committed it: the
/// generator writes alone); log store errors.
pub(crate) async fn append_owned(table: &DeltaTable, version: u64, node: &str, watermark: u64, adds: &[Add]) -> Result<(), StoreError> {
    let flush = FlushCommit::new(node, watermark, adds);
    let app_metadata = HashMap::from([("operationMetrics".to_string(), Value::Object(flush.metrics))]);
    let data = CommitData::new(flush.actions, flush.operation, app_metadata, vec![flush.txn]);
    let bytes = data.get_bytes().map_err(DeltaTableError::from)?;
    match table.log_store().write_commit_entry(version, CommitOrBytes::LogBytes(bytes), uuid::Uuid::new_v4()).await {
        Ok(()) => Ok(()),
        Err(TransactionError::VersionAlreadyExists(_)) => Err(StoreError::Commit(format!(
            "version {version} of {} exists: another writer is committing to it",
            table.log_store().root_url()
        ))),
        Err(error) => Err(DeltaTableError::from(error).into()),
    }
}

/// The `add` action of a file written into the table: `path` relative to the table's root,
/// `date` its partition, `bytes` its size, the statistics from its footer.
///
/// # Errors
/// When the footer's statistics cannot be read as the table's schema.
pub(crate) fn add_action(
    path: String,
    date: NaiveDate,
    bytes: u64,
    footer: &ParquetMetaData,
    schema: &SchemaRef,
    data_change: bool,
) -> Result<Add, StoreError> {
    Ok(Add {
        path,
        partition_values: HashMap::from([("date".to_string(), Some(date.to_string()))]),
        size: bytes as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change,
        stats: Some(file_stats(footer, schema)?),
        ..Add::default()
    })
}

/// The Delta statistics of a Parquet file (`numRecords`, `minValues`, `maxValues`,
/// `nullCount`; Delta protocol § "Per-file Statistics"), from the row-group statistics of its
/// footer: integers as JSON numbers, `ts` as an ISO 8601 instant with milliseconds.
///
/// # Errors
/// When a column of `schema` is missing from the file.
pub(crate) fn file_stats(footer: &ParquetMetaData, schema: &SchemaRef) -> Result<String, StoreError> {
    let (mut min_values, mut max_values, mut null_count) = (Map::new(), Map::new(), Map::new());
    let parquet_schema = footer.file_metadata().schema_descr();
    for field in schema.fields() {
        let converter = StatisticsConverter::try_new(field.name(), schema, parquet_schema)?;
        let nulls = converter.row_group_null_counts(footer.row_groups().iter())?;
        null_count.insert(field.name().clone(), json!(aggregate::sum(&nulls).unwrap_or(0)));
        let extreme = |values: ArrayRef, min: bool| -> Result<Option<Value>, StoreError> {
            let Some(value) = extreme(&values, min)? else { return Ok(None) };
            Ok(Some(match field.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, _) => {
                    let instant = chrono::DateTime::from_timestamp_millis(value).unwrap_or_default();
                    json!(instant.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                }
                _ => json!(value),
            }))
        };
        if let Some(min) = extreme(converter.row_group_mins(footer.row_groups().iter())?, true)? {
            min_values.insert(field.name().clone(), min);
        }
        if let Some(max) = extreme(converter.row_group_maxes(footer.row_groups().iter())?, false)? {
            max_values.insert(field.name().clone(), max);
        }
    }
    let stats = json!({
        "numRecords": footer.file_metadata().num_rows(),
        "minValues": min_values,
        "maxValues": max_values,
        "nullCount": null_count,
    });
    Ok(stats.to_string())
}

/// The smallest (or largest) non-null value of row-group statistics, as an i64.
fn extreme(values: &ArrayRef, min: bool) -> Result<Option<i64>, StoreError> {
    // Integers widen without loss; a timestamp becomes its milliseconds.
    let values = arrow::compute::cast(values, &DataType::Int64)?;
    let values = values.as_primitive::<Int64Type>();
    if values.null_count() == values.len() {
        return Ok(None);
    }
    Ok(if min { aggregate::min(values) } else { aggregate::max(values) })
}

/// The three tables of a data directory, opened for writing by one node (the flusher's,
/// compaction's).
#[derive(Debug)]
pub(crate) struct Tables {
    pub(crate) tables: [DeltaTable; 3],
    /// The node whose flushes these handles commit (`Dataset::node`).
    pub(crate) node: String,
    /// The node's watermark each table holds, as this process last read or committed it.
    pub(crate) applied: [u64; 3],
}

impl Tables {
    /// The tables, with the watermark of `node` each holds.
    ///
    /// # Errors
    /// Log read errors.
    pub(crate) async fn new(tables: [DeltaTable; 3], node: &str) -> Result<Tables, StoreError> {
        let mut applied_by_table = [0; 3];
        for (table, watermark) in tables.iter().zip(applied_by_table.iter_mut()) {
            *watermark = applied(table, node).await?;
        }
        Ok(Tables { tables, node: node.to_string(), applied: applied_by_table })
    }

    /// Each table's version.
    pub(crate) fn versions(&self) -> [u64; 3] {
        self.tables.each_ref().map(|t| t.version().unwrap_or(0))
    }

    /// The table `table`.
    pub(crate) fn get_mut(&mut self, table: Table) -> &mut DeltaTable {
        &mut self.tables[table.index()]
    }
}
