//! `faccia bulletin`: the programme office's monthly bulletin, as the 2009–2011 programme
//! published it — per channel the votes, weekly average and share of positive faces; the
//! participating administrations and the coverage of the eligible ones; services ranked by the
//! Wilson lower bound; reasons for red faces; the change from the previous month with its
//! significance — and the month's bonus settlement per supplier (`settlement`).
//!
//! Every number is SQL over the index library, run through `query::context` (what `faccia sql`
//! opens): the functions `csat`, `wilson_lower`, `wilson_upper`, `change_z`, `share_pct`, the
//! rollup `vote_counts` (or `counted_votes` for one municipality, which the rollup does not
//! key), `municipality_service_counts`, and the registry tables (`terminals`, `administrations`,
//! `unions`: the bonus rule's `bonus_eur`). The scope (`--region`, `--municipality`) is a
//! `WHERE` of each query. Out: one self-contained HTML page (`html`), a CSV per table
//! (`csv-excel`: byte-order mark, `;`, decimal commas) and one XLSX workbook with a sheet per
//! table (`query::xlsx`).

pub(crate) mod html;
pub(crate) mod settlement;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Date32Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Date32Type, Field, Int64Type, Schema, SchemaRef, UInt8Type, UInt32Type};
use chrono::{Datelike, Months, NaiveDate};
use datafusion::prelude::SessionContext;

use crate::model::IstatCode;
use crate::query::{self, Format};
use crate::registry::Catalog;
use settlement::{BoughtTerminal, Line};

/// The language of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Italian (the programme's offices).
    It,
    /// English.
    En,
}

/// Where the bulletin's numbers come from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scope {
    /// Every municipality.
    Italy,
    /// One region (ISTAT region code and name).
    Region { code: u8, name: String },
    /// One municipality, and the unions it is a member of.
    Municipality { code: IstatCode, name: String },
}

impl Scope {
    /// Reads `--region NAME` or `--municipality CODE` (at most one: clap refuses both).
    ///
    /// # Errors
    /// A region no municipality of the registry has (the message lists them), a code that is
    /// not six digits or names no municipality.
    pub(crate) fn parse(region: Option<&str>, municipality: Option<&str>) -> anyhow::Result<Scope> {
        let catalog = Catalog::builtin();
        if let Some(name) = region {
            let found = catalog.municipalities.iter().find(|m| m.region.eq_ignore_ascii_case(name.trim()));
            return match found {
                Some(m) => Ok(Scope::Region { code: m.region_code, name: m.region.clone() }),
                None => {
                    let mut regions: Vec<&str> = catalog.municipalities.iter().map(|m| m.region.as_str()).collect();
                    regions.sort_unstable();
                    regions.dedup();
                    bail!("--region {name:?} is not a region of the registry; the regions are: {}", regions.join(", "))
                }
            };
        }
        if let Some(text) = municipality {
            let code = IstatCode::parse(text)
                .with_context(|| format!("--municipality {text:?} is not an ISTAT code (six digits, e.g. 001003)"))?;
            let m = catalog
                .municipality(code)
                .with_context(|| format!("--municipality {code} is not a municipality of the registry (data/comuni.csv)"))?;
            return Ok(Scope::Municipality { code, name: m.name.clone() });
        }
        Ok(Scope::Italy)
    }

    /// The condition on a table with `region_code` and `municipality` columns (alias `t`).
    fn on(&self, t: &str) -> String {
        match self {
            Scope::Italy => "TRUE".into(),
            Scope::Region { code, .. } => format!("{t}.region_code = {code}"),
            Scope::Municipality { code, .. } => format!("{t}.municipality = {}", code.0),
        }
    }

    /// The condition on `unions` (alias `u`): its region, or the unions the municipality is in.
    fn on_unions(&self) -> String {
        match self {
            Scope::Italy => "TRUE".into(),
            Scope::Region { code, .. } => format!("u.region_code = {code}"),
            Scope::Municipality { code, .. } => {
                format!("u.union_code IN (SELECT union_code FROM union_members WHERE municipality = {})", code.0)
            }
        }
    }

