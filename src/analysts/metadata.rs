//! What the Flight SQL server tells clients about itself and its SQL, for the tools that
//! browse before they query (DBeaver and Tableau through the Arrow Flight SQL JDBC driver,
//! ODBC, ADBC): the `GetSqlInfo` values, the `GetXdbcTypeInfo` type list, and the schemas of
//! the key calls, which faccia answers empty (its tables declare no keys).
//!
//! The JDBC driver is strict, and every value here is shaped by how it reads them
//! (`ArrowDatabaseMetadata.java` in apache/arrow-java):
//! - it loads every SqlInfo value once, and versions before 19.0 throw on a missing id, so each
//!   id it reads is sent;
//! - it casts each value to a Java type before looking at it, so each id is sent in the union
//!   member that type comes from: `Long` ← `bigint_value` (an `i64` here), `Integer` ←
//!   `int32_bitmask` (an `i32`). Literals carry their suffix: an unsuffixed `0` is an `i32`;
//! - an id its enum does not know breaks the whole load, so no custom ids, and not 10 or 11
//!   (bulk ingestion, unknown to drivers before 17.0);
//! - it reads the SQL_SUPPORTS_CONVERT map's entries by the names `key` and `value`.
//!
//! Function lists come from the context's function registry, so they follow DataFusion and
//! faccia's own functions without a list to keep.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, RecordBatch, make_array};
use arrow::compute::can_cast_types;
use arrow::datatypes::{DataType, Field, Fields, IntervalUnit, Schema, SchemaRef, TimeUnit, UnionFields};
use arrow::error::ArrowError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlOuterJoinsSupportLevel, SqlSupportedCaseSensitivity, SqlSupportedGroupBy,
    SqlSupportedResultSetConcurrency, SqlSupportedResultSetType, SqlSupportedSubqueries, SqlSupportedTransaction, SqlSupportedUnions,
    SqlSupportsConvert, SqlTransactionIsolationLevel, SupportedSqlGrammar, XdbcDataType, XdbcDatetimeSubcode,
};
use datafusion::logical_expr::{ScalarUDF, TypeSignature};
use datafusion::prelude::SessionContext;

/// Keywords of faccia's SQL that are not SQL:2003 keywords (what JDBC's `getSQLKeywords` asks
/// for; DBeaver highlights and quotes by it). Each is a keyword of DataFusion's SQL parser.
const KEYWORDS: &[&str] = &[
    "ANALYZE",
    "AVRO",
    "COLUMNS",
    "COPY",
    "CSV",
    "DESCRIBE",
    "EXCLUDE",
    "EXPLAIN",
    "FORMAT",
    "ILIKE",
    "JSON",
    "LIMIT",
    "LOCATION",
    "OFFSET",
    "OPTIONS",
    "PARQUET",
    "PARTITIONED",
    "QUALIFY",
    "SHOW",
    "STORED",
    "TABLES",
    "VERBOSE",
];

/// The FlightSql.proto bitmask of enum values: bit n set when value n is supported.
fn bits(values: &[i32]) -> i32 {
    values.iter().fold(0, |mask, v| mask | (1 << v))
}

