//! The `votes` table: every acknowledged vote, whether it is already in the Delta table or not;
//! and the rollup tables (`vote_counts`, `municipality_service_counts`), the same votes counted
//! (`storage::rollup::Rollup`), from their own Delta tables plus the fresh rows counted on the fly.
//!
//! A scan reads two sources and never counts a vote twice:
//!
//! - a snapshot (one version) of the table: the files its log lists, pruned by partition and
//!   skipped by the statistics in the log (`SnapshotFiles`), without opening a footer;
//! - the rows of log records above what that snapshot holds of this node (its `txn` version),
//!   from a `Fresh` source: the running engine's memory (`faccia serve`), or the log itself read
//!   without touching it (`faccia sql` in another process).
//!
//! The split is by log sequence number: the snapshot holds this node's records up to its
//! transaction version W and the fresh rows are exactly those above W. The server reads its
//! memory first (watermark W, with each table's version at the commit of W): if the table has
//! meanwhile committed a later flush, the scan reads the version of W instead. `faccia sql`
//! loads the snapshot first, reads the log above W, and reads again if the table moved.
//!
//! Files of other nodes are always read (each node's memory is its own); this node is the one
//! in `DATA_DIR/node-id`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchemaBuilder;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::union::UnionExec;
use deltalake::DeltaTable;
use deltalake::table::state::DeltaTableState;

use crate::storage::buffer::{self, VoteBuffer};
use crate::storage::engine::{Engine, MemorySnapshot};
use crate::storage::location::Location;
use crate::storage::table::{self, Table};
use crate::wire::BatchView;

/// How many times `faccia sql` reads the log tail again when a flush commits while it reads.
/// A flush commits at most every few seconds under load, so a second attempt almost always
/// finds a stable table; eight bounds the wait if the server flushes continuously.
pub(crate) const LOG_TAIL_ATTEMPTS_MAX: u32 = 8;

fn external(error: &dyn std::error::Error) -> DataFusionError {
    DataFusionError::Execution(crate::error_chain(error))
}

/// Where the rows above a table snapshot come from.
#[async_trait]
pub(crate) trait Fresh: Send + Sync + fmt::Debug {
    /// A snapshot of `table` (through its open `handle`, `None` while the table does not
    /// exist) and the rows of this node's log records above what it holds, taken together.
    ///
    /// # Errors
    /// When the table or the rows cannot be read.
    async fn snapshot(&self, table: Table, handle: &mut Option<DeltaTable>) -> DfResult<(Option<DeltaTableState>, MemorySnapshot)>;
}

/// The running engine's buffer (`faccia serve`).
pub(crate) struct EngineRows(pub Arc<Engine>);

impl fmt::Debug for EngineRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineRows")
    }
}

#[async_trait]
impl Fresh for EngineRows {
    async fn snapshot(&self, table: Table, handle: &mut Option<DeltaTable>) -> DfResult<(Option<DeltaTableState>, MemorySnapshot)> {
        let memory = self.0.memory_snapshot();
        let state = matching_snapshot(&memory, table, handle, &self.0.dataset.node).await?;
        Ok((Some(state), memory))
    }
}

/// The snapshot of `table` that holds exactly the rows `memory` no longer has: the latest, or,
/// when this node committed the table again after `memory` was read, the version of
/// `memory`'s watermark.
///
/// # Errors
/// When the table is not open or its log cannot be read.
pub(crate) async fn matching_snapshot(
    memory: &MemorySnapshot,
    table: Table,
    handle: &mut Option<DeltaTable>,
    node: &str,
) -> DfResult<DeltaTableState> {
    let Some(delta) = handle.as_mut() else { return Err(DataFusionError::Execution(format!("the table {} is not open", table.dir()))) };
    delta.update_state().await.map_err(|e| external(&e))?;
    if table::applied(delta, node).await.map_err(|e| external(&e))? != memory.watermark {
        delta.load_version(memory.versions[table.index()]).await.map_err(|e| external(&e))?;
    }
    Ok(delta.snapshot().map_err(|e| external(&e))?.clone())
}

/// The log tail of a data directory, read-only (`faccia sql` next to a running server, or after
/// a crash): the table's snapshot and this node's transaction version in it, then every intact
/// log record above that. If the table moved while the log was read, it reads again (a
/// committed flush may have removed segments).
#[derive(Debug)]
pub(crate) struct LogTail {
    pub(crate) data_dir: PathBuf,
    /// The data directory's node (`None` before a server first started there: no log either).
    pub(crate) node: Option<String>,
}

