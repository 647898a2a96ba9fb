//! Analysts' SQL on an Apache Ballista cluster: `faccia cluster scheduler`, `faccia cluster
//! executor` (the same binary, so executors carry faccia's functions) and the client that
//! `faccia sql --cluster` and `faccia serve`'s endpoints use when `[cluster] scheduler` is set.
//!
//! How a query runs: the client plans it exactly as it would run it here — views expanded,
//! `votes` pruned by the Delta log's statistics, the fresh rows not yet in the table taken from
//! the log (or the server's memory) — with Ballista's restricted settings (`query::Runs`). The
//! physical plan (Parquet scans of explicit files, in-memory scans of fresh rows and registry
//! tables, DataFusion operators) is serialised with `datafusion-proto` and submitted to the
//! scheduler (`ballista_core::execution_plans::execute_physical_plan`), which splits it into
//! stages at its shuffles; executors read the files from the object store and the client
//! fetches the result over Arrow Flight. Functions travel by name (`functions`); object stores
//! are built from each process's `AWS_*` environment (`stores`). `ARCHITECTURE.md`, "Running a
//! cluster", has the commands.
//!
//! What stays here: statements that read no table (constants, DDL, `SET`), `EXPLAIN`, and
//! queries over `information_schema` alone (they describe this client's catalog); a query
//! mixing `information_schema` with other tables is refused.
//!
//! Architecture invariant: a query sent to the cluster gets the cluster's answer or an error
//! naming why it could not run there (`ClusterError`) — never a silent local fallback
//! (`it::cluster`).

pub(crate) mod codec;
pub(crate) mod executor;
pub(crate) mod functions;
pub(crate) mod scheduler;
pub(crate) mod stores;

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt as _;
use ballista_core::planner::scans_only_information_schema;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion_proto::physical_plan::AsExecutionPlan as _;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::{StreamExt as _, TryStreamExt as _};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::query::Runs;

/// The `[cluster]` table of the configuration: where `faccia serve` sends analysts' queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The scheduler's address, `host:port` (`faccia cluster scheduler --bind`); `None` (the
    /// default) runs queries in the server's process.
    pub scheduler: Option<String>,
    /// Scan tasks and shuffle partitions per query. About twice the cluster's slots keeps
    /// every executor busy; more adds per-task overhead (default 8).
    pub partitions: usize,
    /// The largest plan sent, in bytes (default 16 MiB, the gRPC limit Ballista's scheduler
    /// and executors accept). Plans carry the fresh rows and registry tables they scan.
    pub max_plan_bytes: usize,
    /// Seconds after which a query still running on the cluster is given up, with an error
    /// (default 3,600): a job the cluster never finishes must not hold an analyst's session.
    pub query_timeout_s: u64,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig { scheduler: None, partitions: 8, max_plan_bytes: DEFAULT_MAX_PLAN_BYTES, query_timeout_s: 3_600 }
    }
}

/// Ballista's default gRPC message limit, in bytes: the scheduler's and executors' too.
pub(crate) const DEFAULT_MAX_PLAN_BYTES: usize = 16 * 1024 * 1024;

impl ClusterConfig {
    /// Where a context built for this configuration runs its queries.
    pub fn runs(&self) -> Runs {
        match self.scheduler {
            Some(_) => Runs::OnCluster { partitions: self.partitions },
            None => Runs::Here,
        }
    }
}

/// Why a query did not run on the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Nothing answers at the scheduler's address.
    #[error(
        "the cluster scheduler at {scheduler} does not answer ({reason}): start it with `faccia cluster scheduler`, or run without the cluster"
    )]
    Unreachable {
        /// The configured address.
        scheduler: String,
        /// The connection error.
        reason: String,
    },
    /// The plan holds an operator the cluster's codec cannot write.
    #[error("this query cannot run on the cluster: the plan operator {operator} cannot be sent to executors; run it without the cluster")]
    Unshippable {
        /// The operator's name (`ExecutionPlan::name`).
        operator: String,
    },
    /// The serialised plan is larger than the cluster accepts.
    #[error(
        "the query's plan is {bytes} bytes (it carries the in-memory rows it scans: fresh votes, registry tables); the cluster accepts \
         {limit} bytes (max_plan_bytes): query after the next flush, or raise [cluster] max_plan_bytes together with the scheduler's and executors' limits"
    )]
    PlanTooLarge {
        /// The plan's size, in bytes.
        bytes: usize,
        /// `max_plan_bytes`, in bytes.
        limit: usize,
    },
    /// The cluster did not finish the query within `query_timeout_s`.
    #[error("the cluster did not finish the query within {seconds} s (query_timeout_s); the scheduler's log says why")]
    TimedOut {
        /// `query_timeout_s`.
        seconds: u64,
    },
    /// A query mixing `information_schema` with other tables.
    #[error("the cluster cannot run a query that reads information_schema together with other tables: query information_schema on its own")]
    MixedCatalog,
    /// Planning here, or the job on the cluster, failed: the message of the part that failed.
    #[error("{0}")]
    Query(String),
}

/// A client of one Ballista scheduler.
#[derive(Debug, Clone)]
pub struct Cluster {
    scheduler: String,
    max_plan_bytes: usize,
    timeout: Duration,
}

impl Cluster {
    /// The client of the scheduler in `config` (`None` when none is configured).
    pub fn from_config(config: &ClusterConfig) -> Option<Cluster> {
        config.scheduler.as_ref().map(|scheduler| Cluster {
            scheduler: scheduler.clone(),
            max_plan_bytes: config.max_plan_bytes,
            timeout: Duration::from_secs(config.query_timeout_s.max(1)),
        })
    }