/// The SqlInfo values of a read-only DataFusion engine without transactions; `ctx` gives the
/// function lists and `sql_bytes_max` the longest statement.
pub(crate) fn sql_info(ctx: &SessionContext, sql_bytes_max: usize) -> SqlInfoData {
    let functions = Functions::of(ctx);
    let mut b = SqlInfoDataBuilder::new();
    // The server (not 10 and 11: unknown to JDBC drivers before 17.0).
    b.append(SqlInfo::FlightSqlServerName, "faccia");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    // Names and case: DataFusion lowercases unquoted identifiers, keeps quoted ones, sorts NULL
    // as the largest value. The three enums go as int64, as the Java and ODBC readers expect.
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i64);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlQuotedIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityUnknown as i64);
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(SqlInfo::SqlNullOrdering, SqlNullOrdering::SqlNullsSortedHigh as i64);
    b.append(SqlInfo::SqlKeywords, KEYWORDS);
    b.append(SqlInfo::SqlNumericFunctions, functions.numeric);
    b.append(SqlInfo::SqlStringFunctions, functions.string);
    b.append(SqlInfo::SqlSystemFunctions, functions.system);
    b.append(SqlInfo::SqlDatetimeFunctions, functions.datetime);
    // The catalog calls filter names with LIKE patterns where `\` escapes `_` and `%`.
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsConvert, convert_map());
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(
        SqlInfo::SqlSupportedGroupBy,
        bits(&[SqlSupportedGroupBy::SqlGroupByUnrelated as i32, SqlSupportedGroupBy::SqlGroupByBeyondSelect as i32]),
    );
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        bits(&[SupportedSqlGrammar::SqlMinimumGrammar as i32, SupportedSqlGrammar::SqlCoreGrammar as i32]),
    );
    // SupportedAnsi92SqlGrammarLevel (not exported by arrow-flight): ANSI92_ENTRY_SQL = 0.
    b.append(SqlInfo::SqlAnsi92SupportedLevel, bits(&[0]));
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    // A bitmask, though the proto calls it a level: the Java and ODBC drivers test bits.
    b.append(
        SqlInfo::SqlOuterJoinsSupportLevel,
        bits(&[SqlOuterJoinsSupportLevel::SqlLimitedOuterJoins as i32, SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32]),
    );
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(
        SqlInfo::SqlSupportedSubqueries,
        bits(&[
            SqlSupportedSubqueries::SqlSubqueriesInComparisons as i32,
            SqlSupportedSubqueries::SqlSubqueriesInExists as i32,
            SqlSupportedSubqueries::SqlSubqueriesInIns as i32,
            SqlSupportedSubqueries::SqlSubqueriesInQuantifieds as i32,
        ]),
    );
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlSupportedUnions, bits(&[SqlSupportedUnions::SqlUnion as i32, SqlSupportedUnions::SqlUnionAll as i32]));
    append_limits(&mut b, sql_bytes_max);
    b.append(SqlInfo::SqlDefaultTransactionIsolation, SqlTransactionIsolationLevel::SqlTransactionNone as i64);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlSupportedTransactionsIsolationLevels, 0i32);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, false);
    // Results stream: forward only, read only.
    b.append(SqlInfo::SqlSupportedResultSetTypes, bits(&[SqlSupportedResultSetType::SqlResultSetTypeForwardOnly as i32]));
    b.append(SqlInfo::SqlSupportedConcurrenciesForResultSetUnspecified, 0i32);
    b.append(
        SqlInfo::SqlSupportedConcurrenciesForResultSetForwardOnly,
        bits(&[SqlSupportedResultSetConcurrency::SqlResultSetConcurrencyReadOnly as i32]),
    );
    b.append(SqlInfo::SqlSupportedConcurrenciesForResultSetScrollSensitive, 0i32);
    b.append(SqlInfo::SqlSupportedConcurrenciesForResultSetScrollInsensitive, 0i32);
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("the SQL info values are well formed")
}

/// The SQL_MAX_* values, all int64 (JDBC reads them as `Long`): 0 is "no limit or unknown",
/// except the statement, whose limit is `sql_bytes_max` (bytes where JDBC counts characters).
fn append_limits(b: &mut SqlInfoDataBuilder, sql_bytes_max: usize) {
    let unlimited = [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnNameLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxColumnsInTable,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlDbSchemaNameLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxCatalogNameLength,
        SqlInfo::SqlMaxRowSize,
        // prepared_statements_max is the server's, not a connection's.
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxTableNameLength,
        SqlInfo::SqlMaxTablesInSelect,
        SqlInfo::SqlMaxUsernameLength,
    ];
    for id in unlimited {
        b.append(id, 0i64);
    }
    b.append(SqlInfo::SqlMaxStatementLength, i64::try_from(sql_bytes_max).unwrap_or(0));
    b.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, false);
}

/// The context's scalar functions in JDBC's four lists, by DataFusion's documentation section;
/// faccia's own functions, which carry no documentation, by their argument types.
#[derive(Debug, Default, PartialEq)]
struct Functions {
    numeric: Vec<String>,
    string: Vec<String>,
    system: Vec<String>,
    datetime: Vec<String>,
}

