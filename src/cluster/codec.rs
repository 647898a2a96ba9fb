//! The physical codec of every cluster process: Ballista's, with errors that name what could
//! not travel. Plans reach the cluster as `datafusion-proto` messages; an operator this codec
//! cannot write is named (`Unshippable`), and a function a process does not have is named
//! with the build that lacks it, instead of a debug dump of the whole plan.

use std::sync::{Arc, Mutex};

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

/// Ballista's physical codec, remembering the first operator it could not encode.
#[derive(Debug, Default)]
pub(crate) struct FacciaCodec {
    ballista: BallistaPhysicalExtensionCodec,
    refused: Mutex<Option<String>>,
}

impl FacciaCodec {
    /// The name of the first operator `try_encode` refused, if any.
    pub(crate) fn refused(&self) -> Option<String> {
        self.refused.lock().expect("not poisoned").clone()
    }

    fn missing(kind: &str, name: &str) -> DataFusionError {
        DataFusionError::Plan(format!(
            "{kind} function {name} is not available on the cluster: this process runs faccia {}, which does not have it: \
             the client registered it or runs another build; run the query without the cluster",
            env!("CARGO_PKG_VERSION")
        ))
    }
}

impl PhysicalExtensionCodec for FacciaCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.ballista.try_decode(buf, inputs, ctx, converter)
    }

    fn try_encode(&self, node: Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>, converter: &dyn PhysicalProtoConverterExtension) -> DfResult<()> {
        let name = node.name().to_string();
        self.ballista.try_encode(node, buf, converter).map_err(|_| {
            self.refused.lock().expect("not poisoned").get_or_insert_with(|| name.clone());
            DataFusionError::NotImplemented(format!("the plan operator {name} cannot be sent to the cluster"))
        })
    }

    // Functions travel by name and are looked up in the process's registry first
    // (`cluster::functions`); these run only when that lookup failed.
    fn try_decode_udf(&self, name: &str, _buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        Err(FacciaCodec::missing("scalar", name))
    }

    fn try_decode_udaf(&self, name: &str, _buf: &[u8]) -> DfResult<Arc<AggregateUDF>> {
        Err(FacciaCodec::missing("aggregate", name))
    }

    fn try_decode_udwf(&self, name: &str, _buf: &[u8]) -> DfResult<Arc<WindowUDF>> {
        Err(FacciaCodec::missing("window", name))
    }
}
