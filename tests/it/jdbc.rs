//! What the Arrow Flight SQL JDBC driver (DBeaver, Tableau, every JDBC tool) needs of the
//! Flight SQL server, asked with arrow-flight's `FlightSqlServiceClient` on loopback: every
//! SqlInfo value the driver reads, in the union member it casts it to; the type list and the
//! key calls, well formed; parameters with a type the driver can bind; no view types.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetCrossReference, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetTables,
    CommandGetXdbcTypeInfo, SqlInfo, XdbcDataType,
};
use arrow_flight::{FlightInfo, IpcMessage};
use bytes::Bytes;
use futures::TryStreamExt;
use tonic::transport::Channel;

use crate::common::*;

/// The union member (type id) the driver's Java cast reads a SqlInfo value from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `String.class` ← `string_value`.
    String = 0,
    /// `Boolean.class` ← `bool_value`.
    Boolean = 1,
    /// `Long.class` ← `bigint_value` (an int32 here is a ClassCastException).
    Long = 2,
    /// `Integer.class` ← `int32_bitmask`.
    Integer = 3,
    /// `List.class` ← `string_list`.
    List = 4,
    /// `Map.class` ← `int32_to_int32_list_map`.
    Map = 5,
}

/// Every SqlInfo id the JDBC driver reads, with the Java class it casts the value to: each
/// `getSqlInfoAndCacheIfCacheIsEmpty(SqlInfo.X, T.class)` and, for the six bitmasks read by
/// `getSqlInfoEnumOptionAndCacheIfCacheIsEmpty`, `Integer`, in apache/arrow-java
/// `flight/flight-sql-jdbc-core/src/main/java/org/apache/arrow/driver/jdbc/ArrowDatabaseMetadata.java`
/// (the same 69 ids from the driver's first release, 10.0, to 19.0).
const JDBC_SQL_INFO: [(&str, Kind); 69] = {
    use Kind::*;
    [
        ("FLIGHT_SQL_SERVER_NAME", String),
        ("FLIGHT_SQL_SERVER_VERSION", String),
        ("FLIGHT_SQL_SERVER_READ_ONLY", Boolean),
        ("SQL_IDENTIFIER_QUOTE_CHAR", String),
        ("SQL_KEYWORDS", List),
        ("SQL_NUMERIC_FUNCTIONS", List),
        ("SQL_STRING_FUNCTIONS", List),
        ("SQL_SYSTEM_FUNCTIONS", List),
        ("SQL_DATETIME_FUNCTIONS", List),
        ("SQL_SEARCH_STRING_ESCAPE", String),
        ("SQL_EXTRA_NAME_CHARACTERS", String),
        ("SQL_SUPPORTS_COLUMN_ALIASING", Boolean),
        ("SQL_NULL_PLUS_NULL_IS_NULL", Boolean),
        ("SQL_SUPPORTS_CONVERT", Map),
        ("SQL_SUPPORTS_TABLE_CORRELATION_NAMES", Boolean),
        ("SQL_SUPPORTS_DIFFERENT_TABLE_CORRELATION_NAMES", Boolean),
        ("SQL_SUPPORTS_EXPRESSIONS_IN_ORDER_BY", Boolean),
        ("SQL_SUPPORTS_ORDER_BY_UNRELATED", Boolean),
        ("SQL_SUPPORTED_GROUP_BY", Integer),
        ("SQL_SUPPORTS_LIKE_ESCAPE_CLAUSE", Boolean),
        ("SQL_SUPPORTS_NON_NULLABLE_COLUMNS", Boolean),
        ("SQL_SUPPORTED_GRAMMAR", Integer),
        ("SQL_ANSI92_SUPPORTED_LEVEL", Integer),
        ("SQL_SUPPORTS_INTEGRITY_ENHANCEMENT_FACILITY", Boolean),
        ("SQL_OUTER_JOINS_SUPPORT_LEVEL", Integer),
        ("SQL_SCHEMA_TERM", String),
        ("SQL_PROCEDURE_TERM", String),
        ("SQL_CATALOG_TERM", String),
        ("SQL_CATALOG_AT_START", Boolean),
        ("SQL_SCHEMAS_SUPPORTED_ACTIONS", Integer),
        ("SQL_CATALOGS_SUPPORTED_ACTIONS", Integer),
        ("SQL_SUPPORTED_POSITIONED_COMMANDS", Integer),
        ("SQL_SELECT_FOR_UPDATE_SUPPORTED", Boolean),
        ("SQL_STORED_PROCEDURES_SUPPORTED", Boolean),
        ("SQL_SUPPORTED_SUBQUERIES", Integer),
        ("SQL_CORRELATED_SUBQUERIES_SUPPORTED", Boolean),
        ("SQL_SUPPORTED_UNIONS", Integer),
        ("SQL_MAX_BINARY_LITERAL_LENGTH", Long),
        ("SQL_MAX_CHAR_LITERAL_LENGTH", Long),
        ("SQL_MAX_COLUMN_NAME_LENGTH", Long),
        ("SQL_MAX_COLUMNS_IN_GROUP_BY", Long),
        ("SQL_MAX_COLUMNS_IN_INDEX", Long),
        ("SQL_MAX_COLUMNS_IN_ORDER_BY", Long),
        ("SQL_MAX_COLUMNS_IN_SELECT", Long),
        ("SQL_MAX_COLUMNS_IN_TABLE", Long),
        ("SQL_MAX_CONNECTIONS", Long),
        ("SQL_MAX_CURSOR_NAME_LENGTH", Long),
        ("SQL_MAX_INDEX_LENGTH", Long),
        ("SQL_DB_SCHEMA_NAME_LENGTH", Long),
        ("SQL_MAX_PROCEDURE_NAME_LENGTH", Long),
        ("SQL_MAX_CATALOG_NAME_LENGTH", Long),
        ("SQL_MAX_ROW_SIZE", Long),
        ("SQL_MAX_ROW_SIZE_INCLUDES_BLOBS", Boolean),
        ("SQL_MAX_STATEMENT_LENGTH", Long),
        ("SQL_MAX_STATEMENTS", Long),
        ("SQL_MAX_TABLE_NAME_LENGTH", Long),
        ("SQL_MAX_TABLES_IN_SELECT", Long),
        ("SQL_MAX_USERNAME_LENGTH", Long),
        // The proto says int32; the driver casts to Long.
        ("SQL_DEFAULT_TRANSACTION_ISOLATION", Long),
        ("SQL_TRANSACTIONS_SUPPORTED", Boolean),
        ("SQL_SUPPORTED_TRANSACTIONS_ISOLATION_LEVELS", Integer),
        ("SQL_DATA_DEFINITION_CAUSES_TRANSACTION_COMMIT", Boolean),
        ("SQL_DATA_DEFINITIONS_IN_TRANSACTIONS_IGNORED", Boolean),
        ("SQL_SUPPORTED_RESULT_SET_TYPES", Integer),
        ("SQL_BATCH_UPDATES_SUPPORTED", Boolean),
        ("SQL_SAVEPOINTS_SUPPORTED", Boolean),
        ("SQL_NAMED_PARAMETERS_SUPPORTED", Boolean),
        ("SQL_LOCATORS_UPDATE_COPY", Boolean),
        ("SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED", Boolean),
    ]
};

