//! The registry as SQL tables: the catalogs compiled into the binary (`services`, `faces`,
//! `channels`, `reasons`), and the data directory's own registry state (`municipalities` of its
//! current edition, `registry_editions`, `municipality_successors`, `terminals`,
//! `administrations`, `unions`) and the alerts' files (`alerts`, `alert_deliveries`), read again at every scan so that a long-running server sees
//! terminals added and editions imported after it started; and `istat_code(municipality)`, the six-digit text
//! form of a code held as a number (what a spreadsheet must keep as text: `001001`, not 1001).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int8Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt8Array,
    UInt16Array, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{ColumnarValue, Expr, ScalarUDF, Volatility, create_udf};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use futures::future::BoxFuture;

use crate::model::{Channel, Face, IstatCode, Reason};
use crate::registry::{self, Catalog, Municipality};
use crate::storage::buffer::TIME_ZONE;

fn batch(columns: Vec<(&str, ArrayRef, bool)>) -> DfResult<RecordBatch> {
    let schema =
        Arc::new(Schema::new(columns.iter().map(|(n, a, nullable)| Field::new(*n, a.data_type().clone(), *nullable)).collect::<Vec<_>>()));
    Ok(RecordBatch::try_new(schema, columns.into_iter().map(|(_, a, _)| a).collect())?)
}

fn mem_table(ctx: &SessionContext, name: &str, columns: Vec<(&str, ArrayRef, bool)>) -> DfResult<()> {
    let batch = batch(columns)?;
    ctx.register_table(name, Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))?;
    Ok(())
}

fn strings<T>(items: &[T], f: impl Fn(&T) -> String) -> ArrayRef {
    Arc::new(items.iter().map(|x| Some(f(x))).collect::<StringArray>())
}

/// Registers the compiled-in catalogs and the data directory's registry state.
///
/// # Errors
/// When a table cannot be built (never expected for the built-in catalogs).
pub(crate) fn register(ctx: &SessionContext, data_dir: PathBuf) -> DfResult<()> {
    let catalog = Catalog::builtin();
    let dir = data_dir.clone();
    ctx.register_table("municipalities", Arc::new(ScanTimeTable::new(move || municipalities(&dir))?))?;
    let dir = data_dir.clone();
    ctx.register_table("registry_editions", Arc::new(ScanTimeTable::new(move || editions(&dir))?))?;
    let dir = data_dir.clone();
    ctx.register_table("municipality_successors", Arc::new(ScanTimeTable::new(move || successors(&dir))?))?;
    let s = &catalog.services;
    mem_table(
        ctx,
        "services",
        vec![
            ("service", Arc::new(s.iter().map(|x| x.id).collect::<UInt16Array>()), false),
            ("code", strings(s, |x| x.code.clone()), false),
            ("name_it", strings(s, |x| x.name_it.clone()), false),
            ("name", strings(s, |x| x.name_en.clone()), false),
        ],
    )?;
    mem_table(
        ctx,
        "faces",
        vec![
            ("face", Arc::new(Face::ALL.iter().map(|f| f.score()).collect::<Int8Array>()), false),
            ("name", strings(&Face::ALL, |f| f.name().into()), false),
        ],
    )?;
    mem_table(
        ctx,
        "channels",
        vec![
            ("channel", Arc::new(Channel::ALL.iter().map(|c| c.code()).collect::<UInt8Array>()), false),
            ("name", strings(&Channel::ALL, |c| c.name().into()), false),
        ],
    )?;
    mem_table(
        ctx,
        "reasons",
        vec![
            ("reason", Arc::new(Reason::ALL.iter().map(|r| r.code()).collect::<UInt8Array>()), false),
            ("name", strings(&Reason::ALL, |r| r.name().into()), false),
        ],
    )?;
    let dir = data_dir.clone();
    ctx.register_table("terminals", Arc::new(ScanTimeTable::new(move || terminals(&dir))?))?;
    let dir = data_dir.clone();
    ctx.register_table("unions", Arc::new(ScanTimeTable::new(move || unions(&dir))?))?;
    let dir = data_dir.clone();
    ctx.register_table("union_members", Arc::new(ScanTimeTable::new(move || union_members(&dir))?))?;
    let dir = data_dir.clone();
    ctx.register_table("administrations", Arc::new(ScanTimeTable::new(move || administrations(&dir))?))?;
    let dir = data_dir.clone();
    ctx.register_table("alerts", Arc::new(ScanTimeTable::new(move || alerts(&dir))?))?;
    ctx.register_table("alert_deliveries", Arc::new(ScanTimeTable::new(move || alert_deliveries(&data_dir))?))?;
    Ok(())
}