impl Functions {
    fn of(ctx: &SessionContext) -> Functions {
        let state = ctx.state();
        let mut lists: [BTreeSet<String>; 4] = Default::default();
        // The registry holds each function under its name and each alias.
        for (name, udf) in state.scalar_functions() {
            if let Some(list) = Self::list_of(udf) {
                lists[list].insert(name.clone());
            }
        }
        let [numeric, string, system, datetime] = lists.map(|set| set.into_iter().collect());
        Functions { numeric, string, system, datetime }
    }

    /// 0 numeric, 1 string, 2 system, 3 date and time; None for the nested types' functions
    /// (arrays, structs, maps), which JDBC has no list for.
    fn list_of(udf: &ScalarUDF) -> Option<usize> {
        match udf.documentation() {
            Some(doc) => match doc.doc_section.label {
                "Math Functions" => Some(0),
                "String Functions" | "Binary String Functions" | "Regular Expression Functions" => Some(1),
                "Conditional Functions" | "Other Functions" | "Hashing Functions" => Some(2),
                "Time and Date Functions" => Some(3),
                _ => None,
            },
            None => match &udf.signature().type_signature {
                TypeSignature::Exact(types) if types.iter().any(DataType::is_temporal) => Some(3),
                TypeSignature::Exact(types) if !types.is_empty() && types.iter().all(DataType::is_numeric) => Some(0),
                _ => None,
            },
        }
    }
}

/// SQL_SUPPORTS_CONVERT: which JDBC types CAST turns into which, asked of Arrow's cast
/// kernel (what DataFusion's CAST runs) on the Arrow type faccia gives each JDBC type.
fn convert_map() -> BTreeMap<i32, Vec<i32>> {
    use SqlSupportsConvert as C;
    let decimal = DataType::Decimal128(38, 10);
    let types = [
        (C::SqlConvertBigint, DataType::Int64),
        (C::SqlConvertBinary, DataType::Binary),
        (C::SqlConvertBit, DataType::Boolean),
        (C::SqlConvertChar, DataType::Utf8),
        (C::SqlConvertDate, DataType::Date32),
        (C::SqlConvertDecimal, decimal.clone()),
        (C::SqlConvertFloat, DataType::Float64),
        (C::SqlConvertInteger, DataType::Int32),
        (C::SqlConvertIntervalDayTime, DataType::Interval(IntervalUnit::MonthDayNano)),
        (C::SqlConvertIntervalYearMonth, DataType::Interval(IntervalUnit::YearMonth)),
        (C::SqlConvertLongvarbinary, DataType::LargeBinary),
        (C::SqlConvertLongvarchar, DataType::LargeUtf8),
        (C::SqlConvertNumeric, decimal),
        (C::SqlConvertReal, DataType::Float32),
        (C::SqlConvertSmallint, DataType::Int16),
        (C::SqlConvertTime, DataType::Time64(TimeUnit::Nanosecond)),
        (C::SqlConvertTimestamp, DataType::Timestamp(TimeUnit::Nanosecond, None)),
        (C::SqlConvertTinyint, DataType::Int8),
        (C::SqlConvertVarbinary, DataType::Binary),
        (C::SqlConvertVarchar, DataType::Utf8),
    ];
    let mut map = BTreeMap::new();
    for (from, from_type) in &types {
        let to: Vec<i32> = types.iter().filter(|(_, to_type)| can_cast_types(from_type, to_type)).map(|(to, _)| *to as i32).collect();
        map.insert(*from as i32, to);
    }
    map
}

