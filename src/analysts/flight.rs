//! The Arrow Flight SQL server (gRPC over HTTP/2, tonic) that analysts' tools connect to:
//! ADBC (Python, R, Go), the Flight SQL JDBC driver (DBeaver), Grafana's Flight SQL plugin.
//!
//! What it answers: statement queries, prepared statements (with parameters), and the catalog
//! calls clients issue on connect and while browsing — catalogs, schemas, tables (with their
//! Arrow schemas), table types, SQL info, XDBC types, and primary, imported, exported and
//! cross-referenced keys (none: faccia's tables declare no keys). What those calls say about
//! the SQL is `metadata`'s. Every call needs an analyst bearer token (`authorization: Bearer
//! TOKEN`); the handshake exchanges basic authentication (any user name, the token as
//! password) for the same bearer token, for clients configured with a user and password.
//!
//! Results stream from DataFusion to the client batch by batch; a query holds one of the
//! `concurrent_queries_max` permits until its stream ends. Every schema and batch leaves with
//! plain types (Utf8, not DataFusion's Utf8View), which JDBC drivers before 19.0 need; and every
//! parameter has a type a JDBC driver can bind (`parameter_schema`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine;
use bytes::Bytes;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::expr::Placeholder;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::prelude::DataFrame;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::analysts::metadata::{self, plain_batch, plain_schema};
use crate::analysts::service::{SqlError, SqlService, plan_schema};
use crate::query::scope::Scope;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;
type ActionStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::Result, Status>> + Send + 'static>>;

/// A prepared statement: its SQL, the scope of the token that prepared it (only a token of the
/// same scope may bind, run or close it) and the parameters bound last.
#[derive(Debug, Clone)]
struct Prepared {
    sql: String,
    scope: Scope,
    parameters: Vec<ScalarValue>,
}

/// Open prepared statements, oldest first; bounded by `prepared_statements_max`.
#[derive(Debug, Default)]
struct PreparedStatements {
    next: u64,
    order: VecDeque<Bytes>,
    by_handle: HashMap<Bytes, Prepared>,
}

/// The Flight SQL service.
pub(crate) struct FlightSql {
    sql: Arc<SqlService>,
    prepared: Mutex<PreparedStatements>,
    info: SqlInfoData,
    /// The schema of a SqlInfo answer, map entries named as Java reads them.
    info_schema: SchemaRef,
    types: XdbcTypeInfoData,
}

impl FlightSql {
    /// The service over `sql`, with no prepared statements open and its fixed SQL info and type
    /// list (`metadata`: read-only, no transactions, the functions of `sql`'s context).
    pub(crate) fn new(sql: Arc<SqlService>) -> FlightSql {
        let info = metadata::sql_info(&sql.ctx, sql.limits.sql_bytes_max);
        let all = info.record_batch([]).and_then(|b| Ok(metadata::with_java_map_names(&b)?));
        let info_schema = all.expect("the SQL info answer is well formed").schema();
        FlightSql { sql, prepared: Mutex::new(PreparedStatements::default()), info, info_schema, types: metadata::xdbc_types() }
    }

