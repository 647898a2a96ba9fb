//! The SQL functions every cluster process knows: DataFusion's (all of them, nested ones
//! included) and faccia's (`query::functions`). A plan names its functions; the scheduler
//! and each executor find them by name in the state built here.

use std::sync::Arc;

use datafusion::common::Result as DfResult;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry as _, SessionState, SessionStateBuilder};
use datafusion::prelude::SessionConfig;

use super::stores::EnvStores;

/// A session state with DataFusion's default features and faccia's functions over `runtime`.
///
/// # Errors
/// When a function cannot be registered (never for faccia's list).
pub(crate) fn state(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> DfResult<SessionState> {
    let mut state = SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features().build();
    // `register_*`, not `SessionStateBuilder::with_scalar_functions`: that one replaces the
    // default list instead of adding to it.
    let (scalars, aggregates) = crate::query::functions();
    for udf in scalars {
        state.register_udf(Arc::new(udf))?;
    }
    for udaf in aggregates {
        state.register_udaf(Arc::new(udaf))?;
    }
    Ok(state)
}

/// The scheduler's session for each job (`SchedulerConfig::override_session_builder`): it
/// decodes the submitted plan, so it needs faccia's functions and the buckets' stores.
///
/// # Errors
/// As `state`.
pub(crate) fn scheduler_session(config: SessionConfig, stores: Arc<EnvStores>) -> DfResult<SessionState> {
    let runtime = RuntimeEnvBuilder::new().with_object_store_registry(stores).build_arc()?;
    state(config, runtime)
}