/// A SqlInfo answer whose SQL_SUPPORTS_CONVERT map names its entries `key` and `value`, as
/// FlightSql.proto and the Java driver do (arrow-rs names them `keys` and `values`, which the
/// driver reads as one null entry). Only names change; the buffers are the same.
///
/// # Errors
/// When the batch is not a SqlInfo answer (a programmer error).
pub(crate) fn with_java_map_names(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let union = batch.column(1).to_data();
    let DataType::Union(fields, mode) = union.data_type().clone() else {
        return Err(ArrowError::SchemaError("the SqlInfo value column is not a union".into()));
    };
    let mut children = union.child_data().to_vec();
    let mut renamed = Vec::with_capacity(children.len());
    for (i, (type_id, field)) in fields.iter().enumerate() {
        let DataType::Map(entries, sorted) = field.data_type() else {
            renamed.push((type_id, Arc::clone(field)));
            continue;
        };
        let DataType::Struct(kv) = entries.data_type() else {
            return Err(ArrowError::SchemaError("a map without struct entries".into()));
        };
        let kv = Fields::from(vec![kv[0].as_ref().clone().with_name("key"), kv[1].as_ref().clone().with_name("value")]);
        let map_type = DataType::Map(Arc::new(entries.as_ref().clone().with_data_type(DataType::Struct(kv.clone()))), *sorted);
        let entry_data = children[i].child_data()[0].clone().into_builder().data_type(DataType::Struct(kv)).build()?;
        children[i] = children[i].clone().into_builder().data_type(map_type.clone()).child_data(vec![entry_data]).build()?;
        renamed.push((type_id, Arc::new(field.as_ref().clone().with_data_type(map_type))));
    }
    let (type_ids, fields): (Vec<i8>, Vec<_>) = renamed.into_iter().unzip();
    let union_fields = UnionFields::try_new(type_ids, fields)?;
    let union_type = DataType::Union(union_fields, mode);
    let union = union.into_builder().data_type(union_type.clone()).child_data(children).build()?;
    let value = batch.schema().field(1).as_ref().clone().with_data_type(union_type);
    let schema = Schema::new(vec![batch.schema().field(0).as_ref().clone(), value]);
    RecordBatch::try_new(Arc::new(schema), vec![Arc::clone(batch.column(0)), make_array(union)])
}

/// One row of the type list: a type faccia's tables or results use, named as CAST takes it.
struct TypeRow {
    name: &'static str,
    data_type: XdbcDataType,
    /// Digits for numbers (bits for REAL and DOUBLE), characters for dates and times.
    column_size: Option<i32>,
    /// Some(unsigned) for numbers.
    unsigned: Option<bool>,
    radix: Option<i32>,
    literal: Option<(&'static str, &'static str)>,
    /// Some for dates and times: their SQL_DATA_TYPE is DATETIME, with this subcode.
    subcode: Option<XdbcDatetimeSubcode>,
}

/// The types of `GetXdbcTypeInfo`, one per Arrow type faccia's tables and results use.
const TYPES: &[TypeRow] = {
    use XdbcDataType as T;
    use XdbcDatetimeSubcode as S;
    const fn number(name: &'static str, data_type: T, digits: i32, unsigned: bool, radix: i32) -> TypeRow {
        TypeRow { name, data_type, column_size: Some(digits), unsigned: Some(unsigned), radix: Some(radix), literal: None, subcode: None }
    }
    const fn temporal(name: &'static str, data_type: T, chars: i32, prefix: &'static str, subcode: S) -> TypeRow {
        TypeRow {
            name,
            data_type,
            column_size: Some(chars),
            unsigned: None,
            radix: None,
            literal: Some((prefix, "'")),
            subcode: Some(subcode),
        }
    }
    // Arrow arrays hold at most i32::MAX bytes of text or binary.
    const fn bytes(name: &'static str, data_type: T, prefix: &'static str) -> TypeRow {
        TypeRow { name, data_type, column_size: Some(i32::MAX), unsigned: None, radix: None, literal: Some((prefix, "'")), subcode: None }
    }
    &[
        TypeRow { name: "BOOLEAN", data_type: T::XdbcBit, column_size: Some(1), unsigned: None, radix: None, literal: None, subcode: None },
        number("TINYINT", T::XdbcTinyint, 3, false, 10),
        number("TINYINT UNSIGNED", T::XdbcTinyint, 3, true, 10),
        number("SMALLINT", T::XdbcSmallint, 5, false, 10),
        number("SMALLINT UNSIGNED", T::XdbcSmallint, 5, true, 10),
        number("INTEGER", T::XdbcInteger, 10, false, 10),
        number("INTEGER UNSIGNED", T::XdbcInteger, 10, true, 10),
        number("BIGINT", T::XdbcBigint, 19, false, 10),
        number("BIGINT UNSIGNED", T::XdbcBigint, 20, true, 10),
        number("REAL", T::XdbcReal, 24, false, 2),
        number("DOUBLE", T::XdbcDouble, 53, false, 2),
        number("DECIMAL", T::XdbcDecimal, 38, false, 10),
        bytes("VARCHAR", T::XdbcVarchar, "'"),
        bytes("BYTEA", T::XdbcVarbinary, "X'"),
        temporal("DATE", T::XdbcDate, 10, "DATE '", S::XdbcSubcodeYear),
        temporal("TIME", T::XdbcTime, 18, "TIME '", S::XdbcSubcodeTime),
        temporal("TIMESTAMP", T::XdbcTimestamp, 29, "TIMESTAMP '", S::XdbcSubcodeTimestamp),
        temporal("TIMESTAMP WITH TIME ZONE", T::XdbcTimestamp, 35, "TIMESTAMP '", S::XdbcSubcodeTimestampWithTimezone),
    ]
};