    /// A short name for the page's title: `Italia`, the region's or the municipality's name.
    pub(crate) fn title(&self, lang: Lang) -> String {
        match (self, lang) {
            (Scope::Italy, Lang::It) => "Italia".into(),
            (Scope::Italy, Lang::En) => "Italy".into(),
            (Scope::Region { name, .. }, _) => name.clone(),
            (Scope::Municipality { code, name }, _) => format!("{name} ({code})"),
        }
    }
}

/// What `faccia bulletin` writes.
#[derive(Debug, Clone)]
pub(crate) struct BulletinPlan {
    /// The month's first day.
    pub(crate) month: NaiveDate,
    pub(crate) scope: Scope,
    pub(crate) lang: Lang,
    /// The directory the files go to (created if absent).
    pub(crate) out: PathBuf,
}

/// Reads `--month YYYY-MM` as the month's first day.
///
/// # Errors
/// Anything else, naming the flag and the form.
pub(crate) fn parse_month(text: &str) -> anyhow::Result<NaiveDate> {
    NaiveDate::parse_from_str(&format!("{}-01", text.trim()), "%Y-%m-%d")
        .ok()
        .filter(|_| text.trim().len() == 7)
        .with_context(|| format!("--month {text:?} is not a month: give YYYY-MM, e.g. 2026-11"))
}

/// One table of the bulletin: its file and sheet name, and its rows.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// File name part and sheet name (`channels`, `coverage`, …).
    pub(crate) name: &'static str,
    /// The SQL that computed it (shown under the table in the page); empty for the settlement,
    /// which is the rule applied to a query's rows.
    pub(crate) sql: String,
    pub(crate) schema: SchemaRef,
    pub(crate) batches: Vec<RecordBatch>,
}

impl Table {
    fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The table as one batch (the page reads it by row).
    pub(crate) fn batch(&self) -> anyhow::Result<RecordBatch> {
        Ok(arrow::compute::concat_batches(&self.schema, &self.batches)?)
    }
}

/// The month's tables, in the page's order.
#[derive(Debug)]
pub(crate) struct Bulletin {
    pub(crate) plan: BulletinPlan,
    pub(crate) tables: Vec<Table>,
}

impl Bulletin {
    pub(crate) fn table(&self, name: &str) -> &Table {
        self.tables.iter().find(|t| t.name == name).expect("every table is computed")
    }
}

/// The previous month's first day, and the next month's.
fn neighbours(month: NaiveDate) -> (NaiveDate, NaiveDate) {
    (month - Months::new(1), month + Months::new(1))
}

/// Days in the month: the weekly average is the month's votes · 7 / its days.
pub(crate) fn days_in(month: NaiveDate) -> i64 {
    let (_, next) = neighbours(month);
    (next - month).num_days()
}

/// The counted votes of this month and the previous one in scope, as `(date, channel, service,
/// face, reason, votes)`: from the `vote_counts` rollup, or from `counted_votes` for one
/// municipality (the rollup is keyed by region, not municipality).
fn counted(plan: &BulletinPlan) -> String {
    let (previous, next) = neighbours(plan.month);
    let days = format!("date >= DATE '{previous}' AND date < DATE '{next}'");
    match &plan.scope {
        Scope::Municipality { code, .. } => format!(
            "SELECT date, channel, service, face, reason, CAST(1 AS BIGINT) AS votes FROM counted_votes WHERE {days} AND municipality = {}",
            code.0
        ),
        scope => format!(
            "SELECT date, channel, service, face, reason, votes FROM vote_counts v WHERE misuse = 0 AND {days} AND {}",
            scope.on("v")
        ),
    }
}

/// `name` summed over this month's (`this`) or the previous month's rows, with `condition`.
fn summed(this: bool, condition: &str, month: NaiveDate, name: &str) -> String {
    let period = if this { format!("date >= DATE '{month}'") } else { format!("date < DATE '{month}'") };
    format!("CAST(coalesce(sum(votes) FILTER (WHERE {period} AND {condition}), 0) AS BIGINT) AS {name}")
}

