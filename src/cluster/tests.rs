//! The trip a plan makes to an executor, without processes: every view and the analyst
//! queries, planned for the cluster over a dataset with fresh rows, serialised with the
//! cluster's codec, decoded in an executor's state (its functions and stores only) and run
//! there, answer as the same SQL run here. The processes are `it::cluster`'s.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use prost::Message;

use super::*;
use crate::limits::QueryLimits;
use crate::model::Face;
use crate::query::tests::{AGLIE, Fixed, library_context, rome, votes};
use crate::storage::buffer::VoteBuffer;
use crate::storage::engine::MemorySnapshot;

/// Contexts over the query library's test dataset plus 30 fresh rows (not yet in the table):
/// one running here, one planning for the cluster.
async fn contexts() -> (tempfile::TempDir, SessionContext, SessionContext) {
    let (dir, _) = library_context().await;
    let mut rows = VoteBuffer::default();
    votes(&mut rows, AGLIE, 2, Face::Negative, None, rome(2026, 11, 16, 15, 0), 30, 0);
    let fresh = Arc::new(Fixed(MemorySnapshot { watermark: 10, versions: [1; 3], generations: vec![(12, vec![rows.finish()])] }));
    let limits = QueryLimits::default();
    let here = crate::query::build(dir.path(), Arc::clone(&fresh) as _, &limits, Runs::Here).await.unwrap();
    let there = crate::query::build(dir.path(), fresh, &limits, Runs::OnCluster { partitions: 3 }).await.unwrap();
    (dir, here, there)
}

/// An executor's task context: DataFusion's and faccia's functions, stores from the
/// environment, nothing of the client's session.
fn executor_context() -> Arc<TaskContext> {
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(stores::EnvStores::default()))
        .build_arc()
        .unwrap();
    use ballista_core::extension::SessionConfigExt as _;
    functions::state(SessionConfig::new_with_ballista(), runtime).unwrap().task_ctx()
}

/// The plan as an executor gets it: encoded, decoded in `executor_context`.
fn shipped(plan: Arc<dyn ExecutionPlan>, task: &TaskContext) -> Arc<dyn ExecutionPlan> {
    let codec = codec::FacciaCodec::default();
    let bytes = PhysicalPlanNode::try_from_physical_plan(plan, &codec).unwrap().encode_to_vec();
    PhysicalPlanNode::decode(bytes.as_slice()).unwrap().try_into_physical_plan(task, &codec).unwrap()
}

