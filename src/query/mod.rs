//! SQL over the vote dataset: a DataFusion context with the tables, the index functions and
//! the views of the index library (`schemas/sql.md` documents each, with its formula).
//!
//! - `votes`: every acknowledged vote — the Parquet dataset plus the rows not yet in it, without
//!   double counting (`votes` module);
//! - `tables`: the registry (`municipalities`, `services`, `terminals`, `administrations`, code
//!   tables);
//! - `indices`: scalar and aggregate index functions; `calendar`: Italian hour and weekday;
//!   `views`: the index library;
//! - `formats`: result formats.
//!
//! Two contexts: `context` for `faccia sql` (a separate process: the log tail is read without
//! touching it) and `server_context` for the server's endpoints (the engine's memory).
//!
//! Architecture invariants: the query path never writes to the dataset or the log, and never
//! repairs what it reads (`storage::wal::read_tail` stops at a torn record); it knows no network
//! (the endpoints are `analysts`'), and `tests.rs` checks it against hand-computed indices.

pub(crate) mod calendar;
pub mod formats;
pub mod indices;
pub mod tables;
pub mod views;
pub mod votes;

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext, col};

pub(crate) use formats::{Format, write_results};

use crate::limits::QueryLimits;
use crate::storage::engine::Engine;
use crate::storage::{buffer, dataset, rollup};
use votes::{EngineRows, Fresh, LogTail, Shape, VotesTable};

/// Opens a SQL context over the data directory as a separate process sees it: the Parquet
/// dataset plus the log records above the checkpoint, read without changing anything (so it is
/// safe next to a running server, and after a crash).
///
/// # Errors
/// When the dataset location cannot be registered.
pub async fn context(data_dir: &Path) -> DfResult<SessionContext> {
    let fresh = Arc::new(LogTail { data_dir: data_dir.to_path_buf() });
    build(data_dir, fresh, &QueryLimits::default()).await
}

/// Opens the server's SQL context: the Parquet dataset plus the engine's memory.
///
/// # Errors
/// As `context`.
pub(crate) async fn server_context(data_dir: &Path, engine: Arc<Engine>, limits: &QueryLimits) -> DfResult<SessionContext> {
    build(data_dir, Arc::new(EngineRows(engine)), limits).await
}

async fn build(data_dir: &Path, fresh: Arc<dyn Fresh>, limits: &QueryLimits) -> DfResult<SessionContext> {
    // DATAFUSION_* environment variables tune the engine (e.g. DATAFUSION_EXECUTION_BATCH_SIZE);
    // the settings below are what faccia's correctness relies on and win over them.
    let config = SessionConfig::from_env()?
        .with_information_schema(true)
        // Row-level filter pushdown costs more than it saves on these narrow rows (measured:
        // per-service index 134 → 70 ms on 3.3 M votes); pruning by statistics and page index
        // works without it.
        .set_bool("datafusion.execution.parquet.pushdown_filters", false)
        // File statistics would describe files that a scan may leave out (see `votes`).
        .set_bool("datafusion.execution.collect_statistics", false);
    // No cached listing: a long-running server must see the files of every new flush.
    let runtime =
        RuntimeEnvBuilder::new().with_object_list_cache_limit(0).with_memory_limit(limits.query_memory_bytes_max, 1.0).build_arc()?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let votes = Arc::new(parquet_files(data_dir, dataset::VOTES_DIR, buffer::schema(), true)?);
    ctx.register_table("votes", Arc::new(VotesTable::new(votes, Arc::clone(&fresh), Shape::Votes, data_dir)))?;
    for rollup in rollup::Rollup::ALL {
        let files = Arc::new(parquet_files(data_dir, rollup.dir(), rollup.schema(), false)?);
        let table = VotesTable::new(files, Arc::clone(&fresh), Shape::Rollup(rollup), data_dir);
        ctx.register_table(rollup.dir(), Arc::new(table))?;
    }
    tables::register(&ctx, data_dir.to_path_buf())?;
    for udf in indices::scalar_functions().into_iter().chain(calendar::functions()) {
        ctx.register_udf(udf);
    }
    for udaf in indices::aggregate_functions() {
        ctx.register_udaf(udaf);
    }
    views::create(&ctx).await?;
    Ok(ctx)
}

/// Parquet files under `dir` as DataFusion lists them: Hive partitions by `date`, and for the
/// votes the storage sort order.
fn parquet_files(data_dir: &Path, dir: &str, schema: SchemaRef, sorted: bool) -> DfResult<ListingTable> {
    let path = data_dir.join(dir);
    // The query path writes nothing: a missing directory (a dataset being created) lists empty.
    let absolute = match path.canonicalize() {
        Ok(absolute) => absolute,
        Err(_) => std::path::absolute(&path).map_err(|e| DataFusionError::External(Box::new(e)))?,
    };
    let url = ListingTableUrl::parse(format!("file://{}/", absolute.display()))?;
    let mut options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".to_string(), DataType::Date32)]);
    if sorted {
        options = options.with_file_sort_order(vec![["municipality", "service", "ts"].map(|c| col(c).sort(true, false)).to_vec()]);
    }
    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(schema);
    ListingTable::try_new(config)
}

/// Runs one statement and collects its result.
///
/// # Errors
/// SQL errors, with DataFusion's message.
pub async fn run(ctx: &SessionContext, sql: &str) -> DfResult<Vec<RecordBatch>> {
    Ok(run_with_schema(ctx, sql).await?.1)
}

/// Runs one statement and collects its result with its schema (an empty result keeps its
/// columns).
///
/// # Errors
/// SQL errors, with DataFusion's message.
pub(crate) async fn run_with_schema(ctx: &SessionContext, sql: &str) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    let frame = ctx.sql(sql).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    Ok((schema, frame.collect().await?))
}

#[cfg(test)]
mod tests;
