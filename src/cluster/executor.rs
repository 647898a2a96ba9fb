//! `faccia cluster executor`: Ballista's executor in this process, with faccia's functions
//! (from the same list as every SQL context) and object stores from the `AWS_*` environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use ballista_core::RuntimeProducer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;

use super::codec::FacciaCodec;
use super::functions;
use super::stores::EnvStores;

/// How an executor is run.
#[derive(Debug, Clone)]
pub(crate) struct ExecutorOptions {
    /// The scheduler's address.
    pub(crate) scheduler: SocketAddr,
    /// The Arrow Flight address the executor serves shuffle and result partitions on; other
    /// executors and clients connect to it, so it is advertised as given (not 0.0.0.0).
    pub(crate) flight: SocketAddr,
    /// Tasks run at once (0: one per core).
    pub(crate) slots: usize,
    /// Where shuffle files and spills go.
    pub(crate) work_dir: PathBuf,
    /// The memory pool shared by the tasks, in bytes (`None`: 70 % of the host's memory — set
    /// it when several executors share a host).
    pub(crate) memory_bytes: Option<u64>,
}

/// Runs an executor until SIGINT/SIGTERM or the scheduler stops it; on the way out it tells
/// the scheduler and lets its tasks finish.
///
/// # Errors
/// A work directory that cannot be made, a scheduler that does not answer at start, or an
/// executor that fails.
pub(crate) async fn run(options: ExecutorOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.work_dir).with_context(|| format!("creating {}", options.work_dir.display()))?;
    let stores = Arc::new(EnvStores::default());
    let registry = functions::state(SessionConfig::new(), RuntimeEnvBuilder::new().build_arc()?)?;
    let temp = options.work_dir.clone();
    let runtime: RuntimeProducer = Arc::new(move |_config: &SessionConfig| {
        RuntimeEnvBuilder::new().with_temp_file_path(temp.clone()).with_object_store_registry(Arc::clone(&stores) as _).build_arc()
    });
    let flight_host = options.flight.ip().to_string();
    let config = ExecutorProcessConfig {
        bind_host: flight_host.clone(),
        external_host: Some(flight_host),
        port: options.flight.port(),
        scheduler_host: options.scheduler.ip().to_string(),
        scheduler_port: options.scheduler.port(),
        // 0: one attempt (Ballista 55's retry loop never times out).
        scheduler_connect_timeout_seconds: 0,
        vcores: options.slots,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: Some(options.work_dir.display().to_string()),
        memory_pool_size: options.memory_bytes,
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&registry))),
        override_runtime_producer: Some(runtime),
        override_physical_codec: Some(Arc::new(FacciaCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .with_context(|| format!("the executor stopped (scheduler {}: is `faccia cluster scheduler` running there?)", options.scheduler))?;
    Ok(())
}
