//! SQL over the vote dataset: a DataFusion context with the tables, the index functions and
//! the ready views analysts use (`schemas/sql.md` documents each, with its formula).
//!
//! Tables: `votes` (the Parquet dataset, Hive-partitioned by `date`, pruned by it), the
//! registry (`municipalities`, `services`) and the code tables (`faces`, `channels`,
//! `reasons`). Functions return percentages: `csat`, `net_score`, `happy_index`,
//! `wilson_lower`, `wilson_upper`.
//!
//! Architecture invariant: the query path never writes to the dataset.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int8Array, RecordBatch, StringArray, UInt8Array, UInt16Array,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::{SessionConfig, SessionContext, col};

use crate::model::{Channel, Face, Reason};
use crate::registry::Catalog;
use crate::store;

/// The normal quantile for 95 % confidence, used by the Wilson bounds.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// Opens a SQL context over the dataset in `data_dir`.
///
/// # Errors
/// When the dataset location cannot be registered.
pub async fn context(data_dir: &Path) -> DfResult<SessionContext> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .set_bool("datafusion.execution.parquet.pushdown_filters", true)
        .set_bool("datafusion.execution.parquet.reorder_filters", true);
    let ctx = SessionContext::new_with_config(config);
    register_votes(&ctx, data_dir)?;
    register_registry(&ctx)?;
    for udf in index_functions() {
        ctx.register_udf(udf);
    }
    create_views(&ctx).await?;
    Ok(ctx)
}

