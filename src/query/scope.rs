//! Where a session belongs: its `Scope` (everything, a region, one municipality or a union of
//! comuni) and the context restriction that makes a scoped session's tables filtered before any
//! SQL sees them.
//!
//! The rule (`restrict`), applied to a context's tables before its views are created:
//! - a table with a `municipality` column is wrapped in `ScopedTable`, which applies
//!   `municipality IN (the scope's comuni)` inside `scan` (a `FilterExec` over the inner plan,
//!   the same predicate handed down to the inner scan for its pruning) — this holds for any
//!   table added later with that column;
//! - a table with a `region_code` column and no municipality (`vote_counts`) is filtered by
//!   `region_code` in a region scope; in a narrower scope `vote_counts` becomes a view that
//!   counts the same columns from the scope's (filtered) `votes`;
//! - `unions` (no municipality column) keeps the unions all of whose members are in scope;
//! - the code tables (`CODE_TABLES`: services, faces, channels, reasons) stay as they are;
//! - every other table (`table_history`: dataset-wide facts) is removed.
//!
//! Views are created afterwards over the filtered tables, so every view is filtered too, and
//! `information_schema` lists only what the session has.
//!
//! Architecture invariant 27: a scoped session's tables are filtered before any SQL sees them
//! (`tests/it/scopes.rs`, the unit tests below).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, col, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

use crate::model::IstatCode;
use crate::registry::{self, Catalog};

/// The column whose value places a row in a scope.
pub const MUNICIPALITY: &str = "municipality";
/// Tables of codes and names, the same for everyone: kept whole in a scoped context.
pub const CODE_TABLES: [&str; 4] = ["services", "faces", "channels", "reasons"];

/// Where a token's session belongs. `Display` is the `--scope` text (`Scope::parse` reads it
/// back).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every row (the analyst): `everything`.
    Everything,
    /// The comuni of one region: `region:NAME` (as in `municipalities.region`, any case) or
    /// `region:CODE` (the ISTAT region code, 1–20).
    Region {
        /// ISTAT region code (`municipalities.region_code`).
        code: u8,
        /// The region's name as the registry spells it (`municipalities.region`).
        name: String,
    },
    /// One comune: `municipality:CODE` (six-digit ISTAT code).
    Municipality(IstatCode),
    /// The member comuni of a union registered in `unions.json`: `union:CODE`.
    Union(String),
}

/// Why a scope text was refused; the message names the `scope` field and the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "scope: {0}; give everything, region:NAME or region:CODE (e.g. region:Piemonte, region:1), municipality:CODE (six-digit ISTAT code, e.g. municipality:001003) or union:CODE (a union registered with `faccia unions add`)"
)]
pub struct ScopeError(pub String);