    /// Runs a planned statement of `ctx` (a context built with `Runs::OnCluster`) on the
    /// cluster, or here when it reads no table, is `EXPLAIN`, or reads `information_schema`
    /// only; the result streams back.
    ///
    /// # Errors
    /// `ClusterError`: the scheduler unreachable, an operator that cannot ship, a plan over
    /// `max_plan_bytes`, or the job's failure with the cluster's message.
    pub async fn stream(&self, ctx: &SessionContext, frame: DataFrame) -> Result<SendableRecordBatchStream, ClusterError> {
        if stays_here(frame.logical_plan())? {
            return frame.execute_stream().await.map_err(|e| ClusterError::Query(message(&e)));
        }
        let plan = frame.create_physical_plan().await.map_err(|e| ClusterError::Query(message(&e)))?;
        let codec = codec::FacciaCodec::default();
        // Serialise once here, to name what cannot travel and to check the size before the
        // scheduler refuses it with a transport error.
        let node = PhysicalPlanNode::try_from_physical_plan(Arc::clone(&plan), &codec).map_err(|e| match codec.refused() {
            Some(operator) => ClusterError::Unshippable { operator },
            None => ClusterError::Query(message(&e)),
        })?;
        let bytes = node.encoded_len();
        if bytes > self.max_plan_bytes {
            return Err(ClusterError::PlanTooLarge { bytes, limit: self.max_plan_bytes });
        }
        self.reachable().await?;
        let config = ctx.copied_config();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = ClusterError::TimedOut { seconds: self.timeout.as_secs() };
        let ballista = config.ballista_config();
        let submitted = execute_physical_plan::<PhysicalPlanNode>(
            format!("http://{}", self.scheduler),
            &ballista,
            plan,
            &codec,
            ctx.session_id(),
            config,
        );
        let stream = tokio::time::timeout_at(deadline, submitted)
            .await
            .map_err(|_| ClusterError::TimedOut { seconds: self.timeout.as_secs() })?
            .map_err(|e| ClusterError::Query(message(&e)))?;
        let schema = stream.schema();
        // Every batch within the deadline too: the job's stages run while the result streams.
        let timed_out = timed_out.to_string();
        let batches = futures::stream::unfold(Some(stream), move |state| {
            let timed_out = timed_out.clone();
            async move {
                let mut stream = state?;
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(batch))) => Some((Ok(batch), Some(stream))),
                    Ok(Some(Err(e))) => Some((Err(DataFusionError::Execution(message(&e))), None)),
                    Ok(None) => None,
                    Err(_) => Some((Err(DataFusionError::Execution(timed_out)), None)),
                }
            }
        });
        Ok(Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, batches)))
    }

    /// Plans `sql` in `ctx`, runs it as `stream` does and collects the result with its schema.
    ///
    /// # Errors
    /// As `stream`, and SQL errors.
    pub async fn run_with_schema(&self, ctx: &SessionContext, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), ClusterError> {
        let frame = ctx.sql(sql).await.map_err(|e| ClusterError::Query(message(&e)))?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = self.stream(ctx, frame).await?.try_collect().await.map_err(|e| ClusterError::Query(message(&e)))?;
        Ok((schema, batches))
    }

    /// A TCP connection to the scheduler within 3 s, so a stopped scheduler is named as such
    /// (Ballista's client would report a transport error, or wait).
    async fn reachable(&self) -> Result<(), ClusterError> {
        let unreachable = |reason: String| ClusterError::Unreachable { scheduler: self.scheduler.clone(), reason };
        let addresses: Vec<_> = self.scheduler.to_socket_addrs().map_err(|e| unreachable(e.to_string()))?.collect();
        let Some(address) = addresses.first() else { return Err(unreachable("the name has no address".into())) };
        match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable("no answer within 3 s".into())),
        }
    }
}

/// Whether `plan` runs on the client: it reads no table (a constant, DDL, `SET`), is an
/// `EXPLAIN`, or reads `information_schema` only.
fn stays_here(plan: &LogicalPlan) -> Result<bool, ClusterError> {
    if matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_)) {
        return Ok(true);
    }
    if scans_only_information_schema(plan).map_err(|_| ClusterError::MixedCatalog)? {
        return Ok(true);
    }
    let mut reads_a_table = false;
    plan.apply_with_subqueries(|node| {
        reads_a_table |= matches!(node, LogicalPlan::TableScan(_));
        Ok(if reads_a_table { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })
    .map_err(|e| ClusterError::Query(message(&e)))?;
    Ok(!reads_a_table)
}

/// The message of a DataFusion or Ballista error. For a function or operator the cluster lacks
/// (`codec`'s messages), only the sentence naming it: a job's failure brings it back wrapped
/// in Ballista's error texts and a debug dump of the plan.
pub(crate) fn message(error: &DataFusionError) -> String {
    let text = error.to_string();
    for marker in ["is not available on the cluster", "cannot be sent to the cluster"] {
        if let Some(at) = text.find(marker) {
            // From the start of the sentence naming the function or operator.
            let start = text[..at].rfind(['"', '(', '[']).map_or(0, |i| i + 1);
            let end = text[at..].find(['"', ')', ']']).map_or(text.len(), |i| at + i);
            return text[start..end].trim().to_string();
        }
    }
    text
}

#[cfg(test)]
mod tests;