fn registry_error(error: registry::RegistryError) -> DataFusionError {
    DataFusionError::Execution(crate::error_chain(&error))
}

fn catalog(data_dir: &std::path::Path) -> DfResult<Arc<Catalog>> {
    Catalog::for_data_dir(data_dir).map_err(registry_error)
}

/// `municipalities`: the comuni of the data directory's current edition.
fn municipalities(data_dir: &std::path::Path) -> DfResult<RecordBatch> {
    let catalog = catalog(data_dir)?;
    let m = &catalog.municipalities;
    batch(vec![
        ("municipality", Arc::new(m.iter().map(|x| x.code.0).collect::<UInt32Array>()), false),
        ("istat_code", strings(m, |x| x.code.to_string()), false),
        ("name", strings(m, |x| x.name.clone()), false),
        ("province", strings(m, |x| x.province.clone()), false),
        ("region_code", Arc::new(m.iter().map(|x| x.region_code).collect::<UInt8Array>()), false),
        ("region", strings(m, |x| x.region.clone()), false),
        ("area", strings(m, |x| x.area.clone()), false),
        ("population", Arc::new(m.iter().map(|x| x.population).collect::<UInt32Array>()), false),
        ("eligible", Arc::new(m.iter().map(|x| Some(x.eligible())).collect::<BooleanArray>()), false),
        ("edition", Arc::new(m.iter().map(|x| date(&x.edition)).collect::<Date32Array>()), true),
    ])
}