impl Scope {
    /// Reads a scope's text (see the variants). A municipality must be in the built-in registry,
    /// a region must be one of its regions; a union's code is only checked for its form here
    /// (`Scope::check_union` checks it is registered).
    ///
    /// # Errors
    /// `ScopeError`, naming what is wrong and the accepted forms.
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("everything") {
            return Ok(Scope::Everything);
        }
        let Some((kind, value)) = text.split_once(':') else {
            return Err(ScopeError(format!("{text:?} is not a scope")));
        };
        let value = value.trim();
        let catalog = Catalog::builtin();
        match kind.trim().to_ascii_lowercase().as_str() {
            "region" => {
                let found = match value.parse::<u8>() {
                    Ok(code) => catalog.municipalities.iter().find(|m| m.region_code == code),
                    Err(_) => catalog.municipalities.iter().find(|m| m.region.eq_ignore_ascii_case(value)),
                };
                let region = found.ok_or_else(|| ScopeError(format!("{value:?} is no region of the registry (municipalities.region)")))?;
                Ok(Scope::Region { code: region.region_code, name: region.region.clone() })
            }
            "municipality" => {
                let code = IstatCode::parse(value)
                    .filter(|_| value.len() == 6)
                    .ok_or_else(|| ScopeError(format!("{value:?} is not a six-digit ISTAT code")))?;
                catalog.municipality(code).ok_or_else(|| ScopeError(format!("municipality {code} is not in the registry")))?;
                Ok(Scope::Municipality(code))
            }
            "union" => {
                let valid =
                    !value.is_empty() && value.len() <= 32 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !valid {
                    return Err(ScopeError(format!("{value:?} is not a union code (1 to 32 of A-Z, a-z, 0-9, _ and -)")));
                }
                Ok(Scope::Union(value.to_string()))
            }
            _ => Err(ScopeError(format!("{kind:?} is not a kind of scope"))),
        }
    }

    /// Refuses a union scope whose union is not registered in `data_dir`'s `unions.json`.
    ///
    /// # Errors
    /// `ScopeError` for an unknown union, or when `unions.json` cannot be read.
    pub fn check_union(&self, data_dir: &Path) -> Result<(), ScopeError> {
        let Scope::Union(code) = self else { return Ok(()) };
        let unions = registry::list_unions(data_dir).map_err(|e| ScopeError(crate::error_chain(&e)))?;
        if unions.iter().any(|u| &u.code == code) {
            Ok(())
        } else {
            Err(ScopeError(format!("union {code} is not registered (faccia unions list)")))
        }
    }

    /// The ISTAT codes (as numbers) of the comuni in scope; `None` for everything. A union no
    /// longer registered has none.
    ///
    /// # Errors
    /// When `unions.json` cannot be read (union scopes only).
    pub fn municipalities(&self, data_dir: &Path) -> DfResult<Option<BTreeSet<u32>>> {
        let catalog = Catalog::for_data_dir(data_dir).map_err(|e| DataFusionError::Execution(crate::error_chain(&e)))?;
        let mut codes: BTreeSet<u32> = match self {
            Scope::Everything => return Ok(None),
            Scope::Region { code, .. } => catalog.municipalities.iter().filter(|m| m.region_code == *code).map(|m| m.code.0).collect(),
            Scope::Municipality(code) => BTreeSet::from([code.0]),
            Scope::Union(union) => registry::list_unions(data_dir)
                .map_err(|e| DataFusionError::Execution(crate::error_chain(&e)))?
                .into_iter()
                .filter(|u| &u.code == union)
                .flat_map(|u| u.members)
                .filter_map(|m| IstatCode::parse(&m).map(|c| c.0))
                .collect(),
        };
        // A code no longer current (a merger, a renumbering) belongs with the comune it leads to:
        // its terminals' votes keep it (`registry::Catalog::current`).
        for old in &catalog.successors {
            if catalog.current(old.municipality).is_some_and(|now| codes.contains(&now.0)) {
                codes.insert(old.municipality.0);
            }
        }
        Ok(Some(codes))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Everything => f.write_str("everything"),
            Scope::Region { name, .. } => write!(f, "region:{name}"),
            Scope::Municipality(code) => write!(f, "municipality:{code}"),
            Scope::Union(code) => write!(f, "union:{code}"),
        }
    }
}

/// Restricts `ctx`'s tables to `scope` (the rule in the module's documentation). Call it after
/// the tables are registered and before the views are created.
///
/// # Errors
/// When `unions.json` cannot be read, or a table cannot be replaced.
pub(crate) async fn restrict(ctx: &SessionContext, scope: &Scope, data_dir: &Path) -> DfResult<()> {
    let Some(codes) = scope.municipalities(data_dir)? else { return Ok(()) };
    let unions: Vec<String> = registry::list_unions(data_dir)
        .map_err(|e| DataFusionError::Execution(crate::error_chain(&e)))?
        .into_iter()
        .filter(|u| !u.members.is_empty() && u.members.iter().all(|m| IstatCode::parse(m).is_some_and(|c| codes.contains(&c.0))))
        .map(|u| u.code)
        .collect();
    let options = ctx.state().config_options().catalog.clone();
    let schema = ctx
        .catalog(&options.default_catalog)
        .and_then(|c| c.schema(&options.default_schema))
        .ok_or_else(|| DataFusionError::Internal("the default schema is missing".into()))?;
    let mut recount_vote_counts = false;
    for name in schema.table_names() {
        let Some(table) = schema.table(&name).await? else { continue };
        let columns = table.schema();
        let kept: Option<Arc<dyn TableProvider>> = if columns.field_with_name(MUNICIPALITY).is_ok() {
            let values = codes.iter().map(|c| ScalarValue::UInt32(Some(*c))).collect();
            Some(Arc::new(ScopedTable::new(table, MUNICIPALITY, values)?))
        } else if let (Scope::Region { code, .. }, Ok(_)) = (scope, columns.field_with_name(REGION_CODE)) {
            Some(Arc::new(ScopedTable::new(table, REGION_CODE, vec![ScalarValue::UInt8(Some(*code))])?))
        } else if name == "unions" {
            let values = unions.iter().map(|u| ScalarValue::Utf8(Some(u.clone()))).collect();
            Some(Arc::new(ScopedTable::new(table, "union_code", values)?))
        } else if CODE_TABLES.contains(&name.as_str()) {
            continue;
        } else {
            None
        };
        ctx.deregister_table(name.as_str())?;
        if let Some(kept) = kept {
            ctx.register_table(name.as_str(), kept)?;
        } else if name == "vote_counts" {
            recount_vote_counts = true;
        }
    }
    if recount_vote_counts {
        // Narrower than a region: the regional rollup, counted again from the scope's votes.
        // Only now: a view binds the tables it reads when it is created, and every table must
        // be the filtered one by then (created inside the loop, it could bind the unfiltered
        // `votes`, depending on the order the schema lists its tables).
        ctx.sql(VOTE_COUNTS_FROM_VOTES).await?;
    }
    Ok(())
}