    /// The scope of the request's bearer token.
    fn check(&self, metadata: &MetadataMap) -> Result<Scope, Status> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.sql.authorize(header).map_err(Status::unauthenticated)
    }

    /// The prepared statement `handle`, when `scope` prepared it: a statement planned in one
    /// scope's context is never run, bound or closed under a token of another scope.
    fn prepared(&self, handle: &Bytes, scope: &Scope) -> Result<Prepared, Status> {
        let statements = self.prepared.lock().expect("prepared statements lock");
        let prepared = statements
            .by_handle
            .get(handle)
            .cloned()
            .ok_or_else(|| Status::not_found("unknown prepared statement handle (closed, or evicted past prepared_statements_max)"))?;
        if prepared.scope != *scope {
            return Err(Status::permission_denied(
                "this prepared statement was created under a token of another scope: prepare it again with this token",
            ));
        }
        Ok(prepared)
    }

    async fn frame(&self, prepared: &Prepared) -> Result<DataFrame, Status> {
        let frame = self.sql.plan_in(&prepared.scope, &prepared.sql).await.map_err(status)?;
        if prepared.parameters.is_empty() {
            return Ok(frame);
        }
        frame.with_param_values(prepared.parameters.clone()).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// Runs a planned statement and streams it as Flight data.
    async fn run(&self, scope: &Scope, frame: DataFrame) -> Result<Response<DoGetStream>, Status> {
        let schema: SchemaRef = Arc::new(plain_schema(frame.schema().as_arrow()));
        let permit = self.sql.permit().await;
        let stream = self.sql.stream_in(scope, frame).await.map_err(status)?;
        Ok(Response::new(encode(schema, stream, permit)))
    }

    /// Every table and view of `scope`'s context: (catalog, schema, table, type, Arrow schema).
    async fn tables(&self, scope: &Scope) -> Result<Vec<(String, String, String, &'static str, SchemaRef)>, Status> {
        let ctx = self.sql.context(scope).await.map_err(status)?;
        let mut tables = Vec::new();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                for table_name in schema.table_names() {
                    let Ok(Some(table)) = schema.table(&table_name).await else { continue };
                    let kind = if table.table_type() == TableType::View { "VIEW" } else { "TABLE" };
                    let table_schema = Arc::new(plain_schema(&table.schema()));
                    tables.push((catalog_name.clone(), schema_name.clone(), table_name, kind, table_schema));
                }
            }
        }
        tables.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        Ok(tables)
    }

    /// The session options there are: the catalog and schema statements run in.
    fn session_options(&self) -> HashMap<String, session::SessionOptionValue> {
        let options = self.sql.ctx.state().config_options().catalog.clone();
        [("catalog", options.default_catalog), ("schema", options.default_schema)]
            .into_iter()
            .map(|(name, value)| {
                (name.to_string(), session::SessionOptionValue { option_value: Some(session::OptionValue::String(value)) })
            })
            .collect()
    }

    /// Accepts each option that names what is already so; an error for any other.
    fn set_session_options(&self, request: session::SetSessionOptionsRequest) -> session::SetSessionOptionsResult {
        let current = self.session_options();
        let errors = request
            .session_options
            .into_iter()
            .filter_map(|(name, value)| {
                let error = match current.get(&name) {
                    None => session::INVALID_NAME,
                    Some(current) if *current == value => return None,
                    Some(_) => session::INVALID_VALUE,
                };
                Some((name, session::SessionOptionError { value: error }))
            })
            .collect();
        session::SetSessionOptionsResult { errors }
    }
}

/// Streams record batches as Flight data with plain types, holding the query's permit until the end.
fn encode(schema: SchemaRef, stream: SendableRecordBatchStream, permit: OwnedSemaphorePermit) -> DoGetStream {
    let batches = stream.map_err(|e| FlightError::ExternalError(Box::new(e))).and_then(|batch| async move { Ok(plain_batch(batch)?) });
    let data = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map(move |item| {
        let _held = &permit;
        item.map_err(Status::from)
    });
    Box::pin(data)
}

/// One batch as a Flight data stream (catalog answers).
fn single(batch: Result<RecordBatch, FlightError>) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    let stream =
        FlightDataEncoderBuilder::new().with_schema(batch.schema()).build(futures::stream::once(async { Ok(batch) })).map_err(Status::from);
    Ok(Response::new(Box::pin(stream)))
}