/// The counts of both months by `key` (an expression of `b`, named `key`), and a total row
/// (key NULL) when `total`.
fn both_months(plan: &BulletinPlan, key: &str, total: bool) -> String {
    let m = plan.month;
    let columns = [
        summed(true, "TRUE", m, "votes"),
        summed(true, "face = 1", m, "positive"),
        summed(true, "face = 0", m, "neutral"),
        summed(true, "face = -1", m, "negative"),
        summed(false, "TRUE", m, "previous_votes"),
        summed(false, "face = 1", m, "previous_positive"),
    ]
    .join(", ");
    let by_key = format!("SELECT {key} AS key, {columns} FROM b GROUP BY {key}");
    if total { format!("{by_key} UNION ALL SELECT NULL AS key, {columns} FROM b") } else { by_key }
}

/// The change columns: this month's share of positive faces against the previous month's,
/// with the two-proportion z (`change_z`) and whether |z| ≥ 1.96.
fn change_columns() -> String {
    format!(
        "CASE WHEN g.previous_votes > 0 THEN g.previous_votes END AS previous_votes, \
         round(csat(g.previous_positive, nullif(g.previous_votes, 0)), 1) AS previous_positive_pct, \
         round(csat(g.positive, g.votes) - csat(g.previous_positive, nullif(g.previous_votes, 0)), 1) AS change_pts, \
         round(change_z(g.positive, g.votes, g.previous_positive, nullif(g.previous_votes, 0)), 2) AS z, \
         abs(change_z(g.positive, g.votes, g.previous_positive, nullif(g.previous_votes, 0))) >= {} AS significant",
        crate::query::indices::Z_95
    )
}

/// Per channel (and in total, `channel` NULL): the month's votes, weekly average, share of
/// positive faces, and the change from the previous month.
fn channels_sql(plan: &BulletinPlan) -> String {
    format!(
        "WITH b AS ({counted}), g AS ({groups})
         SELECT g.key AS channel, coalesce(ch.name, 'total') AS channel_name, g.votes,
                round(CAST(g.votes AS DOUBLE) * 7 / {days}, 1) AS votes_per_week, g.positive, round(csat(g.positive, g.votes), 1) AS positive_pct,
                {change}
         FROM g LEFT JOIN channels ch ON ch.channel = g.key
         ORDER BY g.key IS NULL, g.key",
        counted = counted(plan),
        groups = both_months(plan, "channel", true),
        days = days_in(plan.month),
        change = change_columns(),
    )
}

/// Per service with votes this month: the index columns, ranked by the Wilson lower bound
/// (services with fewer than `RANKING_VOTES_MIN` votes get no rank), and the change.
fn services_sql(plan: &BulletinPlan) -> String {
    let least = crate::query::views::RANKING_VOTES_MIN;
    format!(
        "WITH b AS ({counted}), g AS ({groups})
         SELECT CASE WHEN g.votes >= {least} THEN rank() OVER (PARTITION BY g.votes >= {least} ORDER BY wilson_lower(g.positive, g.votes) DESC) END AS rank,
                g.key AS service, s.name_it, s.name, g.votes, g.positive, g.neutral, g.negative,
                round(csat(g.positive, g.votes), 1) AS csat_pct,
                round(wilson_lower(g.positive, g.votes), 1) AS wilson_low_pct,
                round(wilson_upper(g.positive, g.votes), 1) AS wilson_high_pct,
                {change}
         FROM g JOIN services s ON s.service = g.key WHERE g.votes > 0
         ORDER BY rank NULLS LAST, wilson_lower(g.positive, g.votes) DESC, g.key",
        counted = counted(plan),
        groups = both_months(plan, "service", false),
        change = change_columns(),
    )
}

/// The reasons given after a red face this month, each with its share of the red faces.
fn reasons_sql(plan: &BulletinPlan) -> String {
    format!(
        "WITH b AS ({counted}), n AS (SELECT reason, CAST(sum(votes) AS BIGINT) AS votes FROM b
                                      WHERE date >= DATE '{month}' AND face = -1 GROUP BY reason)
         SELECT n.reason, coalesce(r.name, 'not given') AS reason_name, n.votes AS negative_votes,
                round(share_pct(n.votes, sum(n.votes) OVER ()), 1) AS share_pct
         FROM n LEFT JOIN reasons r ON r.reason = n.reason
         ORDER BY n.votes DESC, n.reason",
        counted = counted(plan),
        month = plan.month,
    )
}