/// The `GetXdbcTypeInfo` answer (ODBC's SQLGetTypeInfo, ADBC; the JDBC driver never asks).
pub(crate) fn xdbc_types() -> XdbcTypeInfoData {
    let mut b = XdbcTypeInfoDataBuilder::new();
    for row in TYPES {
        let is_text = matches!(row.data_type, XdbcDataType::XdbcVarchar);
        let is_decimal = matches!(row.data_type, XdbcDataType::XdbcDecimal);
        b.append(XdbcTypeInfo {
            type_name: row.name.into(),
            data_type: row.data_type,
            column_size: row.column_size,
            literal_prefix: row.literal.map(|(prefix, _)| prefix.into()),
            literal_suffix: row.literal.map(|(_, suffix)| suffix.into()),
            create_params: is_decimal.then(|| vec!["precision".into(), "scale".into()]),
            nullable: Nullable::NullabilityNullable,
            case_sensitive: is_text,
            // LIKE works on text only.
            searchable: if is_text { Searchable::Full } else { Searchable::Basic },
            unsigned_attribute: row.unsigned,
            fixed_prec_scale: false,
            auto_increment: row.unsigned.map(|_| false),
            local_type_name: Some(row.name.into()),
            minimum_scale: is_decimal.then_some(0),
            maximum_scale: is_decimal.then_some(38),
            sql_data_type: if row.subcode.is_some() { XdbcDataType::XdbcDatetime } else { row.data_type },
            datetime_subcode: row.subcode,
            num_prec_radix: row.radix,
            interval_precision: None,
        });
    }
    b.build().expect("the type list is well formed")
}

/// `GetPrimaryKeys`, as FlightSql.proto and the JDBC driver's `FlightSqlProducer.Schemas` have it.
pub(crate) static PRIMARY_KEYS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
});

/// `GetImportedKeys`, `GetExportedKeys` and `GetCrossReference` (one schema); the rules are
/// `UpdateDeleteRules` values.
pub(crate) static FOREIGN_KEYS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
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
    ]))
});

/// The type JDBC drivers before 19.0 can read: view types become their plain forms (the
/// driver has no reader for them, and fails the whole result or `getColumns`), also inside
/// lists and structs.
pub(crate) fn plain_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(item) => DataType::List(Arc::new(plain_field(item))),
        DataType::LargeList(item) => DataType::LargeList(Arc::new(plain_field(item))),
        DataType::FixedSizeList(item, n) => DataType::FixedSizeList(Arc::new(plain_field(item)), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(|f| plain_field(f)).collect()),
        other => other.clone(),
    }
}

fn plain_field(field: &Field) -> Field {
    field.clone().with_data_type(plain_type(field.data_type()))
}

/// `schema` with plain types (`plain_type`), its metadata kept.
pub(crate) fn plain_schema(schema: &Schema) -> Schema {
    Schema::new_with_metadata(schema.fields().iter().map(|f| plain_field(f)).collect::<Fields>(), schema.metadata().clone())
}