/// An id every driver's enum knows: 10 and 11 are unknown before 17.0, custom ids to all, and
/// one unknown id fails the driver's whole SqlInfo load.
fn known_to_every_driver(id: u32) -> bool {
    id <= 9 || id == 100 || id == 101 || (500..=576).contains(&id)
}

async fn client(dir: &Path, addr: SocketAddr) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    let token = std::fs::read_to_string(dir.join(faccia::analysts::tokens::TOKEN_FILE)).unwrap();
    client.set_token(token.trim().to_string());
    client
}

/// The schema the FlightInfo announces, the schema the data came with, and the batches.
async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> (SchemaRef, SchemaRef, Vec<RecordBatch>) {
    let announced = Arc::new(info.clone().try_decode_schema().unwrap());
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket).await.unwrap();
    let mut batches = Vec::new();
    while let Some(batch) = stream.try_next().await.unwrap() {
        batches.push(batch);
    }
    let sent = stream.schema().cloned().expect("the answer carries its schema, even with no rows");
    (announced, sent, batches)
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name(column).unwrap().as_string::<i32>().clone();
            (0..column.len()).map(move |i| column.value(i).to_string())
        })
        .collect()
}

/// Types a JDBC driver before 19.0 cannot read, anywhere in `data_type`.
fn has_view_type(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8View | DataType::BinaryView | DataType::ListView(_) | DataType::LargeListView(_) => true,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) | DataType::Map(f, _) => has_view_type(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_view_type(f.data_type())),
        _ => false,
    }
}