impl LogTail {
    async fn applied(&self, delta: &mut Option<DeltaTable>) -> DfResult<u64> {
        match (delta.as_mut(), &self.node) {
            (Some(delta), Some(node)) => {
                delta.update_state().await.map_err(|e| external(&e))?;
                table::applied(delta, node).await.map_err(|e| external(&e))
            }
            _ => Ok(0),
        }
    }
}

#[async_trait]
impl Fresh for LogTail {
    async fn snapshot(&self, _table: Table, handle: &mut Option<DeltaTable>) -> DfResult<(Option<DeltaTableState>, MemorySnapshot)> {
        let mut last_error = String::new();
        for _ in 0..LOG_TAIL_ATTEMPTS_MAX {
            let watermark = self.applied(handle).await?;
            let state = match handle {
                Some(delta) => Some(delta.snapshot().map_err(|e| external(&e))?.clone()),
                None => None,
            };
            let mut buffer = VoteBuffer::default();
            let read = crate::storage::wal::read_tail(&self.data_dir.join("wal"), watermark, |record| {
                // A record whose archive does not validate is left out, as at replay.
                if let Ok(view) = BatchView::access(&record.archive) {
                    buffer.append(&view, record.municipality, record.terminal, &record.misuse, record.received_ms);
                }
            });
            let again = self.applied(handle).await?;
            match read {
                Ok(last) if again == watermark => {
                    let generations = if buffer.is_empty() { vec![] } else { vec![(last, vec![buffer.finish()])] };
                    return Ok((state, MemorySnapshot { watermark, versions: [0; 3], generations }));
                }
                Ok(_) => last_error = format!("the table moved from {watermark} to {again}"),
                Err(error) => last_error = crate::error_chain(&error),
            }
        }
        Err(DataFusionError::Execution(format!(
            "reading the log tail: {LOG_TAIL_ATTEMPTS_MAX} attempts (LOG_TAIL_ATTEMPTS_MAX) failed, last: {last_error}"
        )))
    }
}

/// A table of the dataset over its Delta snapshot and a `Fresh` source.
pub(crate) struct VotesTable {
    shape: Table,
    /// The table's schema with the `date` partition last.
    schema: SchemaRef,
    /// The open table (`None` until it exists), moved to the version each scan reads.
    handle: tokio::sync::Mutex<Option<DeltaTable>>,
    fresh: Arc<dyn Fresh>,
    location: Location,
}

