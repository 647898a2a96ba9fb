//! `faccia cluster scheduler`: Ballista's scheduler in this process, with faccia's functions
//! and object stores in the session that decodes submitted plans.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use super::codec::FacciaCodec;
use super::functions;
use super::stores::EnvStores;

/// How a scheduler is run.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerOptions {
    /// `/readyz` answers 200 once this many executors are registered.
    pub(crate) min_executors: usize,
    /// An executor not heard from for this long is dropped and its tasks rescheduled.
    pub(crate) executor_timeout: Duration,
}

/// Serves Ballista's scheduler on `listener` (gRPC, `GET /healthz`, `GET /readyz` on the one
/// port) until the process is stopped. Tasks are pulled by the executors (Ballista's
/// `PullStaged`), which puts an executor's decode error, naming what it lacks, into the job's
/// failure.
///
/// # Errors
/// An invalid configuration or a server that fails.
pub(crate) async fn serve(listener: tokio::net::TcpListener, options: SchedulerOptions) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let stores = Arc::new(EnvStores::default());
    let config = SchedulerConfig {
        bind_host: local.ip().to_string(),
        bind_port: local.port(),
        external_host: local.ip().to_string(),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        min_ready_executors: options.min_executors,
        executor_timeout_seconds: options.executor_timeout.as_secs().max(1),
        expire_dead_executor_interval_seconds: (options.executor_timeout.as_secs() / 4).clamp(1, 15),
        override_session_builder: Some(Arc::new(move |config| functions::scheduler_session(config, Arc::clone(&stores)))),
        override_physical_codec: Some(Arc::new(FacciaCodec::default())),
        ..SchedulerConfig::default()
    };
    config.validate().context("the scheduler's configuration")?;
    let cluster = BallistaCluster::new_from_config(&config).await.context("starting the scheduler's cluster state")?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config)).await.context("starting the scheduler")?;
    start_grpc_service_with_listener(listener, scheduler).await.context("the scheduler's server")?;
    Ok(())
}