#[tokio::test]
async fn get_sql_info_answers_every_id_the_jdbc_driver_reads_in_the_type_it_casts_to() {
    // Proves: GetSqlInfo with no ids returns all 69 ids the JDBC driver reads, each in the union
    // member its Java cast needs, no id a driver's enum does not know, the SQL_SUPPORTS_CONVERT
    // map named as Java reads it, and function lists from the context (faccia's own included).
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.flight_addr.unwrap()).await;
    let info = client.get_sql_info(vec![]).await.unwrap();
    let (announced, sent, batches) = fetch(&mut client, info).await;
    assert_eq!(announced, sent, "the FlightInfo announces the schema the data comes with");

    let mut values = BTreeMap::new();
    for batch in &batches {
        let ids = batch.column_by_name("info_name").unwrap().as_primitive::<arrow::datatypes::UInt32Type>();
        let union = batch.column_by_name("value").unwrap().as_union();
        for row in 0..batch.num_rows() {
            values.insert(ids.value(row), (union.type_id(row), union.value(row)));
        }
    }
    for (name, kind) in JDBC_SQL_INFO {
        let id = SqlInfo::from_str_name(name).unwrap_or_else(|| panic!("{name} is not a SqlInfo name")) as u32;
        let Some((type_id, _)) = values.get(&id) else { panic!("SqlInfo {name} ({id}) missing: the driver throws") };
        assert_eq!(*type_id, kind as i8, "SqlInfo {name} ({id}) is sent as union member {type_id}, the driver reads {kind:?}");
    }
    let unknown: Vec<u32> = values.keys().copied().filter(|id| !known_to_every_driver(*id)).collect();
    assert!(unknown.is_empty(), "ids some JDBC drivers do not know: {unknown:?}");
    // Read by ODBC and Java's own SqlInfoBuilder as int64.
    for id in [SqlInfo::SqlIdentifierCase, SqlInfo::SqlQuotedIdentifierCase, SqlInfo::SqlNullOrdering] {
        assert_eq!(values[&(id as u32)].0, Kind::Long as i8, "{id:?}");
    }

    let list = |id: SqlInfo| -> Vec<String> {
        let value = &values[&(id as u32)].1;
        let items = value.as_list::<i32>().value(0);
        let items = items.as_string::<i32>();
        (0..items.len()).map(|i| items.value(i).to_string()).collect()
    };
    assert!(list(SqlInfo::SqlKeywords).contains(&"EXPLAIN".to_string()));
    let numeric = list(SqlInfo::SqlNumericFunctions);
    assert!(numeric.contains(&"abs".to_string()) && numeric.contains(&"csat".to_string()), "{numeric:?}");
    assert!(list(SqlInfo::SqlDatetimeFunctions).contains(&"local_hour".to_string()));
    assert!(list(SqlInfo::SqlStringFunctions).contains(&"upper".to_string()));
    let outer_joins = &values[&(SqlInfo::SqlOuterJoinsSupportLevel as u32)].1;
    assert_eq!(outer_joins.as_primitive::<arrow::datatypes::Int32Type>().value(0), 6, "limited and full outer joins, as bits");

    let convert = &values[&(SqlInfo::SqlSupportsConvert as u32)].1;
    let DataType::Map(entries, _) = convert.data_type() else { panic!("{:?}", convert.data_type()) };
    let DataType::Struct(kv) = entries.data_type() else { panic!("{:?}", entries.data_type()) };
    assert_eq!((kv[0].name().as_str(), kv[1].name().as_str()), ("key", "value"), "Java's map reader finds entries by these names");
    assert!(convert.as_map().value(0).len() > 10, "CAST converts most JDBC types");
    server.stop().await;
}

