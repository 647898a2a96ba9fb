//! The shared SQL service that Flight SQL (`flight`) and HTTP (`http`) both call: one
//! DataFusion context, read-only statement options, the analysts' limits (statement size,
//! concurrent queries, result rows) and the messages an analyst sees.
//!
//! Architecture invariant: statements from the network are read-only — no DDL, no DML, no
//! `SET`, no `COPY` — so an analyst can never write to the server's disk.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};
use futures::TryStreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::analysts::tokens::AnalystTokens;
use crate::cluster::Cluster;
use crate::limits::QueryLimits;

/// Why a statement from an analyst was not answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqlError {
    /// The statement is longer than `sql_bytes_max`.
    #[error("the statement is {found} bytes; sql_bytes_max is {max}")]
    TooLong {
        /// The statement's length, in bytes.
        found: usize,
        /// `sql_bytes_max`, in bytes.
        max: usize,
    },
    /// The statement is not valid SQL over these tables, or not read-only; DataFusion's message.
    #[error("{0}")]
    Plan(String),
    /// The query failed to start or while it ran; DataFusion's message.
    #[error("{0}")]
    Execution(String),
    /// An HTTP answer would hold more than `http_result_rows_max` rows.
    #[error("the result has more than {max} rows (http_result_rows_max); aggregate it, or use Flight SQL, which streams")]
    TooManyRows {
        /// `http_result_rows_max`, in rows.
        max: usize,
    },
}

/// The SQL context shared by the analysts' endpoints, with their limits.
pub(crate) struct SqlService {
    /// The DataFusion context `query` builds (tables, index functions, views) that statements run in.
    pub(crate) ctx: SessionContext,
    /// The analyst tokens both endpoints check.
    pub(crate) tokens: AnalystTokens,
    /// The analysts' limits: statement bytes, result rows, concurrent queries, prepared statements.
    pub(crate) limits: QueryLimits,
    /// The cluster statements run on (`[cluster] scheduler`); `None`: in this process.
    cluster: Option<Cluster>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for SqlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlService").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl SqlService {
    /// The service over `ctx`, with `concurrent_queries_max` permits (at least one), running
    /// statements on `cluster` when there is one (`ctx` then plans for it: `query::Runs`).
    pub(crate) fn new(ctx: SessionContext, tokens: AnalystTokens, limits: QueryLimits, cluster: Option<Cluster>) -> SqlService {
        let permits = Arc::new(Semaphore::new(limits.concurrent_queries_max.max(1)));
        SqlService { ctx, tokens, limits, cluster, permits }
    }

    /// Plans a read-only statement.
    ///
    /// # Errors
    /// Too long, not read-only, or not valid SQL over these tables.
    pub(crate) async fn plan(&self, sql: &str) -> Result<DataFrame, SqlError> {
        if sql.len() > self.limits.sql_bytes_max {
            return Err(SqlError::TooLong { found: sql.len(), max: self.limits.sql_bytes_max });
        }
        let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let sql = number_placeholders(sql);
        self.ctx.sql_with_options(&sql, read_only).await.map_err(|e| SqlError::Plan(message(&e)))
    }

    /// Waits for a turn among `concurrent_queries_max`; hold the permit while the query runs.
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.permits).acquire_owned().await.expect("the semaphore is never closed")
    }

    /// Runs a planned statement as a stream of batches.
    ///
    /// # Errors
    /// When it cannot start.
    pub(crate) async fn stream(&self, frame: DataFrame) -> Result<SendableRecordBatchStream, SqlError> {
        match &self.cluster {
            Some(cluster) => cluster.stream(&self.ctx, frame).await.map_err(|e| SqlError::Execution(e.to_string())),
            None => frame.execute_stream().await.map_err(|e| SqlError::Execution(message(&e))),
        }
    }

    /// Runs a statement and collects at most `http_result_rows_max` rows.
    ///
    /// # Errors
    /// As `plan`, execution errors, or a result past the row limit.
    pub(crate) async fn collect(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let frame = self.plan(sql).await?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let _permit = self.permit().await;
        let mut stream = self.stream(frame).await?;
        let (mut batches, mut rows) = (Vec::new(), 0);
        while let Some(batch) = stream.try_next().await.map_err(|e| SqlError::Execution(message(&e)))? {
            rows += batch.num_rows();
            if rows > self.limits.http_result_rows_max {
                return Err(SqlError::TooManyRows { max: self.limits.http_result_rows_max });
            }
            batches.push(batch);
        }
        Ok((schema, batches))
    }
}

/// Rewrites JDBC/ADBC-style `?` placeholders as DataFusion's positional `$1`, `$2`, …: only the
/// characters the SQL tokenizer reads as a `?` placeholder are replaced, so string literals and
/// comments stay byte for byte. Text that does not tokenize is returned unchanged for the
/// planner to report.
pub(crate) fn number_placeholders(sql: &str) -> String {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.contains('?') {
        return sql.to_string();
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else { return sql.to_string() };
    // (line, column) of every `?` placeholder, 1-based, in order.
    let mut marks: Vec<(u64, u64)> = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    marks.reverse();
    let (mut out, mut position) = (String::with_capacity(sql.len() + 8), 0);
    let (mut line, mut column) = (1, 1);
    for c in sql.chars() {
        if c == '?' && marks.last() == Some(&(line, column)) {
            marks.pop();
            position += 1;
            out.push_str(&format!("${position}"));
        } else {
            out.push(c);
        }
        if c == '\n' {
            (line, column) = (line + 1, 1);
        } else {
            column += 1;
        }
    }
    out
}

/// DataFusion's message, which already holds its causes.
pub(crate) fn message(error: &DataFusionError) -> String {
    error.to_string()
}

/// The output schema of a plan (for prepared statements: before parameters are bound).
pub(crate) fn plan_schema(plan: &LogicalPlan) -> SchemaRef {
    Arc::new(plan.schema().as_arrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_positional_placeholders() {
        assert_eq!(
            number_placeholders("SELECT '?', 'it''s' AS q, x FROM t WHERE a = ? AND b > ? -- why?"),
            "SELECT '?', 'it''s' AS q, x FROM t WHERE a = $1 AND b > $2 -- why?"
        );
        assert_eq!(number_placeholders("SELECT\n  ?,\n ?"), "SELECT\n  $1,\n $2");
        assert_eq!(number_placeholders("SELECT 1"), "SELECT 1");
    }
}