/// Per region in scope (and in total, `region_code` NULL): the comuni and unions with counted
/// votes this month (a comune: votes stored in it, as `coverage_by_region_month` counts; a
/// union: votes of its own terminals, as `union_coverage`), the eligible ones, and the coverage
/// of the eligible administrations.
fn coverage_sql(plan: &BulletinPlan) -> String {
    let (_, next) = neighbours(plan.month);
    let days = |p: &str| format!("{p}date >= DATE '{}' AND {p}date < DATE '{next}'", plan.month);
    format!(
        "WITH c AS (
           SELECT m.region_code, m.region, count(*) FILTER (WHERE m.eligible) AS eligible_comuni,
                  count(v.municipality) AS comuni_with_votes,
                  count(v.municipality) FILTER (WHERE m.eligible) AS eligible_comuni_with_votes
           FROM municipalities m
           LEFT JOIN (SELECT DISTINCT municipality FROM municipality_service_counts WHERE misuse = 0 AND {this}) v
                  ON v.municipality = m.municipality
           WHERE {scope} GROUP BY m.region_code, m.region),
         u AS (
           SELECT u.region_code, count(*) FILTER (WHERE u.eligible) AS eligible_unions,
                  count(w.union_code) AS unions_with_votes,
                  count(w.union_code) FILTER (WHERE u.eligible) AS eligible_unions_with_votes
           FROM unions u
           LEFT JOIN (SELECT DISTINCT t.union_code FROM counted_votes x JOIN terminals t ON t.terminal = x.terminal
                      WHERE t.union_code IS NOT NULL AND {this_x}) w ON w.union_code = u.union_code
           WHERE {unions} GROUP BY u.region_code),
         r AS (
           SELECT c.region_code, c.region, c.eligible_comuni, c.comuni_with_votes, c.eligible_comuni_with_votes,
                  coalesce(u.eligible_unions, 0) AS eligible_unions, coalesce(u.unions_with_votes, 0) AS unions_with_votes,
                  coalesce(u.eligible_unions_with_votes, 0) AS eligible_unions_with_votes
           FROM c LEFT JOIN u ON u.region_code = c.region_code),
         t AS (
           SELECT region_code, region, eligible_comuni, comuni_with_votes, eligible_comuni_with_votes,
                  eligible_unions, unions_with_votes, eligible_unions_with_votes FROM r
           UNION ALL
           SELECT NULL, 'total', sum(eligible_comuni), sum(comuni_with_votes), sum(eligible_comuni_with_votes),
                  sum(eligible_unions), sum(unions_with_votes), sum(eligible_unions_with_votes) FROM r)
         SELECT region_code, region,
                CAST(comuni_with_votes + unions_with_votes AS BIGINT) AS administrations_with_votes,
                CAST(comuni_with_votes AS BIGINT) AS comuni_with_votes, CAST(unions_with_votes AS BIGINT) AS unions_with_votes,
                CAST(eligible_comuni + eligible_unions AS BIGINT) AS eligible,
                CAST(eligible_comuni_with_votes + eligible_unions_with_votes AS BIGINT) AS eligible_with_votes,
                round(share_pct(eligible_comuni_with_votes + eligible_unions_with_votes, eligible_comuni + eligible_unions), 1) AS coverage_pct
         FROM t ORDER BY region_code IS NULL, region_code",
        scope = plan.scope.on("m"),
        unions = plan.scope.on_unions(),
        this = days(""),
        this_x = days("x."),
    )
}