#[tokio::test]
async fn the_type_list_and_the_key_calls_answer_well_formed() {
    // Proves: GetXdbcTypeInfo lists the types faccia uses (and filters by data type); primary,
    // imported, exported and cross-referenced keys answer no rows with the exact schemas the
    // JDBC driver transfers by name and type (Utf8, key_sequence Int32, rules UInt8).
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.flight_addr.unwrap()).await;

    let info = client.get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None }).await.unwrap();
    let (announced, sent, batches) = fetch(&mut client, info).await;
    assert_eq!(announced, sent);
    let names = strings(&batches, "type_name");
    for name in
        ["BOOLEAN", "TINYINT", "SMALLINT UNSIGNED", "INTEGER UNSIGNED", "BIGINT", "DOUBLE", "VARCHAR", "DATE", "TIMESTAMP WITH TIME ZONE"]
    {
        assert!(names.contains(&name.to_string()), "{name} missing from {names:?}");
    }
    let varchar = CommandGetXdbcTypeInfo { data_type: Some(XdbcDataType::XdbcVarchar as i32) };
    let info = client.get_xdbc_type_info(varchar).await.unwrap();
    let (_, _, batches) = fetch(&mut client, info).await;
    assert_eq!(strings(&batches, "type_name"), ["VARCHAR"]);

    let primary = Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]);
    let foreign = Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]);
    let table = || (Some("datafusion".to_string()), Some("public".to_string()), "votes".to_string());
    let (catalog, db_schema, name) = table();
    let answers = [
        ("primary keys", &primary, client.get_primary_keys(CommandGetPrimaryKeys { catalog, db_schema, table: name }).await.unwrap()),
        ("imported keys", &foreign, {
            let (catalog, db_schema, table) = table();
            client.get_imported_keys(CommandGetImportedKeys { catalog, db_schema, table }).await.unwrap()
        }),
        ("exported keys", &foreign, {
            let (catalog, db_schema, table) = table();
            client.get_exported_keys(CommandGetExportedKeys { catalog, db_schema, table }).await.unwrap()
        }),
        ("cross reference", &foreign, {
            let (pk_catalog, pk_db_schema, pk_table) = table();
            let (fk_catalog, fk_db_schema, fk_table) = table();
            let command = CommandGetCrossReference { pk_catalog, pk_db_schema, pk_table, fk_catalog, fk_db_schema, fk_table };
            client.get_cross_reference(command).await.unwrap()
        }),
    ];
    for (call, expected, info) in answers {
        let (announced, sent, batches) = fetch(&mut client, info).await;
        assert_eq!(announced.as_ref(), expected, "{call}: the FlightInfo schema");
        assert_eq!(sent.as_ref(), expected, "{call}: the data's schema");
        assert_eq!(rows(&batches), 0, "{call}: faccia's tables declare no keys");
    }
    server.stop().await;
}

#[tokio::test]
async fn parameters_have_types_a_jdbc_driver_binds_and_results_have_no_view_types() {
    // Proves: a parameter DataFusion cannot infer is declared Int64 in LIMIT and Utf8 elsewhere
    // (never Null, which the JDBC driver cannot bind), binding those types runs the statement,
    // and results, prepared schemas and table schemas carry Utf8, never Utf8View.
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.flight_addr.unwrap()).await;

    let mut limited = client.prepare("SELECT name FROM services ORDER BY service LIMIT ?".into(), None).await.unwrap();
    let parameters = limited.parameter_schema().unwrap().clone();
    assert_eq!(parameters.fields().len(), 1);
    assert_eq!(parameters.field(0).data_type(), &DataType::Int64, "{parameters:?}");
    let batch = RecordBatch::try_new(Arc::new(parameters), vec![Arc::new(Int64Array::from(vec![3]))]).unwrap();
    limited.set_parameters(batch).unwrap();
    let (_, _, batches) = fetch(&mut client, limited.execute().await.unwrap()).await;
    assert_eq!(rows(&batches), 3);
    limited.close().await.unwrap();

    let sql = "SELECT name FROM services WHERE starts_with(name, ?) OR ? IS NULL ORDER BY service";
    let mut text = client.prepare(sql.into(), None).await.unwrap();
    let parameters = text.parameter_schema().unwrap().clone();
    let types: Vec<&DataType> = parameters.fields().iter().map(|f| f.data_type()).collect();
    assert_eq!(types, [&DataType::Utf8, &DataType::Utf8], "{parameters:?}");
    let info = client.execute("SELECT name FROM services ORDER BY service".into(), None).await.unwrap();
    let names = strings(&fetch(&mut client, info).await.2, "name");
    let prefix: String = names[0].chars().take(3).collect();
    let expected = names.iter().filter(|n| n.starts_with(&prefix)).count();
    let values: [Arc<dyn Array>; 2] = [Arc::new(StringArray::from(vec![prefix.as_str()])), Arc::new(StringArray::from(vec!["x"]))];
    text.set_parameters(RecordBatch::try_new(Arc::new(parameters), values.to_vec()).unwrap()).unwrap();
    let (_, _, batches) = fetch(&mut client, text.execute().await.unwrap()).await;
    assert_eq!(rows(&batches), expected);
    text.close().await.unwrap();

    // DataFusion makes CAST(… AS VARCHAR) a Utf8View; the driver before 19.0 reads no view type.
    let view = "SELECT CAST(service AS VARCHAR) AS s, name FROM services";
    let prepared = client.prepare(view.into(), None).await.unwrap();
    assert!(!prepared.dataset_schema().unwrap().fields().iter().any(|f| has_view_type(f.data_type())));
    prepared.close().await.unwrap();
    let info = client.execute(view.into(), None).await.unwrap();
    let (announced, sent, batches) = fetch(&mut client, info).await;
    for schema in [&announced, &sent, &batches[0].schema()] {
        assert_eq!(schema.field(0).data_type(), &DataType::Utf8, "{schema:?}");
    }
    let tables = CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: None,
        table_name_filter_pattern: None,
        table_types: vec![],
        include_schema: true,
    };
    let info = client.get_tables(tables).await.unwrap();
    let (_, _, batches) = fetch(&mut client, info).await;
    assert!(rows(&batches) > 10);
    for batch in &batches {
        let schemas = batch.column_by_name("table_schema").unwrap().as_binary::<i32>();
        for i in 0..schemas.len() {
            let schema = Schema::try_from(IpcMessage(Bytes::copy_from_slice(schemas.value(i)))).unwrap();
            assert!(!schema.fields().iter().any(|f| has_view_type(f.data_type())), "{schema:?}");
        }
    }
    server.stop().await;
}