fn register_votes(ctx: &SessionContext, data_dir: &Path) -> DfResult<()> {
    let votes_dir = data_dir.join(store::VOTES_DIR);
    std::fs::create_dir_all(&votes_dir).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let absolute = votes_dir.canonicalize().map_err(|e| DataFusionError::External(Box::new(e)))?;
    let url = ListingTableUrl::parse(format!("file://{}/", absolute.display()))?;
    let sort_order = vec![["municipality", "service", "ts"].map(|c| col(c).sort(true, false)).to_vec()];
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("date".to_string(), DataType::Date32)])
        .with_file_sort_order(sort_order);
    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(store::schema());
    ctx.register_table("votes", Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

fn mem_table(ctx: &SessionContext, name: &str, columns: Vec<(&str, ArrayRef, bool)>) -> DfResult<()> {
    let schema = Arc::new(Schema::new(
        columns.iter().map(|(n, a, nullable)| Field::new(*n, a.data_type().clone(), *nullable)).collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns.into_iter().map(|(_, a, _)| a).collect())?;
    ctx.register_table(name, Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;
    Ok(())
}

fn register_registry(ctx: &SessionContext) -> DfResult<()> {
    let catalog = Catalog::builtin();
    let m = &catalog.municipalities;
    let strings = |f: fn(&crate::registry::Municipality) -> String| -> ArrayRef { Arc::new(m.iter().map(|x| Some(f(x))).collect::<StringArray>()) };
    mem_table(ctx, "municipalities", vec![
        ("municipality", Arc::new(m.iter().map(|x| x.code.0).collect::<UInt32Array>()), false),
        ("istat_code", strings(|x| x.code.to_string()), false),
        ("name", strings(|x| x.name.clone()), false),
        ("province", strings(|x| x.province.clone()), false),
        ("region_code", Arc::new(m.iter().map(|x| x.region_code).collect::<UInt8Array>()), false),
        ("region", strings(|x| x.region.clone()), false),
        ("area", strings(|x| x.area.clone()), false),
        ("population", Arc::new(m.iter().map(|x| x.population).collect::<UInt32Array>()), false),
        ("eligible", Arc::new(m.iter().map(|x| Some(x.eligible())).collect::<BooleanArray>()), false),
    ])?;
    let s = &catalog.services;
    mem_table(ctx, "services", vec![
        ("service", Arc::new(s.iter().map(|x| x.id).collect::<UInt16Array>()), false),
        ("code", Arc::new(s.iter().map(|x| Some(x.code.clone())).collect::<StringArray>()), false),
        ("name_it", Arc::new(s.iter().map(|x| Some(x.name_it.clone())).collect::<StringArray>()), false),
        ("name", Arc::new(s.iter().map(|x| Some(x.name_en.clone())).collect::<StringArray>()), false),
    ])?;
    mem_table(ctx, "faces", vec![
        ("face", Arc::new(Face::ALL.iter().map(|f| f.score()).collect::<Int8Array>()), false),
        ("name", Arc::new(Face::ALL.iter().map(|f| Some(f.name())).collect::<StringArray>()), false),
    ])?;
    mem_table(ctx, "channels", vec![
        ("channel", Arc::new(Channel::ALL.iter().map(|c| c.code()).collect::<UInt8Array>()), false),
        ("name", Arc::new(Channel::ALL.iter().map(|c| Some(c.name())).collect::<StringArray>()), false),
    ])?;
    mem_table(ctx, "reasons", vec![
        ("reason", Arc::new(Reason::ALL.iter().map(|r| r.code()).collect::<UInt8Array>()), false),
        ("name", Arc::new(Reason::ALL.iter().map(|r| Some(r.name())).collect::<StringArray>()), false),
    ])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Index functions. Pure arithmetic on counts; each returns a percentage, NULL when total is 0.

/// CSAT %: 100·P/T.
pub fn csat(positive: f64, total: f64) -> Option<f64> {
    (total > 0.0).then(|| 100.0 * positive / total)
}

/// Net score: 100·(P − N)/T, from −100 to +100.
pub fn net_score(positive: f64, negative: f64, total: f64) -> Option<f64> {
    (total > 0.0).then(|| 100.0 * (positive - negative) / total)
}

/// Happy-style index: 100·(P + U/2)/T.
pub fn happy_index(positive: f64, neutral: f64, total: f64) -> Option<f64> {
    (total > 0.0).then(|| 100.0 * (positive + neutral / 2.0) / total)
}

/// Wilson score interval of P/T at 95 %, as percentages (lower, upper).
pub fn wilson(positive: f64, total: f64) -> Option<(f64, f64)> {
    if total <= 0.0 {
        return None;
    }
    let p = positive / total;
    let z2 = Z_95 * Z_95;
    let denominator = 1.0 + z2 / total;
    let center = (p + z2 / (2.0 * total)) / denominator;
    let margin = Z_95 / denominator * (p * (1.0 - p) / total + z2 / (4.0 * total * total)).sqrt();
    Some((100.0 * (center - margin).max(0.0), 100.0 * (center + margin).min(1.0)))
}

fn float_udf(name: &str, arity: usize, f: fn(&[f64]) -> Option<f64>) -> ScalarUDF {
    let implementation = Arc::new(move |args: &[ColumnarValue]| -> DfResult<ColumnarValue> {
        let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let columns: Vec<&Float64Array> = arrays.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
        let rows = columns.first().map_or(0, |c| c.len());
        let mut values = [0.0; 4];
        let result: Float64Array = (0..rows)
            .map(|row| {
                for (value, column) in values.iter_mut().zip(&columns) {
                    if column.is_null(row) {
                        return None;
                    }
                    *value = column.value(row);
                }
                f(&values[..columns.len()])
            })
            .collect();
        let result: ArrayRef = Arc::new(result);
        if scalar {
            Ok(ColumnarValue::Scalar(datafusion::scalar::ScalarValue::try_from_array(&result, 0)?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    });
    create_udf(name, vec![DataType::Float64; arity], DataType::Float64, Volatility::Immutable, implementation)
}

/// The index functions, ready to register.
pub fn index_functions() -> Vec<ScalarUDF> {
    vec![
        float_udf("csat", 2, |v| csat(v[0], v[1])),
        float_udf("net_score", 3, |v| net_score(v[0], v[1], v[2])),
        float_udf("happy_index", 3, |v| happy_index(v[0], v[1], v[2])),
        float_udf("wilson_lower", 2, |v| wilson(v[0], v[1]).map(|w| w.0)),
        float_udf("wilson_upper", 2, |v| wilson(v[0], v[1]).map(|w| w.1)),
    ]
}

/// The per-service satisfaction index. Rank it with `ORDER BY wilson_low_pct DESC`: the lower
/// Wilson bound does not reward services with few votes.
pub const SERVICE_INDEX_VIEW: &str = "
CREATE VIEW service_index AS
WITH counts AS (
    SELECT service,
           count(*) AS votes,
           sum(CASE WHEN face = 1 THEN 1 ELSE 0 END) AS positive,
           sum(CASE WHEN face = 0 THEN 1 ELSE 0 END) AS neutral,
           sum(CASE WHEN face = -1 THEN 1 ELSE 0 END) AS negative
    FROM votes
    WHERE misuse = 0
    GROUP BY service)
SELECT c.service,
       s.name,
       c.votes,
       c.positive,
       c.neutral,
       c.negative,
       round(csat(c.positive, c.votes), 1) AS csat_pct,
       round(net_score(c.positive, c.negative, c.votes), 1) AS net_score,
       round(happy_index(c.positive, c.neutral, c.votes), 1) AS happy_index,
       round(wilson_lower(c.positive, c.votes), 1) AS wilson_low_pct,
       round(wilson_upper(c.positive, c.votes), 1) AS wilson_high_pct
FROM counts c JOIN services s ON s.service = c.service";

async fn create_views(ctx: &SessionContext) -> DfResult<()> {
    ctx.sql(SERVICE_INDEX_VIEW).await?.collect().await?;
    Ok(())
}

/// Runs one statement and collects its result.
///
/// # Errors
/// SQL errors, with DataFusion's message.
pub async fn run(ctx: &SessionContext, sql: &str) -> DfResult<Vec<RecordBatch>> {
    ctx.sql(sql).await?.collect().await
}

/// Output formats of `faccia sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

/// Writes query results in `format`.
///
/// # Errors
/// Encoding or write errors.
pub fn write_results(batches: &[RecordBatch], format: Format, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    match format {
        Format::Table => writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(batches)?)?,
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(out);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            writeln!(out)?;
        }
        Format::Parquet => {
            let schema = batches.first().map_or_else(|| Arc::new(Schema::empty()), |b| b.schema());
            let mut bytes = Vec::new();
            let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.close()?;
            out.write_all(&bytes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_hand_computed_values() {
        // 60 positive, 25 neutral, 15 negative out of 100.
        assert_eq!(csat(60.0, 100.0), Some(60.0));
        assert_eq!(net_score(60.0, 15.0, 100.0), Some(45.0));
        assert_eq!(happy_index(60.0, 25.0, 100.0), Some(72.5));
        assert_eq!(csat(1.0, 0.0), None);
        // Wilson 95 % for 60/100: z² = 3.8415, centre (0.6 + 0.019207)/1.038415 = 0.596300,
        // half-width 1.959964/1.038415 · √(0.0024 + 0.000096) = 0.094300 → [50.20 %, 69.06 %].
        let (low, high) = wilson(60.0, 100.0).unwrap();
        assert!((low - 50.20).abs() < 0.01 && (high - 69.06).abs() < 0.01, "{low} {high}");
        // 3/3 must not look perfect: lower bound 43.85 %.
        let (low, high) = wilson(3.0, 3.0).unwrap();
        assert!((low - 43.85).abs() < 0.01 && (high - 100.0).abs() < 1e-9, "{low} {high}");
        let (low, _) = wilson(0.0, 10.0).unwrap();
        assert_eq!(low, 0.0);
    }

    #[tokio::test]
    async fn functions_and_tables_answer_sql() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path()).await.unwrap();
        let batches = run(&ctx, "SELECT csat(60, 100) AS c, net_score(60, 15, 100) AS n, round(wilson_lower(3, 3), 2) AS w").await.unwrap();
        let row = &batches[0];
        assert_eq!(row.column(0).as_primitive::<Float64Type>().value(0), 60.0);
        assert_eq!(row.column(1).as_primitive::<Float64Type>().value(0), 45.0);
        assert_eq!(row.column(2).as_primitive::<Float64Type>().value(0), 43.85);
        let batches = run(&ctx, "SELECT count(*) FROM municipalities WHERE eligible").await.unwrap();
        assert_eq!(batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0), 5490);
        let batches = run(&ctx, "SELECT count(*) FROM votes").await.unwrap();
        assert_eq!(batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0), 0);
        assert!(run(&ctx, "SELECT * FROM service_index").await.unwrap().iter().all(|b| b.num_rows() == 0));
    }
}