/// Every terminal with a recorded supplier and purchase date, its administration (a comune, or
/// its union) and that administration's bonus under the 2009 rule (`administrations.bonus_eur`,
/// `unions.bonus_eur`). Not scoped: which purchase earns a bonus depends on all of an
/// administration's purchases.
const PURCHASES_SQL: &str = "SELECT t.terminal, coalesce(t.union_code, t.istat_code) AS administration,
        coalesce(u.name, m.name) AS administration_name, t.union_code IS NOT NULL AS is_union,
        m.region_code, m.region, t.istat_code, t.municipality, t.supplier,
        CASE WHEN t.order_kind IS NOT NULL THEN concat(t.order_kind, ':', t.order_number) END AS order_ref, t.bought,
        CASE WHEN t.union_code IS NULL THEN a.bonus_eur ELSE u.bonus_eur END AS bonus_eur,
        CASE WHEN t.union_code IS NULL THEN a.digital_signature ELSE u.digital_signature END AS digital_signature,
        CASE WHEN t.union_code IS NULL THEN a.pec ELSE u.pec END AS pec
 FROM terminals t JOIN municipalities m ON m.municipality = t.municipality
 LEFT JOIN administrations a ON a.municipality = t.municipality
 LEFT JOIN unions u ON u.union_code = t.union_code
 WHERE t.supplier IS NOT NULL AND t.bought IS NOT NULL";

/// Runs `sql` as one of the bulletin's tables.
async fn table(ctx: &SessionContext, name: &'static str, sql: String) -> anyhow::Result<Table> {
    let (schema, batches) = query::run_with_schema(ctx, &sql)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("computing the {name} table"))?;
    Ok(Table { name, sql, schema, batches })
}

/// The purchases `PURCHASES_SQL` returns, for the settlement rule.
fn purchases(batches: &[RecordBatch]) -> Vec<BoughtTerminal> {
    let mut out = Vec::new();
    for b in batches {
        let text = |name: &str| -> StringArray {
            arrow::compute::cast(b.column_by_name(name).expect("a column"), &DataType::Utf8).expect("text").as_string::<i32>().clone()
        };
        let flag = |name: &str| b.column_by_name(name).expect("a column").as_boolean().clone();
        let (administration, administration_name, region, istat, supplier, order) =
            (text("administration"), text("administration_name"), text("region"), text("istat_code"), text("supplier"), text("order_ref"));
        let terminal = b.column_by_name("terminal").expect("terminal").as_primitive::<UInt32Type>();
        let region_code = b.column_by_name("region_code").expect("region_code").as_primitive::<UInt8Type>();
        let bought = b.column_by_name("bought").expect("bought").as_primitive::<Date32Type>();
        let bonus = arrow::compute::cast(b.column_by_name("bonus_eur").expect("bonus_eur"), &DataType::UInt32).expect("a number");
        let bonus = bonus.as_primitive::<UInt32Type>();
        let (is_union, signature, pec) = (flag("is_union"), flag("digital_signature"), flag("pec"));
        let optional_flag = |a: &BooleanArray, i: usize| (!a.is_null(i)).then(|| a.value(i));
        for i in 0..b.num_rows() {
            out.push(BoughtTerminal {
                terminal: terminal.value(i),
                administration: administration.value(i).to_string(),
                administration_name: administration_name.value(i).to_string(),
                union: is_union.value(i),
                region_code: region_code.value(i),
                region: region.value(i).to_string(),
                municipality: istat.value(i).to_string(),
                supplier: supplier.value(i).to_string(),
                order: (!order.is_null(i)).then(|| order.value(i).to_string()),
                bought: Date32Type::to_naive_date_opt(bought.value(i)).expect("a date"),
                bonus_eur: (!bonus.is_null(i)).then(|| bonus.value(i)),
                digital_signature: optional_flag(&signature, i),
                pec: optional_flag(&pec, i),
            });
        }
    }
    out
}

/// Whether a purchase is in the bulletin's scope (the municipality the terminal stands in).
fn in_scope(scope: &Scope, purchase: &BoughtTerminal) -> bool {
    match scope {
        Scope::Italy => true,
        Scope::Region { code, .. } => purchase.region_code == *code,
        Scope::Municipality { code, .. } => purchase.municipality == code.to_string(),
    }
}

fn strings(values: impl Iterator<Item = Option<String>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn numbers(values: impl Iterator<Item = u32>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<UInt32Array>())
}

fn rows_of(columns: Vec<(&str, ArrayRef)>) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = Arc::new(Schema::new(columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns.into_iter().map(|(_, a)| a).collect())?;
    Ok((schema, vec![batch]))
}

