//! The Arrow Flight SQL server (gRPC over HTTP/2, tonic) that analysts' tools connect to:
//! ADBC (Python, R, Go), the Flight SQL JDBC driver (DBeaver), Grafana's Flight SQL plugin.
//!
//! What it answers: statement queries, prepared statements (with parameters), and the catalog
//! calls clients issue on connect — catalogs, schemas, tables (with their Arrow schemas), table
//! types, SQL info. Every call needs an analyst bearer token (`authorization: Bearer TOKEN`);
//! the handshake exchanges basic authentication (any user name, the token as password) for the
//! same bearer token, for clients configured with a user and password.
//!
//! Results stream from DataFusion to the client batch by batch; a query holds one of the
//! `concurrent_queries_max` permits until its stream ends.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine;
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::TableType;
use datafusion::prelude::DataFrame;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::analysts::service::{SqlError, SqlService, plan_schema};

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// A prepared statement: its SQL and the parameters bound last.
#[derive(Debug, Clone)]
struct Prepared {
    sql: String,
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
}

impl FlightSql {
    /// The service over `sql`, with no prepared statements open and its fixed SQL info (read-only, no transactions).
    pub(crate) fn new(sql: Arc<SqlService>) -> FlightSql {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "faccia");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        let info = info.build().expect("static SQL info is valid");
        FlightSql { sql, prepared: Mutex::new(PreparedStatements::default()), info }
    }

    fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.sql.tokens.check_bearer(header).map_err(Status::unauthenticated)
    }

    fn prepared(&self, handle: &Bytes) -> Result<Prepared, Status> {
        let statements = self.prepared.lock().expect("prepared statements lock");
        statements
            .by_handle
            .get(handle)
            .cloned()
            .ok_or_else(|| Status::not_found("unknown prepared statement handle (closed, or evicted past prepared_statements_max)"))
    }

    async fn frame(&self, prepared: &Prepared) -> Result<DataFrame, Status> {
        let frame = self.sql.plan(&prepared.sql).await.map_err(status)?;
        if prepared.parameters.is_empty() {
            return Ok(frame);
        }
        frame.with_param_values(prepared.parameters.clone()).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// Runs a planned statement and streams it as Flight data.
    async fn run(&self, frame: DataFrame) -> Result<Response<DoGetStream>, Status> {
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let permit = self.sql.permit().await;
        let stream = self.sql.stream(frame).await.map_err(status)?;
        Ok(Response::new(encode(schema, stream, permit)))
    }

    /// Every table and view of the context: (catalog, schema, table, type, Arrow schema).
    async fn tables(&self) -> Result<Vec<(String, String, String, &'static str, SchemaRef)>, Status> {
        let mut tables = Vec::new();
        for catalog_name in self.sql.ctx.catalog_names() {
            let Some(catalog) = self.sql.ctx.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                for table_name in schema.table_names() {
                    let Ok(Some(table)) = schema.table(&table_name).await else { continue };
                    let kind = if table.table_type() == TableType::View { "VIEW" } else { "TABLE" };
                    tables.push((catalog_name.clone(), schema_name.clone(), table_name, kind, table.schema()));
                }
            }
        }
        tables.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        Ok(tables)
    }
}

/// Streams record batches as Flight data, holding the query's permit until the end.
fn encode(schema: SchemaRef, stream: SendableRecordBatchStream, permit: OwnedSemaphorePermit) -> DoGetStream {
    let batches = stream.map_err(|e| FlightError::ExternalError(Box::new(e)));
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

/// The parameter schema of a planned statement: `$1`, `$2`, … in order.
fn parameter_schema(frame: &DataFrame) -> Result<Schema, Status> {
    let types = frame.logical_plan().get_parameter_types().map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut names: Vec<_> = types.into_iter().collect();
    names.sort_by_key(|(name, _)| name.trim_start_matches('$').parse::<u32>().unwrap_or(u32::MAX));
    Ok(Schema::new(names.into_iter().map(|(name, t)| Field::new(name, t.unwrap_or(DataType::Null), true)).collect::<Vec<_>>()))
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
        if !self.sql.tokens.accepts(&token) {
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
        self.check(request.metadata())?;
        let frame = self.sql.plan(&query.query).await.map_err(status)?;
        let schema = frame.schema().as_arrow().clone();
        let ticket = TicketStatementQuery { statement_handle: Bytes::from(query.query) };
        flight_info(&schema, ticket, request.into_inner())
    }

    async fn do_get_statement(&self, ticket: TicketStatementQuery, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec()).map_err(|_| Status::invalid_argument("ticket is not UTF-8 SQL"))?;
        let frame = self.sql.plan(&sql).await.map_err(status)?;
        self.run(frame).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.check(request.metadata())?;
        let frame = self.sql.plan(&query.query).await.map_err(status)?;
        let dataset_schema = schema_bytes(&plan_schema(frame.logical_plan()))?;
        let parameter_schema = schema_bytes(&parameter_schema(&frame)?)?;
        let mut statements = self.prepared.lock().expect("prepared statements lock");
        statements.next += 1;
        let handle = Bytes::from(format!("faccia-prepared-{}", statements.next));
        statements.order.push_back(handle.clone());
        statements.by_handle.insert(handle.clone(), Prepared { sql: query.query, parameters: vec![] });
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
        self.check(request.metadata())?;
        let handle = query.prepared_statement_handle;
        self.prepared(&handle)?;
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
        self.check(request.metadata())?;
        let frame = self.frame(&self.prepared(&query.prepared_statement_handle)?).await?;
        let schema = frame.schema().as_arrow().clone();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        let frame = self.frame(&self.prepared(&query.prepared_statement_handle)?).await?;
        self.run(frame).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        self.check(request.metadata())?;
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
        self.check(request.metadata())?;
        let mut builder = query.into_builder();
        for catalog_name in self.sql.ctx.catalog_names() {
            let Some(catalog) = self.sql.ctx.catalog(&catalog_name) else { continue };
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
        self.check(request.metadata())?;
        let mut builder = query.into_builder();
        for (catalog, schema, table, kind, table_schema) in self.tables().await? {
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
        let schema = query.clone().into_builder(&self.info).schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_sql_info(&self, query: CommandGetSqlInfo, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        self.check(request.metadata())?;
        single(query.into_builder(&self.info).build())
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