impl fmt::Debug for VotesTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VotesTable").field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl VotesTable {
    pub(crate) fn new(handle: Option<DeltaTable>, fresh: Arc<dyn Fresh>, shape: Table, location: &Location) -> VotesTable {
        let mut fields: Vec<Arc<Field>> = shape.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new("date", DataType::Date32, false)));
        VotesTable {
            shape,
            schema: Arc::new(Schema::new(fields)),
            handle: tokio::sync::Mutex::new(handle),
            fresh,
            location: location.clone(),
        }
    }

    /// A scan of no file, with the projected schema: an empty memory scan, not an `EmptyExec`
    /// (Ballista 55 counts an `EmptyExec`'s metrics differently on the scheduler and the
    /// executor, fails the task's status update and never finishes the job:
    /// `it::cluster`'s pruned-away queries).
    fn empty(&self, projection: Option<&Vec<usize>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => Arc::clone(&self.schema),
        };
        Ok(MemorySourceConfig::try_new_exec(&[vec![]], projected, None)?)
    }

    /// The snapshot's files that the filters may need, as a Parquet scan.
    async fn files(
        &self,
        state: &dyn Session,
        snapshot: &DeltaTableState,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = SnapshotFiles::new(snapshot, &self.schema)?;
        // A filter on `date` alone is evaluated on each file's partition value (exact, whatever
        // the expression); the others prune by the log's statistics (may keep a file).
        let (on_date, others): (Vec<Expr>, Vec<Expr>) = filters.iter().cloned().partition(only_date);
        let mut keep = vec![true; files.num_containers()];
        if let Some(predicate) = conjunction(on_date) {
            let dates = Arc::new(Schema::new(vec![Field::new("date", DataType::Date32, true)]));
            let predicate = state.create_physical_expr(predicate, &DFSchema::try_from(Arc::clone(&dates))?)?;
            let batch = RecordBatch::try_new(dates, vec![Arc::new(files.dates.clone())])?;
            let matches = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
            for (kept, matched) in keep.iter_mut().zip(matches.as_boolean().iter()) {
                *kept &= matched == Some(true);
            }
        }
        if let Some(predicate) = conjunction(others) {
            let predicate = state.create_physical_expr(predicate, &DFSchema::try_from(Arc::clone(&self.schema))?)?;
            let pruned = PruningPredicateBuilder::new().with_file_schema(Arc::clone(&self.schema)).try_build(predicate)?.prune(&files)?;
            for (kept, may_match) in keep.iter_mut().zip(pruned) {
                *kept &= may_match;
            }
        }
        let mut partitioned = Vec::new();
        for (i, kept) in keep.into_iter().enumerate() {
            if kept {
                let path = self.location.scan_path(self.shape.dir(), files.path(i));
                let file = PartitionedFile::new(path, files.size(i)).with_partition_values(vec![ScalarValue::Date32(files.date(i))]);
                partitioned.push(file);
            }
        }
        if partitioned.is_empty() {
            return self.empty(projection);
        }
        let groups = FileGroup::new(partitioned).split_files(state.config().target_partitions());
        let file_schema = self.shape.schema();
        let date = Arc::new(Field::new("date", DataType::Date32, false));
        let table_schema = TableSchemaBuilder::from(&file_schema).with_table_partition_cols(vec![date]).build();
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let mut config = FileScanConfigBuilder::new(self.location.object_store_url(), format.file_source(table_schema))
            .with_file_groups(groups)
            .with_statistics(Statistics::new_unknown(&self.schema))
            .with_projection_indices(projection.cloned())?
            .with_limit(limit);
        if self.shape == Table::Votes {
            config = config.with_output_ordering(vec![crate::storage::parquet::votes_ordering(&self.schema)?]);
        }
        format.create_physical_plan(state, config.build()).await
    }

    /// The snapshot's rows with their `date` partition, filtered like the files.
    fn fresh_rows(
        &self,
        state: &dyn Session,
        snapshot: &MemorySnapshot,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let schema = self.schema();
        let mut batches = Vec::new();
        // Only generations above the watermark: one at or below it is already in a file (a
        // commit that retires two generations at once may be seen half done).
        let above = snapshot.generations.iter().filter(|(last, _)| *last > snapshot.watermark);
        for batch in above.flat_map(|(_, batches)| batches).filter(|b| b.num_rows() > 0) {
            match self.shape {
                Table::Votes => {
                    let days = buffer::partition_days(batch.column(buffer::col::TS).as_primitive());
                    batches.push(with_date(batch, Arc::new(days), &schema)?);
                }
                Table::Rollup(rollup) => {
                    for (day, counts) in rollup.of(batch).map_err(|e| DataFusionError::External(Box::new(e)))? {
                        let days = arrow::array::Date32Array::from(vec![day; counts.num_rows()]);
                        batches.push(with_date(&counts, Arc::new(days), &schema)?);
                    }
                }
            }
        }
        if batches.is_empty() {
            return Ok(None);
        }
        let rows: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(&[batches], Arc::clone(&schema), None)?;
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(expr) => state.create_physical_expr(expr, &DFSchema::try_from(Arc::clone(&schema))?)?,
            None => datafusion::physical_expr::expressions::lit(true),
        };
        let filtered = FilterExecBuilder::new(predicate, rows).apply_projection(projection.cloned())?.build()?;
        Ok(Some(Arc::new(filtered)))
    }
}

/// Adds the `date` partition column to rows as stored.
fn with_date(batch: &RecordBatch, days: ArrayRef, schema: &SchemaRef) -> DfResult<RecordBatch> {
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(days);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

#[async_trait]
impl TableProvider for VotesTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (snapshot, memory) = {
            let mut handle = self.handle.lock().await;
            if handle.is_none() && table::exists(&self.location, self.shape).await.map_err(|e| external(&e))? {
                *handle = Some(table::open(&self.location, self.shape).await.map_err(|e| external(&e))?);
            }
            self.fresh.snapshot(self.shape, &mut handle).await?
        };
        let files = match &snapshot {
            Some(snapshot) => Some(self.files(state, snapshot, projection, filters, limit).await?),
            None => None,
        };
        let fresh = self.fresh_rows(state, &memory, projection, filters)?;
        let (files, fresh) = match (files, fresh) {
            (Some(files), Some(fresh)) => (files, fresh),
            (Some(only), None) | (None, Some(only)) => return Ok(only),
            (None, None) => return self.empty(projection),
        };
        let union = UnionExec::try_new(vec![files, fresh])?;
        Ok(match limit {
            Some(fetch) => Arc::new(GlobalLimitExec::new(union, 0, Some(fetch))),
            None => union,
        })
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // A filter on the partition alone is exact (a file holds one day; the fresh rows are
        // filtered here); any other prunes files, and DataFusion filters their rows.
        Ok(filters
            .iter()
            .map(|f| if only_date(f) { TableProviderFilterPushDown::Exact } else { TableProviderFilterPushDown::Inexact })
            .collect())
    }
}

