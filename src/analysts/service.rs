//! The shared SQL service that Flight SQL (`flight`) and HTTP (`http`) both call: one
//! DataFusion context per scope (the unscoped one, and scoped ones built on first use and
//! cached), read-only statement options, the analysts' limits (statement size, concurrent
//! queries, result rows) and the messages an analyst sees.
//!
//! The API for every endpoint (the dashboard's too): `authorize` (a bearer header → its
//! `Scope`), then `collect_in` (or `plan_in` and `stream_in`) in that scope. A scoped context
//! is built by `query::server_context_in`, whose tables are filtered before any SQL sees them.
//!
//! Architecture invariant: statements from the network are read-only — no DDL, no DML, no
//! `SET`, no `COPY` — so an analyst can never write to the server's disk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::analysts::tokens::AnalystTokens;
use crate::cluster::Cluster;
use crate::limits::QueryLimits;
use crate::query::scope::Scope;

/// Scoped contexts kept at once (the least recently built goes first).
pub(crate) const SCOPED_CONTEXTS_MAX: usize = 64;
/// Age after which a scoped context is built again, so that a union's new members (or a
/// removed union) are seen: seconds.
pub(crate) const SCOPED_CONTEXT_TTL: Duration = Duration::from_secs(60);

/// Builds a context restricted to a scope (the server: `query::server_context_in`).
pub(crate) type ScopedContexts = Arc<dyn Fn(Scope) -> BoxFuture<'static, datafusion::error::Result<SessionContext>> + Send + Sync>;

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
    /// Builds a scoped context; `None`: scoped tokens are refused (no builder given).
    open_scoped: Option<ScopedContexts>,
    /// Scoped contexts built, oldest first, with when.
    scoped: Mutex<VecDeque<(Scope, Instant, SessionContext)>>,
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
        SqlService { ctx, tokens, limits, cluster, permits, open_scoped: None, scoped: Mutex::new(VecDeque::new()) }
    }

    /// The same service, answering scoped tokens in contexts `open` builds (at most
    /// `SCOPED_CONTEXTS_MAX` kept, each for `SCOPED_CONTEXT_TTL`).
    pub(crate) fn with_scopes(self, open: ScopedContexts) -> SqlService {
        SqlService { open_scoped: Some(open), ..self }
    }

    /// The scope of a request's `authorization` header (`Bearer TOKEN`): everything for an
    /// analyst token, the token's scope for one of `faccia tokens` (as `tokens.json` is now:
    /// a revoked token is refused at once).
    ///
    /// # Errors
    /// The message for the client: header missing, not a bearer token, or unknown token.
    pub(crate) fn authorize(&self, authorization_header: Option<&str>) -> Result<Scope, &'static str> {
        self.tokens.authorize(authorization_header)
    }

    /// The context statements of `scope` run in: the unscoped one for everything, else a
    /// scoped one (built now if it is not kept or too old).
    ///
    /// # Errors
    /// `Execution` when the scoped context cannot be built.
    pub(crate) async fn context(&self, scope: &Scope) -> Result<SessionContext, SqlError> {
        if *scope == Scope::Everything {
            return Ok(self.ctx.clone());
        }
        {
            let kept = self.scoped.lock().expect("scoped contexts lock");
            if let Some((_, _, ctx)) = kept.iter().find(|(s, at, _)| s == scope && at.elapsed() < SCOPED_CONTEXT_TTL) {
                return Ok(ctx.clone());
            }
        }
        let open =
            self.open_scoped.as_ref().ok_or_else(|| SqlError::Execution(format!("this service answers no scoped token ({scope})")))?;
        let ctx = open(scope.clone()).await.map_err(|e| SqlError::Execution(message(&e)))?;
        let mut kept = self.scoped.lock().expect("scoped contexts lock");
        kept.retain(|(s, _, _)| s != scope);
        kept.push_back((scope.clone(), Instant::now(), ctx.clone()));
        while kept.len() > SCOPED_CONTEXTS_MAX {
            kept.pop_front();
        }
        Ok(ctx)
    }

    /// Plans a read-only statement in `scope`'s context (its tables are already filtered).
    ///
    /// # Errors
    /// Too long, not read-only, not valid SQL over the scope's tables, or the scoped context
    /// cannot be built.
    pub(crate) async fn plan_in(&self, scope: &Scope, sql: &str) -> Result<DataFrame, SqlError> {
        if sql.len() > self.limits.sql_bytes_max {
            return Err(SqlError::TooLong { found: sql.len(), max: self.limits.sql_bytes_max });
        }
        let ctx = self.context(scope).await?;
        let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let sql = number_placeholders(sql);
        ctx.sql_with_options(&sql, read_only).await.map_err(|e| SqlError::Plan(message(&e)))
    }

    /// Waits for a turn among `concurrent_queries_max`; hold the permit while the query runs.
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.permits).acquire_owned().await.expect("the semaphore is never closed")
    }

    /// Runs a statement planned by `plan_in(scope, …)` as a stream of batches (on the
    /// cluster, with that scope's context's settings).
    ///
    /// # Errors
    /// When it cannot start.
    pub(crate) async fn stream_in(&self, scope: &Scope, frame: DataFrame) -> Result<SendableRecordBatchStream, SqlError> {
        match &self.cluster {
            Some(cluster) => {
                let ctx = self.context(scope).await?;
                cluster.stream(&ctx, frame).await.map_err(|e| SqlError::Execution(e.to_string()))
            }
            None => frame.execute_stream().await.map_err(|e| SqlError::Execution(message(&e))),
        }
    }

    /// Runs a statement in `scope`'s context (what a token of that scope may see, and nothing
    /// else) and collects at most `http_result_rows_max` rows, with the result's schema.
    ///
    /// # Errors
    /// As `plan_in`, execution errors, or a result past the row limit.
    pub(crate) async fn collect_in(&self, scope: &Scope, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
        let frame = self.plan_in(scope, sql).await?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let _permit = self.permit().await;
        let mut stream = self.stream_in(scope, frame).await?;
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
