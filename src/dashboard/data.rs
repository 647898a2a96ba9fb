//! The one place pages get numbers from: a `Session` runs SQL through the analysts' SQL service
//! (`analysts::service::SqlService`) for one authenticated visitor, and hands rows back as JSON
//! objects keyed by column name.
//!
//! A session holds its token's scope (`SqlService::authorize`) and runs every statement in that
//! scope's context (`SqlService::collect_in`), whose tables are already filtered: a comune's
//! token sees its comune on every page. Pages never assume they see every comune, they build
//! their links from the rows they get.

use arrow::array::RecordBatch;
use serde_json::{Map, Value};

use crate::analysts::service::{SqlError, SqlService};
use crate::query::scope::Scope;

/// One row of a result: column name → value (numbers as JSON numbers, dates as text, NULL as null).
pub(crate) type Row = Map<String, Value>;

/// A visitor's authenticated access to SQL.
pub(crate) struct Session<'a> {
    sql: &'a SqlService,
    scope: Scope,
}

impl<'a> Session<'a> {
    /// Checks `authorization` (`Bearer TOKEN`, from the header or the login cookie).
    ///
    /// # Errors
    /// The message for the visitor when the token is missing or unknown.
    pub(crate) fn open(sql: &'a SqlService, authorization: Option<&str>) -> Result<Session<'a>, &'static str> {
        let scope = sql.authorize(authorization)?;
        Ok(Session { sql, scope })
    }

    /// Runs a read-only statement and returns its rows.
    ///
    /// # Errors
    /// As `SqlService::collect_in`, and a result that cannot be turned into JSON (execution).
    pub(crate) async fn rows(&self, sql: &str) -> Result<Vec<Row>, SqlError> {
        let (_, batches) = self.sql.collect_in(&self.scope, sql).await?;
        to_rows(&batches).map_err(|e| SqlError::Execution(format!("reading the result: {e}")))
    }
}

fn to_rows(batches: &[RecordBatch]) -> Result<Vec<Row>, arrow::error::ArrowError> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))
}

/// A column's text (`""` when NULL or absent; numbers as written).
pub(crate) fn text(row: &Row, column: &str) -> String {
    match row.get(column) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A column's number (`None` when NULL or absent).
pub(crate) fn number(row: &Row, column: &str) -> Option<f64> {
    match row.get(column) {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
}

/// A column's count (0 when NULL or absent).
pub(crate) fn count(row: &Row, column: &str) -> u64 {
    number(row, column).map_or(0, |n| n.max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn batches_become_rows_by_column_name() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("votes", DataType::Int64, false),
            Field::new("csat_pct", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("Agliè"), None])),
                Arc::new(Int64Array::from(vec![12, 0])),
                Arc::new(Float64Array::from(vec![Some(72.5), None])),
            ],
        )
        .unwrap();
        let rows = to_rows(&[batch]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((text(&rows[0], "name"), count(&rows[0], "votes"), number(&rows[0], "csat_pct")), ("Agliè".into(), 12, Some(72.5)));
        assert_eq!((text(&rows[1], "name"), number(&rows[1], "csat_pct")), (String::new(), None));
        assert!(to_rows(&[]).unwrap().is_empty());
    }
}