/// The month's purchases in scope with what each earns (`settlement`), and each supplier's
/// total (`invoices`).
fn settlement_tables(plan: &BulletinPlan, purchases: Vec<BoughtTerminal>) -> anyhow::Result<(Table, Table)> {
    let lines: Vec<Line> = settlement::settle(purchases)
        .into_iter()
        .filter(|l| settlement::in_month(l.purchase.bought, plan.month) && in_scope(&plan.scope, &l.purchase))
        .collect();
    let mut lines = lines;
    lines.sort_by(|a, b| {
        (&a.purchase.supplier, &a.purchase.administration, a.purchase.terminal).cmp(&(
            &b.purchase.supplier,
            &b.purchase.administration,
            b.purchase.terminal,
        ))
    });
    let month = plan.month.format("%Y-%m").to_string();
    let granted = |l: &Line| match l.outcome {
        settlement::Outcome::AlreadyGranted { terminal, .. } => Some(terminal),
        _ => None,
    };
    let (schema, batches) = rows_of(vec![
        ("supplier", strings(lines.iter().map(|l| Some(l.purchase.supplier.clone())))),
        ("month", strings(lines.iter().map(|_| Some(month.clone())))),
        ("administration", strings(lines.iter().map(|l| Some(l.purchase.administration.clone())))),
        ("administration_name", strings(lines.iter().map(|l| Some(l.purchase.administration_name.clone())))),
        ("kind", strings(lines.iter().map(|l| Some(if l.purchase.union { "union" } else { "comune" }.to_string())))),
        ("region", strings(lines.iter().map(|l| Some(l.purchase.region.clone())))),
        ("terminal", numbers(lines.iter().map(|l| l.purchase.terminal))),
        ("istat_code", strings(lines.iter().map(|l| Some(l.purchase.municipality.clone())))),
        ("order_ref", strings(lines.iter().map(|l| l.purchase.order.clone()))),
        ("bought", Arc::new(lines.iter().map(|l| Some(Date32Type::from_naive_date(l.purchase.bought))).collect::<Date32Array>())),
        ("digital_signature", Arc::new(lines.iter().map(|l| l.purchase.digital_signature).collect::<BooleanArray>())),
        ("pec", Arc::new(lines.iter().map(|l| l.purchase.pec).collect::<BooleanArray>())),
        ("bonus_eur", numbers(lines.iter().map(|l| l.bonus_eur))),
        ("outcome", strings(lines.iter().map(|l| Some(l.outcome.code().to_string())))),
        ("granted_with_terminal", Arc::new(lines.iter().map(granted).collect::<UInt32Array>())),
    ])?;
    let settlement = Table { name: "settlement", sql: PURCHASES_SQL.to_string(), schema, batches };
    let invoices = settlement::invoices(&lines);
    let (schema, batches) = rows_of(vec![
        ("supplier", strings(invoices.iter().map(|i| Some(i.supplier.clone())))),
        ("month", strings(invoices.iter().map(|_| Some(month.clone())))),
        ("administrations", numbers(invoices.iter().map(|i| i.administrations))),
        ("terminals", numbers(invoices.iter().map(|i| i.terminals))),
        ("total_eur", numbers(invoices.iter().map(|i| i.total_eur))),
    ])?;
    Ok((settlement, Table { name: "invoices", sql: String::new(), schema, batches }))
}

/// The steps `compute` reports, and the writing: for a progress bar.
pub(crate) const STEPS: u64 = 7;

/// The tables of the bulletin, computed over `data_dir` as `faccia sql` sees it; `step` is
/// called after each one (progress).
///
/// # Errors
/// The data directory cannot be opened; a query fails.
pub(crate) async fn compute(data_dir: &Path, plan: &BulletinPlan, mut step: impl FnMut(&str)) -> anyhow::Result<Bulletin> {
    let ctx = query::context(data_dir).await.map_err(|e| anyhow::anyhow!("{e}")).context("opening the dataset")?;
    step("dataset opened");
    let mut tables = Vec::new();
    for (name, sql) in [
        ("channels", channels_sql(plan)),
        ("coverage", coverage_sql(plan)),
        ("services", services_sql(plan)),
        ("reasons", reasons_sql(plan)),
    ] {
        tables.push(table(&ctx, name, sql).await?);
        step(name);
    }
    let bought = table(&ctx, "purchases", PURCHASES_SQL.to_string()).await?;
    let (settlement, invoices) = settlement_tables(plan, purchases(&bought.batches))?;
    tables.push(settlement);
    tables.push(invoices);
    step("settlement");
    Ok(Bulletin { plan: plan.clone(), tables })
}

