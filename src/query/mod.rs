//! SQL over the vote dataset: a DataFusion context with the tables, the index functions and
//! the views of the index library (`schemas/sql.md` documents each, with its formula).
//!
//! - `votes`: every acknowledged vote — the Parquet dataset plus the rows not yet in it, without
//!   double counting (`votes` module);
//! - `tables`: the registry (`municipalities`, `services`, `terminals`, `administrations`, code
//!   tables) and `istat_code(municipality)`;
//! - `indices`: scalar and aggregate index functions; `calendar`: Italian hour and weekday;
//!   `views`: the index library;
//! - `formats`: result formats; `xlsx`: the Excel workbook format.
//!
//! Two contexts: `context` for `faccia sql` (a separate process: the log tail is read without
//! touching it) and `server_context` for the server's endpoints (the engine's memory).
//!
//! Architecture invariants: the query path never writes to the dataset or the log, and never
//! repairs what it reads (`storage::wal::read_tail` stops at a torn record); it knows no network
//! (the endpoints are `analysts`'), and `tests.rs` checks it against hand-computed indices.

pub(crate) mod calendar;
pub mod formats;
pub(crate) mod history;
pub mod indices;
pub mod scope;
pub mod tables;
pub mod views;
pub mod votes;
pub mod xlsx;

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::{SessionConfig, SessionContext};

pub(crate) use formats::{Format, write_output, write_results};

use crate::limits::QueryLimits;
use crate::storage::dataset;
use crate::storage::engine::Engine;
use crate::storage::location::Location;
use crate::storage::table::{self, Table};
use scope::Scope;
use votes::{EngineRows, Fresh, LogTail, VotesTable};

/// Opens a SQL context over the data directory as a separate process sees it: each table's
/// latest Delta snapshot plus the log records above it, read without changing anything (so it
/// is safe next to a running server, and after a crash).
///
/// # Errors
/// When a table's log cannot be read, or the directory was written by a release before the
/// table format and not taken over yet (a message says how).
pub async fn context(data_dir: &Path) -> DfResult<SessionContext> {
    context_for(data_dir, Runs::Here).await
}

/// As `context`, planning for where its queries run: `Runs::OnCluster` applies Ballista's
/// restrictions to the plans (`cluster` sends them to the executors).
///
/// # Errors
/// As `context`.
pub async fn context_for(data_dir: &Path, runs: Runs) -> DfResult<SessionContext> {
    let node = std::fs::read_to_string(data_dir.join("node-id")).ok().map(|t| t.trim().to_string()).filter(|n| !n.is_empty());
    let fresh = Arc::new(LogTail { data_dir: data_dir.to_path_buf(), node });
    build(data_dir, fresh, &QueryLimits::default(), runs).await
}

/// Where a context's queries run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// In this process.
    Here,
    /// On a Ballista cluster: plans are made here with Ballista's restricted settings
    /// (no dynamic filters, sort-merge joins, no view types) and `partitions` scan tasks and
    /// shuffle partitions, then shipped (`cluster::Cluster`).
    OnCluster {
        /// Scan tasks and shuffle partitions of each query (DataFusion's `target_partitions`).
        partitions: usize,
    },
}

/// Opens the server's SQL context: the tables plus the engine's memory.
///
/// # Errors
/// As `context`.
pub(crate) async fn server_context(data_dir: &Path, engine: Arc<Engine>, limits: &QueryLimits, runs: Runs) -> DfResult<SessionContext> {
    build(data_dir, Arc::new(EngineRows(engine)), limits, runs).await
}

/// As `server_context`, restricted to `scope` (`scope::restrict`: a scoped session's tables
/// are filtered before any SQL sees them).
///
/// # Errors
/// As `context`, or when `unions.json` cannot be read for a union scope.
pub(crate) async fn server_context_in(
    data_dir: &Path,
    engine: Arc<Engine>,
    limits: &QueryLimits,
    runs: Runs,
    scope: &Scope,
) -> DfResult<SessionContext> {
    build_in(data_dir, Arc::new(EngineRows(engine)), limits, runs, scope).await
}