/// The column that places a region-wide row (`vote_counts`) in a region scope.
pub const REGION_CODE: &str = "region_code";

/// `vote_counts` for a scope narrower than a region: the rollup's columns counted from the
/// (already filtered) `votes`, as `storage::rollup` counts them.
const VOTE_COUNTS_FROM_VOTES: &str = "CREATE VIEW vote_counts AS \
     SELECT m.region_code, v.service, CAST(local_hour(v.ts) AS TINYINT UNSIGNED) AS hour, v.channel, v.face, v.reason, v.misuse, \
     count(*) AS votes, v.date \
     FROM votes v JOIN municipalities m ON m.municipality = v.municipality \
     GROUP BY m.region_code, v.service, CAST(local_hour(v.ts) AS TINYINT UNSIGNED), v.channel, v.face, v.reason, v.misuse, v.date";

/// A table whose rows are those of `inner` with `column IN (values)`: the predicate is applied
/// in `scan` (a `FilterExec` over the inner plan) and also handed to the inner scan, so that it
/// prunes files and partitions as any filter would.
#[derive(Debug)]
pub(crate) struct ScopedTable {
    inner: Arc<dyn TableProvider>,
    column: usize,
    predicate: Expr,
}

impl ScopedTable {
    /// `inner` restricted to rows whose `column` is one of `values` (cast to the column's type);
    /// no value: no row.
    ///
    /// # Errors
    /// When `inner` has no such column, or a value does not cast to its type.
    pub(crate) fn new(inner: Arc<dyn TableProvider>, column: &str, values: Vec<ScalarValue>) -> DfResult<ScopedTable> {
        let schema = inner.schema();
        let index = schema.index_of(column)?;
        let data_type = schema.field(index).data_type().clone();
        let values = values.into_iter().map(|v| v.cast_to(&data_type).map(lit)).collect::<DfResult<Vec<_>>>()?;
        let predicate = if values.is_empty() { lit(false) } else { col(column).in_list(values, false) };
        Ok(ScopedTable { inner, column: index, predicate })
    }
}

#[async_trait]
impl TableProvider for ScopedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Every filter is handed to the inner scan as is, so the inner table's answer holds.
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // The inner scan reads the scope's column too, appended when the query did not ask
        // for it and projected away after the filter. No limit is handed down: it would count
        // rows before the scope's filter.
        let (inner_projection, output) = match projection {
            Some(p) if !p.contains(&self.column) => {
                let mut with_column = p.clone();
                with_column.push(self.column);
                (Some(with_column), Some((0..p.len()).collect::<Vec<_>>()))
            }
            other => (other.cloned(), None),
        };
        let mut pushed = filters.to_vec();
        pushed.push(self.predicate.clone());
        let inner = self.inner.scan(state, inner_projection.as_ref(), &pushed, None).await?;
        let input = DFSchema::try_from(inner.schema().as_ref().clone())?;
        let predicate = state.create_physical_expr(self.predicate.clone(), &input)?;
        Ok(Arc::new(FilterExecBuilder::new(predicate, inner).apply_projection(output)?.build()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_back() {
        assert_eq!(Scope::parse("everything"), Ok(Scope::Everything));
        assert_eq!(Scope::parse("municipality:001003"), Ok(Scope::Municipality(IstatCode(1003))));
        let piemonte = Scope::parse("region:piemonte").unwrap();
        assert_eq!(piemonte, Scope::Region { code: 1, name: "Piemonte".into() });
        assert_eq!(Scope::parse("region:1"), Ok(piemonte.clone()));
        assert_eq!(Scope::parse("union:U-1"), Ok(Scope::Union("U-1".into())));
        for scope in [Scope::Everything, piemonte, Scope::Municipality(IstatCode(1003)), Scope::Union("U-1".into())] {
            assert_eq!(Scope::parse(&scope.to_string()).as_ref(), Ok(&scope), "{scope}");
        }
    }

    #[test]
    fn bad_scopes_name_the_field_and_the_forms() {
        for (text, says) in [
            ("", "is not a scope"),
            ("town:001003", "\"town\" is not a kind of scope"),
            ("municipality:1003", "six-digit"),
            ("municipality:999999", "not in the registry"),
            ("region:Atlantis", "no region"),
            ("region:99", "no region"),
            ("union:", "not a union code"),
            ("union:a b", "not a union code"),
        ] {
            let message = Scope::parse(text).unwrap_err().to_string();
            assert!(message.starts_with("scope: ") && message.contains(says) && message.contains("municipality:CODE"), "{text}: {message}");
        }
        let dir = tempfile::tempdir().unwrap();
        let message = Scope::Union("NONE".into()).check_union(dir.path()).unwrap_err().to_string();
        assert!(message.contains("union NONE is not registered"), "{message}");
    }
}