/// The files' common prefix: `bollettino-2026-11`.
pub(crate) fn stem(month: NaiveDate) -> String {
    format!("bollettino-{}", month.format("%Y-%m"))
}

/// Writes the page (`html::render`'s) the CSV files and the workbook into `plan.out`; returns
/// their paths with each table's rows (none for the page and the workbook).
///
/// # Errors
/// The directory or a file cannot be written; a table Excel cannot hold.
pub(crate) fn write(bulletin: &Bulletin, page: &str) -> anyhow::Result<Vec<(PathBuf, Option<usize>)>> {
    let plan = &bulletin.plan;
    std::fs::create_dir_all(&plan.out).with_context(|| format!("creating {}", plan.out.display()))?;
    let stem = stem(plan.month);
    let mut written = Vec::new();
    let save = |path: &Path, bytes: &[u8]| -> anyhow::Result<()> {
        crate::fsutil::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    let path_of_page = plan.out.join(format!("{stem}.html"));
    save(&path_of_page, page.as_bytes())?;
    written.push((path_of_page, None));
    for t in &bulletin.tables {
        let mut bytes = Vec::new();
        query::write_output(&t.schema, &t.batches, Format::CsvExcel, query::formats::CsvOptions::default(), &mut bytes)?;
        let path = plan.out.join(format!("{stem}-{}.csv", t.name));
        save(&path, &bytes)?;
        written.push((path, Some(t.rows())));
    }
    let sheets: Vec<(&str, &SchemaRef, &[RecordBatch])> = bulletin.tables.iter().map(|t| (t.name, &t.schema, &t.batches[..])).collect();
    let path = plan.out.join(format!("{stem}.xlsx"));
    save(&path, &query::xlsx::workbook_of_sheets(&sheets)?)?;
    written.push((path, None));
    Ok(written)
}

/// Reads a number cell of `batch` (any integer or float type) as f64; `None` when NULL.
pub(crate) fn number(batch: &RecordBatch, column: &str, row: usize) -> Option<f64> {
    let array = batch.column_by_name(column)?;
    if array.is_null(row) {
        return None;
    }
    let floats = arrow::compute::cast(array, &DataType::Float64).ok()?;
    Some(floats.as_primitive::<arrow::datatypes::Float64Type>().value(row))
}

/// Reads a cell of `batch` as text (`None` when NULL).
pub(crate) fn text(batch: &RecordBatch, column: &str, row: usize) -> Option<String> {
    let array = batch.column_by_name(column)?;
    if array.is_null(row) {
        return None;
    }
    if let DataType::Date32 = array.data_type() {
        return Date32Type::to_naive_date_opt(array.as_primitive::<Date32Type>().value(row)).map(|d| d.format("%Y-%m-%d").to_string());
    }
    let text = arrow::compute::cast(array, &DataType::Utf8).ok()?;
    Some(text.as_string::<i32>().value(row).to_string())
}

/// Reads an integer cell (`None` when NULL).
pub(crate) fn integer(batch: &RecordBatch, column: &str, row: usize) -> Option<i64> {
    let array = batch.column_by_name(column)?;
    if array.is_null(row) {
        return None;
    }
    let ints = arrow::compute::cast(array, &DataType::Int64).ok()?;
    Some(ints.as_primitive::<Int64Type>().value(row))
}

/// The month in words: `novembre 2026`, `November 2026`.
pub(crate) fn month_name(month: NaiveDate, lang: Lang) -> String {
    const IT: [&str; 12] =
        ["gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno", "luglio", "agosto", "settembre", "ottobre", "novembre", "dicembre"];
    match lang {
        Lang::It => format!("{} {}", IT[month.month0() as usize], month.year()),
        Lang::En => month.format("%B %Y").to_string(),
    }
}