/// Days since the Unix epoch of a YYYY-MM-DD date (the form the registry stores).
fn date(text: &str) -> Option<i32> {
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some((day - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
}

/// `registry_editions`: the editions of the municipality list the data directory went through.
fn editions(data_dir: &std::path::Path) -> DfResult<RecordBatch> {
    let catalog = catalog(data_dir)?;
    let e = &catalog.editions;
    let time = |values: Vec<Option<i64>>| -> ArrayRef { Arc::new(TimestampMillisecondArray::from(values).with_timezone(TIME_ZONE)) };
    let count = |f: fn(&registry::Edition) -> u32| -> ArrayRef { Arc::new(e.iter().map(|x| Some(f(x))).collect::<UInt32Array>()) };
    batch(vec![
        ("edition", Arc::new(e.iter().map(|x| date(&x.edition)).collect::<Date32Array>()), true),
        ("imported_at", time(e.iter().map(|x| x.imported_ms).collect()), true),
        ("source", strings(e, |x| x.source.clone()), false),
        ("municipalities", count(|x| x.municipalities), false),
        ("suppressed", count(|x| x.suppressed), false),
        ("renumbered", count(|x| x.renumbered), false),
        ("renamed", count(|x| x.renamed), false),
        ("new", count(|x| x.new), false),
        ("current", Arc::new((0..e.len()).map(|i| Some(i + 1 == e.len())).collect::<BooleanArray>()), false),
    ])
}

/// `municipality_successors`: every code no longer current, with its direct successor and the
/// current code it leads to (the one the views group its votes under).
fn successors(data_dir: &std::path::Path) -> DfResult<RecordBatch> {
    let catalog = catalog(data_dir)?;
    let s = &catalog.successors;
    let current: Vec<Option<u32>> = s.iter().map(|x| catalog.current(x.municipality).map(|c| c.0)).collect();
    batch(vec![
        ("municipality", Arc::new(s.iter().map(|x| x.municipality.0).collect::<UInt32Array>()), false),
        ("istat_code", strings(s, |x| x.municipality.to_string()), false),
        ("name", strings(s, |x| x.name.clone()), false),
        ("successor", Arc::new(s.iter().map(|x| x.successor.0).collect::<UInt32Array>()), false),
        ("current", Arc::new(UInt32Array::from(current.clone())), true),
        ("current_istat_code", Arc::new(current.iter().map(|c| c.map(|c| IstatCode(c).to_string())).collect::<StringArray>()), true),
        ("kind", strings(s, |x| x.kind.name().to_string()), false),
        ("date", Arc::new(s.iter().map(|x| date(&x.date)).collect::<Date32Array>()), true),
        ("edition", Arc::new(s.iter().map(|x| date(&x.edition)).collect::<Date32Array>()), true),
    ])
}

/// `terminals`: the terminal directory (`terminals.json`), without secrets; with the purchase
/// the bonus settlement reads (`supplier`, `order_kind` `ODA`/`RdO`, `order_number`, `bought`),
/// NULL where not recorded.
fn terminals(data_dir: &std::path::Path) -> DfResult<RecordBatch> {
    let list = registry::list_terminals(data_dir).map_err(registry_error)?;
    let time = |values: Vec<Option<i64>>| -> ArrayRef { Arc::new(TimestampMillisecondArray::from(values).with_timezone(TIME_ZONE)) };
    batch(vec![
        ("terminal", Arc::new(list.iter().map(|t| t.id).collect::<UInt32Array>()), false),
        ("municipality", Arc::new(list.iter().map(|t| IstatCode::parse(&t.municipality).map(|c| c.0)).collect::<UInt32Array>()), true),
        (
            "istat_code",
            Arc::new(list.iter().map(|t| IstatCode::parse(&t.municipality).map(|c| c.to_string())).collect::<StringArray>()),
            true,
        ),
        ("added", time(list.iter().map(|t| Some(t.added_ms)).collect()), false),
        ("revoked", time(list.iter().map(|t| t.revoked_ms).collect()), true),
        ("active", Arc::new(list.iter().map(|t| Some(t.revoked_ms.is_none())).collect::<BooleanArray>()), false),
        ("label", strings(&list, |t| t.label.clone()), false),
        ("union_code", Arc::new(list.iter().map(|t| t.union_code.clone()).collect::<StringArray>()), true),
        ("supplier", Arc::new(list.iter().map(|t| t.purchase.supplier.clone()).collect::<StringArray>()), true),
        ("order_kind", Arc::new(list.iter().map(|t| t.purchase.order_kind.map(|k| k.code())).collect::<StringArray>()), true),
        ("order_number", Arc::new(list.iter().map(|t| t.purchase.order_number.clone()).collect::<StringArray>()), true),
        ("bought", Arc::new(list.iter().map(|t| t.purchase.bought.map(days_since_1970)).collect::<Date32Array>()), true),
    ])
}

/// A date as Arrow's Date32: days since 1970-01-01.
fn days_since_1970(date: chrono::NaiveDate) -> i32 {
    (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date")).num_days() as i32
}

/// `unions`: the unions of comuni (`unions.json`) with the 50 % rule and the bonus; a union's
/// region is its first member's (unions do not cross regions).
fn unions(data_dir: &std::path::Path) -> DfResult<RecordBatch> {
    let list = registry::list_unions(data_dir).map_err(registry_error)?;
    let catalog = catalog(data_dir)?;
    let rules: Vec<_> = list.iter().map(|u| registry::union_eligibility(&catalog, &u.members)).collect();
    let first = |u: &registry::UnionRecord| {
        u.members.first().and_then(|c| IstatCode::parse(c)).and_then(|c| catalog.current(c)).and_then(|c| catalog.municipality(c))
    };
    batch(vec![
        ("union_code", strings(&list, |u| u.code.clone()), false),
        ("name", strings(&list, |u| u.name.clone()), false),
        ("region_code", Arc::new(list.iter().map(|u| first(u).map(|m| m.region_code)).collect::<UInt8Array>()), true),
        ("region", Arc::new(list.iter().map(|u| first(u).map(|m| m.region.clone())).collect::<StringArray>()), true),
        ("members", Arc::new(rules.iter().map(|r| Some(r.members as u32)).collect::<UInt32Array>()), false),
        ("small_members", Arc::new(rules.iter().map(|r| Some(r.small_members as u32)).collect::<UInt32Array>()), false),
        ("eligible", Arc::new(rules.iter().map(|r| Some(r.eligible)).collect::<BooleanArray>()), false),
        ("digital_signature", Arc::new(list.iter().map(|u| u.digital_signature).collect::<BooleanArray>()), true),
        ("pec", Arc::new(list.iter().map(|u| u.pec).collect::<BooleanArray>()), true),
        (
            "bonus_eur",
            Arc::new(
                list.iter().zip(&rules).map(|(u, r)| registry::bonus_eur(r.eligible, u.digital_signature, u.pec)).collect::<UInt32Array>(),
            ),
            true,
        ),
    ])
}

/// `union_members`: one row per union and member comune.
fn union_members(data_dir: &std::path::Path) -> DfResult<RecordBatch> {
    let list = registry::list_unions(data_dir).map_err(registry_error)?;
    let rows: Vec<(&str, &str)> = list.iter().flat_map(|u| u.members.iter().map(move |m| (u.code.as_str(), m.as_str()))).collect();
    batch(vec![
        ("union_code", strings(&rows, |(u, _)| u.to_string()), false),
        ("municipality", Arc::new(rows.iter().map(|(_, m)| IstatCode::parse(m).map(|c| c.0)).collect::<UInt32Array>()), true),
        ("istat_code", strings(&rows, |(_, m)| m.to_string()), false),
    ])
}

/// `administrations`: every comune with the attributes the bonus rule needs and the bonus.
fn administrations(data_dir: &std::path::Path) -> DfResult<RecordBatch> {
    let recorded = registry::list_administrations(data_dir).map_err(registry_error)?;
    let by_code: std::collections::HashMap<&str, &registry::AdministrationRecord> =
        recorded.iter().map(|a| (a.municipality.as_str(), a)).collect();
    let catalog = catalog(data_dir)?;
    let m: &[Municipality] = &catalog.municipalities;
    let codes: Vec<String> = m.iter().map(|x| x.code.to_string()).collect();
    let attribute = |f: fn(&registry::AdministrationRecord) -> Option<bool>| -> Vec<Option<bool>> {
        codes.iter().map(|c| by_code.get(c.as_str()).and_then(|a| f(a))).collect()
    };
    let signature = attribute(|a| a.digital_signature);
    let pec = attribute(|a| a.pec);
    let bonus: UInt32Array = m.iter().enumerate().map(|(i, x)| registry::bonus_eur(x.eligible(), signature[i], pec[i])).collect();
    batch(vec![
        ("municipality", Arc::new(m.iter().map(|x| x.code.0).collect::<UInt32Array>()), false),
        ("istat_code", Arc::new(StringArray::from(codes)), false),
        ("eligible", Arc::new(m.iter().map(|x| Some(x.eligible())).collect::<BooleanArray>()), false),
        ("digital_signature", Arc::new(BooleanArray::from(signature)), true),
        ("pec", Arc::new(BooleanArray::from(pec)), true),
        ("bonus_eur", Arc::new(bonus), true),
    ])
}

fn alerts_error(error: crate::alerts::store::StoreError) -> DataFusionError {
    DataFusionError::Execution(crate::error_chain(&error))
}

fn rome_time(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values).with_timezone(TIME_ZONE))
}

/// `alerts`: one row per alert, from the alerts' event file (`DATA_DIR/alerts/events.jsonl`),
/// in the order they fired.
fn alerts(data_dir: &std::path::Path) -> DfResult<RecordBatch> {
    let list = crate::alerts::store::alerts(data_dir).map_err(alerts_error)?;
    let state = |a: &crate::alerts::store::Alert| {
        if a.last.resolved_at_ms.is_some() { "resolved".to_string() } else { "firing".to_string() }
    };
    batch(vec![
        ("alert_id", strings(&list, |a| a.last.alert_id.clone()), false),
        ("rule", strings(&list, |a| a.last.rule.name().to_string()), false),
        ("state", strings(&list, state), false),
        ("municipality", Arc::new(list.iter().map(|a| a.last.municipality).collect::<UInt32Array>()), true),
        ("istat_code", Arc::new(list.iter().map(|a| a.last.municipality.map(|m| IstatCode(m).to_string())).collect::<StringArray>()), true),
        ("service", Arc::new(list.iter().map(|a| a.last.service).collect::<UInt16Array>()), true),
        ("terminal", Arc::new(list.iter().map(|a| a.last.terminal).collect::<UInt32Array>()), true),
        ("fired_at", rome_time(list.iter().map(|a| Some(a.last.fired_at_ms)).collect()), false),
        ("resolved_at", rome_time(list.iter().map(|a| a.last.resolved_at_ms).collect()), true),
        ("value", Arc::new(list.iter().map(|a| a.last.value).collect::<Float64Array>()), true),
        ("threshold", Arc::new(list.iter().map(|a| Some(a.last.threshold)).collect::<Float64Array>()), true),
        ("message", strings(&list, |a| a.last.message.clone()), false),
        ("delivered", Arc::new(list.iter().map(|a| Some(a.delivered)).collect::<BooleanArray>()), false),
    ])
}

/// `alert_deliveries`: one row per webhook attempt (`DATA_DIR/alerts/deliveries.jsonl`).
fn alert_deliveries(data_dir: &std::path::Path) -> DfResult<RecordBatch> {
    let list = crate::alerts::store::read_deliveries(data_dir).map_err(alerts_error)?;
    batch(vec![
        ("alert_id", strings(&list, |d| d.alert_id.clone()), false),
        ("event", strings(&list, |d| d.event.name().to_string()), false),
        ("attempt", Arc::new(list.iter().map(|d| Some(d.attempt)).collect::<UInt32Array>()), false),
        ("at", rome_time(list.iter().map(|d| Some(d.at_ms)).collect()), false),
        ("status", Arc::new(list.iter().map(|d| d.status).collect::<UInt16Array>()), true),
        ("error", Arc::new(list.iter().map(|d| d.error.clone()).collect::<StringArray>()), true),
    ])
}

/// The six-digit form of an ISTAT code held as a number (1001 → `001001`); NULL for NULL and
/// for a number no code has (0, negative, more than six digits).
fn istat_text(code: i64) -> Option<String> {
    (1..=999_999).contains(&code).then(|| IstatCode(code as u32).to_string())
}

/// The registry's functions, ready to register: `istat_code(municipality)`. It takes any
/// integer (the columns are UInt32, a literal is Int64; both widen to Int64 without loss).
pub(crate) fn functions() -> Vec<ScalarUDF> {
    let implementation = Arc::new(|args: &[ColumnarValue]| -> DfResult<ColumnarValue> {
        let scalar = matches!(args[0], ColumnarValue::Scalar(_));
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let codes: StringArray = arrays[0].as_primitive::<Int64Type>().iter().map(|c| c.and_then(istat_text)).collect();
        let codes: ArrayRef = Arc::new(codes);
        Ok(if scalar { ColumnarValue::Scalar(ScalarValue::try_from_array(&codes, 0)?) } else { ColumnarValue::Array(codes) })
    });
    vec![create_udf("istat_code", vec![DataType::Int64], DataType::Utf8, Volatility::Immutable, implementation)]
}

/// The rows of a `ScanTimeTable`, computed when a scan starts.
type Rows = Box<dyn Fn() -> BoxFuture<'static, DfResult<RecordBatch>> + Send + Sync>;

/// A small table computed again at every scan (the registry's tables; `table_history`).
pub(crate) struct ScanTimeTable {
    schema: SchemaRef,
    table_type: TableType,
    rows: Rows,
}

impl ScanTimeTable {
    /// A table whose rows `rows` computes at once; its schema is that of a first computation.
    fn new(rows: impl Fn() -> DfResult<RecordBatch> + Send + Sync + 'static) -> DfResult<ScanTimeTable> {
        let schema = rows()?.schema();
        Ok(ScanTimeTable { schema, table_type: TableType::Base, rows: Box::new(move || Box::pin(std::future::ready(rows()))) })
    }

    /// A table of `schema`, shown as `table_type`, whose rows `rows` reads (e.g. from storage).
    pub(crate) fn asynchronous(
        schema: SchemaRef,
        table_type: TableType,
        rows: impl Fn() -> BoxFuture<'static, DfResult<RecordBatch>> + Send + Sync + 'static,
    ) -> ScanTimeTable {
        ScanTimeTable { schema, table_type, rows: Box::new(rows) }
    }
}

impl fmt::Debug for ScanTimeTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanTimeTable").field("schema", &self.schema).finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for ScanTimeTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        self.table_type
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let rows = (self.rows)().await?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![rows]], self.schema(), projection.cloned())?)
    }
}