/// As `context`, restricted to `scope` (`faccia sql --scope`, to see what a token sees).
///
/// # Errors
/// As `server_context_in`.
pub async fn context_in(data_dir: &Path, scope: &Scope) -> DfResult<SessionContext> {
    let node = std::fs::read_to_string(data_dir.join("node-id")).ok().map(|t| t.trim().to_string()).filter(|n| !n.is_empty());
    let fresh = Arc::new(LogTail { data_dir: data_dir.to_path_buf(), node });
    build_in(data_dir, fresh, &QueryLimits::default(), Runs::Here, scope).await
}

pub(crate) async fn build(data_dir: &Path, fresh: Arc<dyn Fresh>, limits: &QueryLimits, runs: Runs) -> DfResult<SessionContext> {
    build_in(data_dir, fresh, limits, runs, &Scope::Everything).await
}

/// Builds a context whose tables (and so views) are restricted to `scope`.
pub(crate) async fn build_in(
    data_dir: &Path,
    fresh: Arc<dyn Fresh>,
    limits: &QueryLimits,
    runs: Runs,
    scope: &Scope,
) -> DfResult<SessionContext> {
    // DATAFUSION_* environment variables tune the engine (e.g. DATAFUSION_EXECUTION_BATCH_SIZE);
    // the settings below are what faccia's correctness relies on and win over them.
    let config = match runs {
        Runs::Here => SessionConfig::from_env()?,
        Runs::OnCluster { partitions } => {
            use ballista_core::extension::SessionConfigExt as _;
            SessionConfig::from_env()?.upgrade_for_ballista().with_target_partitions(partitions.max(1))
        }
    };
    let config = config
        .with_information_schema(true)
        // Row-level filter pushdown costs more than it saves on these narrow rows (measured:
        // per-service index 134 → 70 ms on 3.3 M votes); pruning by statistics and page index
        // works without it.
        .set_bool("datafusion.execution.parquet.pushdown_filters", false)
        // The scan's files come from the table's log (with their statistics there), not from
        // footers read at planning time.
        .set_bool("datafusion.execution.collect_statistics", false);
    let runtime = RuntimeEnvBuilder::new().with_memory_limit(limits.query_memory_bytes_max, 1.0).build_arc()?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let location = Location::of_data_dir(data_dir).map_err(|e| DataFusionError::Execution(crate::error_chain(&e)))?;
    location.register(&ctx.runtime_env());
    for table in Table::ALL {
        let exists = table::exists(&location, table).await.map_err(|e| DataFusionError::Execution(crate::error_chain(&e)))?;
        let handle = if exists {
            Some(table::open(&location, table).await.map_err(|e| DataFusionError::Execution(crate::error_chain(&e)))?)
        } else if location.local_dir().is_some_and(|dir| dataset::has_part_files(dir, table)) {
            return Err(DataFusionError::Execution(format!(
                "{} holds Parquet files but no Delta log (_delta_log/): it was written by a release before the table \
                 format. Start `faccia serve --data-dir {}` once: it takes the files over into the table without rewriting them",
                data_dir.join(table.dir()).display(),
                data_dir.display()
            )));
        } else {
            None
        };
        ctx.register_table(table.dir(), Arc::new(VotesTable::new(handle, Arc::clone(&fresh), table, &location)))?;
    }
    history::register(&ctx, &location)?;
    tables::register(&ctx, data_dir.to_path_buf())?;
    let (scalars, aggregates) = functions();
    for udf in scalars {
        ctx.register_udf(udf);
    }
    for udaf in aggregates {
        ctx.register_udaf(udaf);
    }
    // Before the views: they are then defined over the filtered tables.
    scope::restrict(&ctx, scope, data_dir).await?;
    views::create(&ctx).await?;
    Ok(ctx)
}

/// faccia's SQL functions (scalar, aggregate): the one list that every context registers, and
/// the cluster's scheduler and executors too (`cluster::functions`), so the two cannot drift.
pub(crate) fn functions() -> (Vec<ScalarUDF>, Vec<AggregateUDF>) {
    let scalars = indices::scalar_functions().into_iter().chain(calendar::functions()).chain(tables::functions()).collect();
    (scalars, indices::aggregate_functions())
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
pub(crate) mod tests;