fn status(error: SqlError) -> Status {
    match error {
        SqlError::Plan(_) | SqlError::TooLong { .. } => Status::invalid_argument(error.to_string()),
        SqlError::TooManyRows { .. } => Status::resource_exhausted(error.to_string()),
        SqlError::Execution(_) => Status::internal(error.to_string()),
    }
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

/// A FlightInfo whose one endpoint's ticket is `ticket`, on this same server.
fn flight_info(schema: &Schema, ticket: impl ProstMessageExt, descriptor: FlightDescriptor) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// An empty answer with `schema` (the key calls: faccia's tables declare no keys).
fn empty(schema: &SchemaRef) -> Result<Response<DoGetStream>, Status> {
    single(Ok(RecordBatch::new_empty(Arc::clone(schema))))
}

/// The parameter schema of a planned statement: `$1`, `$2`, … in order, each with a type a
/// JDBC driver can bind (it builds its vectors from this schema and cannot put a value in a
/// Null one): the type DataFusion infers (plain, not a view type), or where it infers none,
/// Int64 in LIMIT and OFFSET (DataFusion takes only integers there) and Utf8 elsewhere (every
/// client can bind text; DataFusion coerces it once the value is in the plan).
fn parameter_schema(frame: &DataFrame) -> Result<Schema, Status> {
    let plan = frame.logical_plan();
    let types = plan.get_parameter_types().map_err(|e| Status::invalid_argument(e.to_string()))?;
    let limit_ids = limit_placeholders(plan).map_err(|e| Status::internal(e.to_string()))?;
    let mut names: Vec<_> = types.into_iter().collect();
    names.sort_by_key(|(name, _)| name.trim_start_matches('$').parse::<u32>().unwrap_or(u32::MAX));
    let fields = names.into_iter().map(|(name, inferred)| {
        let data_type = match inferred {
            Some(t) => metadata::plain_type(&t),
            None if limit_ids.contains(&name) => DataType::Int64,
            None => DataType::Utf8,
        };
        Field::new(name, data_type, true)
    });
    Ok(Schema::new(fields.collect::<Vec<_>>()))
}

/// The placeholders of a plan's LIMITs and OFFSETs (subqueries included).
fn limit_placeholders(plan: &LogicalPlan) -> datafusion::common::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Limit(limit) = node {
            for expr in limit.skip.iter().chain(limit.fetch.iter()) {
                expr.apply(|e| {
                    if let Expr::Placeholder(Placeholder { id, .. }) = e {
                        ids.insert(id.clone());
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(ids)
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let token = match header.strip_prefix("Basic ") {
            Some(encoded) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| Status::invalid_argument("basic authorization is not base64"))?;
                let text = String::from_utf8(decoded).map_err(|_| Status::invalid_argument("basic authorization is not UTF-8"))?;
                text.split_once(':').map(|(_, password)| password.to_string()).unwrap_or_default()
            }
            None => header.strip_prefix("Bearer ").unwrap_or_default().to_string(),
        };
        if self.sql.tokens.scope_of(&token).is_none() {
            return Err(Status::unauthenticated("unknown analyst token (give it as the password, any user name)"));
        }
        let reply = HandshakeResponse { protocol_version: 0, payload: Bytes::from(token.clone()) };
        let mut response: Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        let bearer = format!("Bearer {token}").parse().map_err(|_| Status::invalid_argument("token is not ASCII"))?;
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let scope = self.check(request.metadata())?;
        let frame = self.sql.plan_in(&scope, &query.query).await.map_err(status)?;
        let schema = plain_schema(frame.schema().as_arrow());
        let ticket = TicketStatementQuery { statement_handle: Bytes::from(query.query) };
        flight_info(&schema, ticket, request.into_inner())
    }

    async fn do_get_statement(&self, ticket: TicketStatementQuery, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        let scope = self.check(request.metadata())?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec()).map_err(|_| Status::invalid_argument("ticket is not UTF-8 SQL"))?;
        let frame = self.sql.plan_in(&scope, &sql).await.map_err(status)?;
        self.run(&scope, frame).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let scope = self.check(request.metadata())?;
        let frame = self.sql.plan_in(&scope, &query.query).await.map_err(status)?;
        let dataset_schema = schema_bytes(&plain_schema(&plan_schema(frame.logical_plan())))?;
        let parameter_schema = schema_bytes(&parameter_schema(&frame)?)?;
        let mut statements = self.prepared.lock().expect("prepared statements lock");
        statements.next += 1;
        let handle = Bytes::from(format!("faccia-prepared-{}", statements.next));
        statements.order.push_back(handle.clone());
        statements.by_handle.insert(handle.clone(), Prepared { sql: query.query, scope, parameters: vec![] });
        while statements.order.len() > self.sql.limits.prepared_statements_max.max(1) {
            if let Some(oldest) = statements.order.pop_front() {
                statements.by_handle.remove(&oldest);
            }
        }
        Ok(ActionCreatePreparedStatementResult { prepared_statement_handle: handle, dataset_schema, parameter_schema })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let scope = self.check(request.metadata())?;
        let handle = query.prepared_statement_handle;
        self.prepared(&handle, &scope)?;
        let data = request.into_inner().map_err(|s| FlightError::Tonic(Box::new(s)));
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("reading the parameters: {e}")))?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows > 1 {
            return Err(Status::invalid_argument(format!("{rows} parameter rows; bind one row per execution")));
        }
        let parameters = match batches.iter().find(|b| b.num_rows() == 1) {
            Some(batch) => batch
                .columns()
                .iter()
                .map(|column| ScalarValue::try_from_array(column, 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
            None => vec![],
        };
        let mut statements = self.prepared.lock().expect("prepared statements lock");
        if let Some(prepared) = statements.by_handle.get_mut(&handle) {
            prepared.parameters = parameters;
        }
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle) })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let scope = self.check(request.metadata())?;
        let frame = self.frame(&self.prepared(&query.prepared_statement_handle, &scope)?).await?;
        let schema = plain_schema(frame.schema().as_arrow());
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let scope = self.check(request.metadata())?;
        let frame = self.frame(&self.prepared(&query.prepared_statement_handle, &scope)?).await?;
        self.run(&scope, frame).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let scope = self.check(request.metadata())?;
        self.prepared(&query.prepared_statement_handle, &scope)?;
        let mut statements = self.prepared.lock().expect("prepared statements lock");
        statements.by_handle.remove(&query.prepared_statement_handle);
        statements.order.retain(|h| h != &query.prepared_statement_handle);
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let schema = query.into_builder().schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_catalogs(&self, query: CommandGetCatalogs, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let mut builder = query.into_builder();
        for name in self.sql.ctx.catalog_names() {
            builder.append(name);
        }
        single(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_schemas(&self, query: CommandGetDbSchemas, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        let ctx = self.sql.context(&self.check(request.metadata())?).await.map_err(status)?;
        let mut builder = query.into_builder();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                builder.append(&catalog_name, schema_name);
            }
        }
        single(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_tables(&self, query: CommandGetTables, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        let scope = self.check(request.metadata())?;
        let mut builder = query.into_builder();
        for (catalog, schema, table, kind, table_schema) in self.tables(&scope).await? {
            builder.append(catalog, schema, table, kind, &table_schema).map_err(|e| Status::internal(e.to_string()))?;
        }
        single(builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let schema = query.into_builder().schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_table_types(&self, query: CommandGetTableTypes, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let mut builder = query.into_builder();
        for kind in ["TABLE", "VIEW"] {
            builder.append(kind);
        }
        single(builder.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        flight_info(&self.info_schema, query, request.into_inner())
    }

    async fn do_get_sql_info(&self, query: CommandGetSqlInfo, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        single(query.into_builder(&self.info).build().and_then(|b| Ok(metadata::with_java_map_names(&b)?)))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        let schema = query.into_builder(&self.types).schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        single(query.into_builder(&self.types).build())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        flight_info(&metadata::PRIMARY_KEYS_SCHEMA, query, request.into_inner())
    }

    async fn do_get_primary_keys(&self, _query: CommandGetPrimaryKeys, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        empty(&metadata::PRIMARY_KEYS_SCHEMA)
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        flight_info(&metadata::FOREIGN_KEYS_SCHEMA, query, request.into_inner())
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        empty(&metadata::FOREIGN_KEYS_SCHEMA)
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        flight_info(&metadata::FOREIGN_KEYS_SCHEMA, query, request.into_inner())
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        empty(&metadata::FOREIGN_KEYS_SCHEMA)
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(request.metadata())?;
        flight_info(&metadata::FOREIGN_KEYS_SCHEMA, query, request.into_inner())
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        empty(&metadata::FOREIGN_KEYS_SCHEMA)
    }

    /// The session actions (Flight.proto, not in arrow-flight 59): the JDBC driver sends
    /// SetSessionOptions for `catalog=` in its URL and `Connection.setCatalog`. faccia has one
    /// catalog and schema and no sessions: naming those is accepted, anything else refused
    /// option by option, as the protocol says.
    async fn do_action_fallback(&self, request: Request<arrow_flight::Action>) -> Result<Response<ActionStream>, Status> {
        self.check(request.metadata())?;
        let action = request.into_inner();
        let undecodable = |e: prost::DecodeError| Status::invalid_argument(format!("{}: {e}", action.r#type));
        let body = match action.r#type.as_str() {
            "SetSessionOptions" => {
                let request = session::SetSessionOptionsRequest::decode(action.body.clone()).map_err(undecodable)?;
                self.set_session_options(request).encode_to_vec()
            }
            "GetSessionOptions" => session::GetSessionOptionsResult { session_options: self.session_options() }.encode_to_vec(),
            "CloseSession" => session::CloseSessionResult { status: session::CLOSED }.encode_to_vec(),
            other => return Err(Status::invalid_argument(format!("faccia does not answer the action {other}"))),
        };
        let reply = arrow_flight::Result { body: Bytes::from(body) };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(reply)]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<arrow_flight::ActionType, Status>>> {
        let action = |name: &str, description: &str| Ok(arrow_flight::ActionType { r#type: name.into(), description: description.into() });
        Some(vec![
            action("SetSessionOptions", "accepts the one catalog and schema; faccia has no other session options"),
            action("GetSessionOptions", "the catalog and schema"),
            action("CloseSession", "nothing to close: faccia keeps no sessions"),
        ])
    }

    async fn do_get_fallback(&self, request: Request<Ticket>, message: Any) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        Err(Status::unimplemented(format!("faccia does not answer {}", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Serves Flight SQL on `listener` until `shutdown` turns true.
pub(crate) async fn serve(listener: tokio::net::TcpListener, service: FlightSql, mut shutdown: watch::Receiver<bool>) {
    let incoming = tokio_stream_of(listener);
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let result = tonic::transport::Server::builder()
        .add_service(FlightServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "the Flight SQL server stopped");
    }
}

/// The accepted connections of a bound listener, as tonic takes them.
fn tokio_stream_of(listener: tokio::net::TcpListener) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, listener))
    })
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSql").finish_non_exhaustive()
    }
}

/// Flight.proto's session messages, which arrow-flight 59 does not have (field numbers and
/// types as in apache/arrow `format/Flight.proto`).
mod session {
    use std::collections::HashMap;

    /// `SetSessionOptionsResult.ErrorValue.INVALID_NAME`.
    pub(super) const INVALID_NAME: i32 = 1;
    /// `SetSessionOptionsResult.ErrorValue.INVALID_VALUE`.
    pub(super) const INVALID_VALUE: i32 = 2;
    /// `CloseSessionResult.Status.CLOSED`.
    pub(super) const CLOSED: i32 = 1;

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SessionOptionValue {
        #[prost(oneof = "OptionValue", tags = "1, 2, 3, 4, 5")]
        pub(super) option_value: Option<OptionValue>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum OptionValue {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(sfixed64, tag = "3")]
        Int64(i64),
        #[prost(double, tag = "4")]
        Double(f64),
        #[prost(message, tag = "5")]
        StringList(StringListValue),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct StringListValue {
        #[prost(string, repeated, tag = "1")]
        pub(super) values: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SetSessionOptionsRequest {
        #[prost(map = "string, message", tag = "1")]
        pub(super) session_options: HashMap<String, SessionOptionValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SetSessionOptionsResult {
        #[prost(map = "string, message", tag = "1")]
        pub(super) errors: HashMap<String, SessionOptionError>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SessionOptionError {
        #[prost(int32, tag = "1")]
        pub(super) value: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct GetSessionOptionsResult {
        #[prost(map = "string, message", tag = "1")]
        pub(super) session_options: HashMap<String, SessionOptionValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct CloseSessionResult {
        #[prost(int32, tag = "1")]
        pub(super) status: i32,
    }
}
