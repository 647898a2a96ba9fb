//! `table_history`: every commit of the three tables still in their logs, for operators —
//! version, time, operation (WRITE, OPTIMIZE, DELETE, CREATE TABLE, VACUUM…), files added and
//! removed, rows written, and the operation's parameters. Read again at every scan.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use serde_json::Value;

use crate::query::tables::ScanTimeTable;
use crate::storage::buffer::TIME_ZONE;
use crate::storage::location::Location;
use crate::storage::table::{self, Table};

fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("version", DataType::Int64, false),
            Field::new("time", DataType::Timestamp(TimeUnit::Millisecond, Some(TIME_ZONE.into())), true),
            Field::new("operation", DataType::Utf8, true),
            Field::new("files_added", DataType::Int64, true),
            Field::new("files_removed", DataType::Int64, true),
            Field::new("rows", DataType::Int64, true),
            Field::new("parameters", DataType::Utf8, true),
        ]))
    }))
}

/// Registers `table_history` over the data directory's tables.
///
/// # Errors
/// When the name is taken (never expected).
pub(crate) fn register(ctx: &SessionContext, location: &Location) -> DfResult<()> {
    let location = location.clone();
    let rows = move || -> BoxFuture<'static, DfResult<RecordBatch>> { Box::pin(rows(location.clone())) };
    ctx.register_table("table_history", Arc::new(ScanTimeTable::asynchronous(schema(), TableType::View, rows)))?;
    Ok(())
}

/// One row of `table_history`.
#[derive(Default)]
struct Commit {
    table: &'static str,
    version: i64,
    time: Option<i64>,
    operation: Option<String>,
    files_added: Option<i64>,
    files_removed: Option<i64>,
    rows: Option<i64>,
    parameters: Option<String>,
}

/// Every commit of the tables at `location`, newest first per table.
async fn commits(location: &Location) -> DfResult<Vec<Commit>> {
    let external = |e: &dyn std::error::Error| DataFusionError::Execution(crate::error_chain(e));
    let mut commits = Vec::new();
    for table in Table::ALL {
        if !table::exists(location, table).await.map_err(|e| external(&e))? {
            continue;
        }
        let delta = table::open(location, table).await.map_err(|e| external(&e))?;
        let latest = delta.version().unwrap_or(0);
        // Newest first, one commitInfo per version, as far back as the log reaches.
        let infos: Vec<_> = delta.history(None).try_collect().await.map_err(|e| external(&e))?;
        for (i, info) in infos.into_iter().enumerate() {
            let metrics = info.info.get("operationMetrics").cloned().unwrap_or(Value::Null);
            let metric = |key: &str| metrics.get(key).and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
            commits.push(Commit {
                table: table.dir(),
                version: latest as i64 - i as i64,
                time: info.timestamp,
                operation: info.operation.clone(),
                files_added: metric("numAddedFiles").or_else(|| metric("numFilesAdded")),
                files_removed: metric("numRemovedFiles").or_else(|| metric("numFilesRemoved")),
                rows: metric("numOutputRows").or_else(|| metric("numDeletedRows")),
                // In key order: delta-rs keeps them in a hash map, whose order changes from run to run.
                parameters: info
                    .operation_parameters
                    .as_ref()
                    .map(|p| serde_json::to_string(&p.iter().collect::<std::collections::BTreeMap<_, _>>()).unwrap_or_default()),
            });
        }
    }
    Ok(commits)
}

/// The rows of `table_history`.
async fn rows(location: Location) -> DfResult<RecordBatch> {
    let commits = commits(&location).await?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(commits.iter().map(|c| Some(c.table)).collect::<StringArray>()),
        Arc::new(commits.iter().map(|c| Some(c.version)).collect::<Int64Array>()),
        Arc::new(TimestampMillisecondArray::from(commits.iter().map(|c| c.time).collect::<Vec<_>>()).with_timezone(TIME_ZONE)),
        Arc::new(commits.iter().map(|c| c.operation.clone()).collect::<StringArray>()),
        Arc::new(commits.iter().map(|c| c.files_added).collect::<Int64Array>()),
        Arc::new(commits.iter().map(|c| c.files_removed).collect::<Int64Array>()),
        Arc::new(commits.iter().map(|c| c.rows).collect::<Int64Array>()),
        Arc::new(commits.iter().map(|c| c.parameters.clone()).collect::<StringArray>()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}