/// Rows as sorted text, numbers to 9 significant digits (sums added in another order).
fn comparable(batches: &[RecordBatch]) -> Vec<String> {
    let text = arrow::util::pretty::pretty_format_batches(batches).unwrap().to_string();
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| {
            l.split('|')
                .map(|f| match f.trim().parse::<f64>() {
                    Ok(x) if f.contains('.') => format!("{x:.9e}"),
                    _ => f.trim().to_string(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_and_analyst_query_answers_the_same_after_the_trip_to_an_executor() {
    let (_dir, here, there) = contexts().await;
    let views = crate::query::run(&here, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
        .await
        .unwrap();
    let views: Vec<String> = views
        .iter()
        .flat_map(|b| arrow::array::AsArray::as_string::<i32>(b.column(0)).iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>())
        .collect();
    assert!(views.len() >= 25 && views.iter().any(|v| v == "vote_counts"), "{views:?}");
    // Every table and view, as a whole.
    let mut queries: Vec<String> = views.iter().map(|v| format!("SELECT * FROM {v}")).collect();
    // The shapes of tools/bench_sql.py's queries over this dataset's days.
    queries.extend([
        "SELECT service, votes, csat_pct, wilson_low_pct FROM service_index ORDER BY service".to_string(),
        "SELECT municipality, service, CAST(sum(votes) AS BIGINT) AS votes, wilson_lower(sum(positive), sum(votes)) AS w \
         FROM municipality_service_counts WHERE misuse = 0 AND date > DATE '2026-11-20' - INTERVAL '30 days' \
         GROUP BY municipality, service ORDER BY w DESC, municipality, service LIMIT 20"
            .into(),
        "SELECT weekday, hour, votes, csat_pct FROM heat_map WHERE region = 'Piemonte' ORDER BY weekday, hour".into(),
        "SELECT service, CAST(sum(votes) AS BIGINT) AS votes, csat(sum(positive), sum(votes)) AS csat FROM municipality_service_counts \
         WHERE municipality = 1001 AND date = DATE '2026-11-16' AND misuse = 0 GROUP BY service ORDER BY service"
            .into(),
        "SELECT reason, CAST(sum(votes) AS BIGINT) AS votes, round(share_pct(sum(votes), sum(sum(votes)) OVER ()), 1) AS share_pct \
         FROM vote_counts WHERE misuse = 0 AND face = -1 GROUP BY reason ORDER BY reason NULLS LAST"
            .into(),
        "SELECT v.municipality, m.name, count(*) AS votes, csat_of(v.face) FROM votes v JOIN municipalities m USING (municipality) GROUP BY 1, 2".into(),
        "SELECT count(*), sum(face) FROM votes".into(),
    ]);
    let task = executor_context();
    for sql in &queries {
        let expected = crate::query::run(&here, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let plan = there.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let got = collect(shipped(plan, &task), Arc::clone(&task)).await.unwrap_or_else(|e| panic!("{sql} after the trip: {e}"));
        let (expected, got) = (comparable(&expected), comparable(&got));
        let differ: Vec<_> = expected.iter().zip(&got).filter(|(a, b)| a != b).take(2).collect();
        assert!(
            expected.len() == got.len() && differ.is_empty(),
            "{sql}: {} rows here, {} there; first differences {differ:#?}",
            expected.len(),
            got.len()
        );
    }
    let fresh = crate::query::run(&here, "SELECT count(*) FROM votes WHERE service = 2").await.unwrap();
    assert_eq!(comparable(&fresh), vec!["|30|"], "the fresh rows are in the answers compared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_plan_scans_only_the_days_its_query_asks_for() {
    let (_dir, _, there) = contexts().await;
    let plan = there.sql("SELECT count(*) FROM votes WHERE date = DATE '2026-11-09'").await.unwrap().create_physical_plan().await.unwrap();
    let text = displayable(shipped(plan, &executor_context()).as_ref()).indent(true).to_string();
    assert!(text.contains("date=2026-11-09"), "{text}");
    assert!(!text.contains("date=2026-11-16"), "the other day's files are pruned before the plan leaves: {text}");
}

/// One batch of one column, as a stream: a table the cluster's codec has no message for.
#[derive(Debug)]
struct OneBatch(SchemaRef);

impl PartitionStream for OneBatch {
    fn schema(&self) -> &SchemaRef {
        &self.0
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = RecordBatch::try_new(Arc::clone(&self.0), vec![Arc::new(arrow::array::Int64Array::from(vec![1]))]).unwrap();
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.0), futures::stream::iter([Ok(batch)])))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_that_cannot_travel_is_named_before_anything_is_sent() {
    let (_dir, _, there) = contexts().await;
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let table = StreamingTable::try_new(Arc::clone(&schema), vec![Arc::new(OneBatch(schema))]).unwrap();
    there.register_table("sensor", Arc::new(table)).unwrap();
    // No scheduler listens here: the operator is refused before the connection is tried.
    let cluster = Cluster { scheduler: "127.0.0.1:9".into(), max_plan_bytes: DEFAULT_MAX_PLAN_BYTES, timeout: Duration::from_secs(60) };
    let error = cluster.run_with_schema(&there, "SELECT sum(x) FROM sensor").await.unwrap_err();
    assert!(matches!(&error, ClusterError::Unshippable { operator } if operator == "StreamingTableExec"), "{error}");
    assert!(error.to_string().contains("the plan operator StreamingTableExec cannot be sent to executors"), "{error}");
    // Catalog queries stay here; mixing the catalog with tables is refused.
    let (_, batches) = cluster.run_with_schema(&there, "SELECT count(*) FROM information_schema.tables").await.unwrap();
    assert_eq!(batches[0].num_rows(), 1);
    let error = cluster
        .run_with_schema(&there, "SELECT count(*) FROM votes WHERE service IN (SELECT 1 FROM information_schema.tables)")
        .await
        .unwrap_err();
    assert!(matches!(error, ClusterError::MixedCatalog), "{error}");
}
