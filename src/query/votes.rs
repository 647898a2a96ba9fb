//! The `votes` table: every acknowledged vote, whether it is already in Parquet or not; and
//! the rollup tables (`vote_counts`, `municipality_service_counts`), the same votes counted
//! (`storage::rollup::Rollup`), from the rollup files written beside each vote file plus the fresh rows
//! counted on the fly.
//!
//! A scan reads two sources and never counts a vote twice:
//!
//! - the Parquet dataset, without the files of this node whose log range ends above the
//!   watermark (a flush that is being written, or that never committed);
//! - the rows of log records above the watermark, from a `Fresh` source: the running engine's
//!   memory (`faccia serve`), or the log itself read without touching it (`faccia sql` in
//!   another process).
//!
//! The split is by log sequence number, not by time: the flusher publishes a file a moment
//! before its rows leave memory, and the watermark moves with the rows in one step
//! (`storage::engine::MemorySnapshot`), so a file is counted exactly when its rows are not.
//! The snapshot is taken before the files are listed: a flush that commits in between only
//! adds files that the snapshot's watermark excludes.
//!
//! Files of other nodes are always read (each node's memory is its own); a node's own files
//! are filtered by its id in `DATA_DIR/node-id`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::union::UnionExec;

use crate::storage::buffer::{self, VoteBuffer};
use crate::storage::checkpoint::Checkpoint;
use crate::storage::dataset::PartFile;
use crate::storage::engine::{Engine, MemorySnapshot};
use crate::storage::rollup;
use crate::wire::BatchView;

/// How many times `faccia sql` reads the log tail again when a flush commits while it reads.
/// A flush commits at most every few seconds under load, so a second attempt almost always
/// finds a stable checkpoint; eight bounds the wait if the server flushes continuously.
pub(crate) const LOG_TAIL_ATTEMPTS_MAX: u32 = 8;

/// Where the rows above the watermark come from.
pub(crate) trait Fresh: Send + Sync + fmt::Debug {
    /// The watermark and the rows of every log record above it, taken together.
    ///
    /// # Errors
    /// When the rows cannot be read.
    fn snapshot(&self) -> DfResult<MemorySnapshot>;
}

/// The running engine's buffer (`faccia serve`).
pub(crate) struct EngineRows(pub Arc<Engine>);

impl fmt::Debug for EngineRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineRows")
    }
}

impl Fresh for EngineRows {
    fn snapshot(&self) -> DfResult<MemorySnapshot> {
        Ok(self.0.memory_snapshot())
    }
}

/// The log tail of a data directory, read-only (`faccia sql` next to a running server, or after
/// a crash): the checkpoint's watermark, then every intact log record above it. If the
/// checkpoint moved while the log was read, it reads again (a committed flush may have removed
/// segments).
#[derive(Debug)]
pub(crate) struct LogTail {
    pub(crate) data_dir: PathBuf,
}

impl Fresh for LogTail {
    fn snapshot(&self) -> DfResult<MemorySnapshot> {
        let external = |e: &dyn std::error::Error| DataFusionError::Execution(crate::error_chain(e));
        let mut last_error = String::new();
        for _ in 0..LOG_TAIL_ATTEMPTS_MAX {
            let watermark = Checkpoint::read(&self.data_dir).map_err(|e| external(&e))?.watermark;
            let mut buffer = VoteBuffer::default();
            let read = crate::storage::wal::read_tail(&self.data_dir.join("wal"), watermark, |record| {
                // A record whose archive does not validate is left out, as at replay.
                if let Ok(view) = BatchView::access(&record.archive) {
                    buffer.append(&view, record.municipality, record.terminal, &record.misuse);
                }
            });
            let again = Checkpoint::read(&self.data_dir).map_err(|e| external(&e))?.watermark;
            match read {
                Ok(last) if again == watermark => {
                    let generations = if buffer.is_empty() { vec![] } else { vec![(last, vec![buffer.finish()])] };
                    return Ok(MemorySnapshot { watermark, generations });
                }
                Ok(_) => last_error = format!("the checkpoint moved from {watermark} to {again}"),
                Err(error) => last_error = crate::error_chain(&error),
            }
        }
        Err(DataFusionError::Execution(format!(
            "reading the log tail: {LOG_TAIL_ATTEMPTS_MAX} attempts (LOG_TAIL_ATTEMPTS_MAX) failed, last: {last_error}"
        )))
    }
}

/// Which table: the votes themselves, or one of their rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Votes,
    Rollup(rollup::Rollup),
}

/// The `votes` or `vote_counts` table over its Parquet files (`files`) and a `Fresh` source.
#[derive(Debug)]
pub(crate) struct VotesTable {
    files: Arc<ListingTable>,
    fresh: Arc<dyn Fresh>,
    shape: Shape,
    /// This node's id: its files above the watermark are left to the fresh rows. `None` when
    /// the directory has no node yet (then no file can be above any watermark).
    node: Option<String>,
}

impl VotesTable {
    pub(crate) fn new(files: Arc<ListingTable>, fresh: Arc<dyn Fresh>, shape: Shape, data_dir: &Path) -> VotesTable {
        let node = std::fs::read_to_string(data_dir.join("node-id")).ok().map(|t| t.trim().to_string());
        VotesTable { files, fresh, shape, node: node.filter(|n| !n.is_empty()) }
    }

    /// Whether a listed file holds rows that the snapshot does not (see module docs).
    fn committed(&self, location: &str, watermark: u64) -> bool {
        let name = location.rsplit('/').next().unwrap_or(location);
        match (PartFile::parse_name(name), &self.node) {
            (Some((node, _, lsn_last)), Some(this)) if &node == this => lsn_last <= watermark,
            _ => true,
        }
    }

    /// Removes the files above the watermark from a Parquet scan.
    fn without_uncommitted(&self, plan: Arc<dyn ExecutionPlan>, watermark: u64) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(exec) = plan.downcast_ref::<DataSourceExec>() else { return Ok(plan) };
        let Some(config) = exec.data_source().downcast_ref::<FileScanConfig>() else { return Ok(plan) };
        let mut config = config.clone();
        for group in &mut config.file_groups {
            let kept: Vec<_> = group.iter().filter(|f| self.committed(f.object_meta.location.as_ref(), watermark)).cloned().collect();
            *group = kept.into();
        }
        // Empty groups stay: the scan may have declared its partitioning by group.
        if config.file_groups.iter().all(|g| g.is_empty()) {
            return Ok(Arc::new(datafusion::physical_plan::empty::EmptyExec::new(plan.schema())));
        }
        Ok(DataSourceExec::from_data_source(config))
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
                Shape::Votes => {
                    let days = buffer::partition_days(batch.column(buffer::col::TS).as_primitive());
                    batches.push(with_date(batch, Arc::new(days), &schema)?);
                }
                Shape::Rollup(rollup) => {
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
        self.files.schema()
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
        // The snapshot first, then the listing (module docs).
        let snapshot = self.fresh.snapshot()?;
        let files = self.files.scan(state, projection, filters, limit).await?;
        let files = self.without_uncommitted(files, snapshot.watermark)?;
        let Some(fresh) = self.fresh_rows(state, &snapshot, projection, filters)? else { return Ok(files) };
        let union = UnionExec::try_new(vec![files, fresh])?;
        Ok(match limit {
            Some(fetch) => Arc::new(GlobalLimitExec::new(union, 0, Some(fetch))),
            None => union,
        })
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // What the files handle exactly (partition pruning), the fresh rows' filter applies too.
        self.files.supports_filters_pushdown(filters)
    }
}