/// Whether a filter refers to the `date` partition alone.
fn only_date(filter: &Expr) -> bool {
    let columns = filter.column_refs();
    !columns.is_empty() && columns.iter().all(|c| c.name == "date")
}

/// The active files of a table snapshot with their statistics from the log, as DataFusion's
/// pruning sees them: one container per file, `date` from its partition value, the other
/// columns' minimum, maximum and null count cast to the table's Arrow types.
struct SnapshotFiles {
    paths: Vec<String>,
    sizes: Vec<u64>,
    dates: arrow::array::Date32Array,
    rows: Option<ArrayRef>,
    columns: std::collections::HashMap<String, ColumnStats>,
}

/// A column's (minimum, maximum, null count) per file, when the log has them.
type ColumnStats = (Option<ArrayRef>, Option<ArrayRef>, Option<ArrayRef>);

impl SnapshotFiles {
    fn new(snapshot: &DeltaTableState, schema: &SchemaRef) -> DfResult<SnapshotFiles> {
        let actions = snapshot.add_actions_table(true).map_err(|e| external(&e))?;
        let column = |name: &str| actions.column_by_name(name).cloned();
        let missing = |name: &str| DataFusionError::Internal(format!("the table's add actions have no {name} column"));
        let paths = column("path").ok_or_else(|| missing("path"))?;
        let paths =
            arrow::compute::cast(&paths, &DataType::Utf8)?.as_string::<i32>().iter().map(|p| p.unwrap_or_default().to_string()).collect();
        let sizes = column("size_bytes").ok_or_else(|| missing("size_bytes"))?;
        let sizes = arrow::compute::cast(&sizes, &DataType::UInt64)?.as_primitive::<arrow::datatypes::UInt64Type>().values().to_vec();
        let dates = column("partition.date").ok_or_else(|| missing("partition.date"))?;
        let dates = arrow::compute::cast(&dates, &DataType::Date32)?.as_primitive::<arrow::datatypes::Date32Type>().clone();
        let rows = column("num_records").map(|r| arrow::compute::cast(&r, &DataType::UInt64)).transpose()?;
        let mut columns = std::collections::HashMap::new();
        for field in schema.fields().iter().filter(|f| f.name() != "date") {
            let typed = |prefix: &str, to: &DataType| -> DfResult<Option<ArrayRef>> {
                Ok(column(&format!("{prefix}.{}", field.name())).map(|a| arrow::compute::cast(&a, to)).transpose()?)
            };
            columns.insert(
                field.name().clone(),
                (typed("min", field.data_type())?, typed("max", field.data_type())?, typed("null_count", &DataType::UInt64)?),
            );
        }
        Ok(SnapshotFiles { paths, sizes, dates, rows, columns })
    }

    fn path(&self, i: usize) -> &str {
        &self.paths[i]
    }

    fn size(&self, i: usize) -> u64 {
        self.sizes[i]
    }

    fn date(&self, i: usize) -> Option<i32> {
        arrow::array::Array::is_valid(&self.dates, i).then(|| self.dates.value(i))
    }
}

impl PruningStatistics for SnapshotFiles {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        if column.name == "date" {
            return Some(Arc::new(self.dates.clone()));
        }
        self.columns.get(&column.name)?.0.clone()
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        if column.name == "date" {
            return Some(Arc::new(self.dates.clone()));
        }
        self.columns.get(&column.name)?.1.clone()
    }

    fn num_containers(&self) -> usize {
        self.paths.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        if column.name == "date" {
            return Some(Arc::new(arrow::array::UInt64Array::from(vec![0; self.paths.len()])));
        }
        self.columns.get(&column.name)?.2.clone()
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.rows.clone()
    }

    fn contained(&self, _column: &Column, _values: &std::collections::HashSet<ScalarValue>) -> Option<arrow::array::BooleanArray> {
        None
    }
}