/// `batch` with plain types: a cast of the columns that have view types, the others as they are.
///
/// # Errors
/// When Arrow cannot cast a column (not expected: each view type casts to its plain form).
pub(crate) fn plain_batch(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = plain_schema(&batch.schema());
    if schema == *batch.schema() {
        return Ok(batch);
    }
    let columns =
        batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(Arc::clone(column))
                } else {
                    arrow::compute::cast(column, field.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::new(schema), columns)
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, StringViewArray};

    use super::*;

    #[test]
    fn keywords_are_keywords_of_the_parser() {
        use datafusion::sql::sqlparser::keywords::ALL_KEYWORDS;
        for keyword in KEYWORDS {
            assert!(ALL_KEYWORDS.contains(keyword), "{keyword} is not a keyword of DataFusion's SQL parser");
        }
    }

    #[tokio::test]
    async fn every_type_name_is_one_cast_takes() {
        let ctx = SessionContext::new();
        for row in TYPES {
            let sql = format!("SELECT CAST(NULL AS {}) AS x", row.name);
            let frame = ctx.sql(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            let data_type = frame.schema().field(0).data_type().clone();
            let unsigned = matches!(data_type, DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64);
            assert_eq!(row.unsigned.unwrap_or(false), unsigned, "{}: {data_type}", row.name);
        }
        let data = xdbc_types().record_batch(None).unwrap();
        assert_eq!(data.num_rows(), TYPES.len());
    }

    #[test]
    fn function_lists_follow_the_registry() {
        let ctx = SessionContext::new();
        ctx.register_udf(datafusion::logical_expr::create_udf(
            "my_score",
            vec![DataType::Float64, DataType::Float64],
            DataType::Float64,
            datafusion::logical_expr::Volatility::Immutable,
            Arc::new(|args: &[datafusion::logical_expr::ColumnarValue]| Ok(args[0].clone())),
        ));
        let functions = Functions::of(&ctx);
        for (list, name) in [(&functions.numeric, "abs"), (&functions.numeric, "my_score"), (&functions.string, "upper")] {
            assert!(list.contains(&name.to_string()), "{name} missing: {list:?}");
        }
        for (list, name) in [(&functions.datetime, "date_trunc"), (&functions.datetime, "now"), (&functions.system, "coalesce")] {
            assert!(list.contains(&name.to_string()), "{name} missing: {list:?}");
        }
        assert!(!functions.string.contains(&"array_length".to_string()));
    }

    #[test]
    fn the_convert_map_is_what_cast_does() {
        use SqlSupportsConvert as C;
        let map = convert_map();
        assert!(map[&(C::SqlConvertVarchar as i32)].contains(&(C::SqlConvertInteger as i32)));
        assert!(map[&(C::SqlConvertTimestamp as i32)].contains(&(C::SqlConvertDate as i32)));
        assert!(!map[&(C::SqlConvertBit as i32)].contains(&(C::SqlConvertDate as i32)));
    }

    #[test]
    fn the_convert_map_entries_are_named_as_java_reads_them() {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::SqlSupportsConvert, convert_map());
        b.append(SqlInfo::FlightSqlServerName, "faccia");
        let batch = with_java_map_names(&b.build().unwrap().record_batch([]).unwrap()).unwrap();
        let DataType::Union(fields, _) = batch.schema().field(1).data_type().clone() else { panic!("not a union") };
        let (_, map) = fields.iter().find(|(id, _)| *id == 5).unwrap();
        let DataType::Map(entries, _) = map.data_type() else { panic!("not a map") };
        let DataType::Struct(kv) = entries.data_type() else { panic!("not a struct") };
        assert_eq!((kv[0].name().as_str(), kv[1].name().as_str()), ("key", "value"));
        assert_eq!(batch.num_rows(), 2);
        let union = batch.column(1).as_union();
        assert_eq!(union.value(1).as_map().len(), 1, "the map row still holds one map");
    }

    #[test]
    fn view_types_become_plain_types() {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8View, true), Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringViewArray::from(vec![Some("Agliè"), None])), Arc::new(arrow::array::Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
        let plain = plain_batch(batch).unwrap();
        assert_eq!(plain.schema().field(0).data_type(), &DataType::Utf8);
        assert_eq!(plain.column(0).as_string::<i32>().value(0), "Agliè");
        let list = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8View, true)));
        assert_eq!(plain_type(&list), DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))));
    }
}