/// Flight.proto's session messages, as the JDBC driver sends them (arrow-flight 59 has none).
mod session {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SessionOptionValue {
        #[prost(string, optional, tag = "1")]
        pub(super) string_value: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SetSessionOptionsRequest {
        #[prost(map = "string, message", tag = "1")]
        pub(super) session_options: HashMap<String, SessionOptionValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SessionOptionError {
        #[prost(int32, tag = "1")]
        pub(super) value: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SetSessionOptionsResult {
        #[prost(map = "string, message", tag = "1")]
        pub(super) errors: HashMap<String, SessionOptionError>,
    }
}

#[tokio::test]
async fn setting_the_catalog_as_the_jdbc_driver_does_is_accepted_for_the_one_there_is() {
    // Proves: the SetSessionOptions action the JDBC driver (18.2 and later) sends for `catalog=`
    // and `Connection.setCatalog` succeeds for faccia's catalog and schema, and names the
    // option that is wrong otherwise; CloseSession answers.
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.flight_addr.unwrap()).await;
    let mut set = async |options: &[(&str, &str)]| -> HashMap<String, i32> {
        let session_options = options
            .iter()
            .map(|(name, value)| (name.to_string(), session::SessionOptionValue { string_value: Some(value.to_string()) }))
            .collect();
        let body = session::SetSessionOptionsRequest { session_options }.encode_to_vec();
        let action = arrow_flight::Action { r#type: "SetSessionOptions".into(), body: body.into() };
        let replies: Vec<arrow_flight::Result> = client.do_action(action).await.unwrap().try_collect().await.unwrap();
        assert_eq!(replies.len(), 1);
        let result = session::SetSessionOptionsResult::decode(replies[0].body.clone()).unwrap();
        result.errors.into_iter().map(|(name, error)| (name, error.value)).collect()
    };
    assert!(set(&[("catalog", "datafusion")]).await.is_empty());
    assert!(set(&[("catalog", "datafusion"), ("schema", "public")]).await.is_empty());
    assert_eq!(set(&[("catalog", "other")]).await, HashMap::from([("catalog".to_string(), 2)]), "INVALID_VALUE");
    assert_eq!(set(&[("colour", "blue")]).await, HashMap::from([("colour".to_string(), 1)]), "INVALID_NAME");
    let close = arrow_flight::Action { r#type: "CloseSession".into(), body: Bytes::new() };
    let replies: Vec<arrow_flight::Result> = client.do_action(close).await.unwrap().try_collect().await.unwrap();
    assert_eq!(replies.len(), 1);
    server.stop().await;
}
