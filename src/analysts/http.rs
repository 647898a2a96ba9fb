//! The HTTP endpoint for curl and dashboards (axum, HTTP/1.1):
//!
//! - `GET /health` — `ok` while the server runs (no authentication);
//! - `GET /metrics` — Prometheus text (no authentication);
//! - `GET /query?sql=…&format=…` and `POST /query?format=…` with the SQL as the body — the
//!   analyst bearer token required; formats `json` (default), `jsonl`, `csv`, `csv-excel`,
//!   `parquet`, `arrow`, `xlsx` (the last two for Excel are sent as an attachment, a file the
//!   browser saves); `csv` takes `bom=true` and `delimiter=comma|semicolon|tab` (or `%3B`).
//!
//! - the dashboard's pages (`/`, `/municipality/…`, `/coverage`, `/terminals`, `/login`), from
//!   `crate::dashboard`.
//!
//! Errors answer with a status and a one-line text naming what was wrong: 401 (token), 400
//! (SQL), 413 (a limit, named), 500 (execution).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::watch;

use crate::analysts::service::{SqlError, SqlService};
use crate::metrics::Metrics;
use crate::query::formats::{CsvOptions, Delimiter};
use crate::query::xlsx::XlsxError;
use crate::query::{Format, write_output};

/// What the handlers share.
pub(crate) struct HttpState {
    /// The SQL service `/query` checks tokens against and runs statements in.
    pub(crate) sql: Arc<SqlService>,
    /// The server's metrics, rendered as Prometheus text on `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    sql: Option<String>,
    format: Option<Format>,
    /// `csv` only: `true` starts the file with a UTF-8 byte-order mark.
    bom: Option<String>,
    /// `csv` only: `comma`, `semicolon`, `tab`, or the character itself.
    delimiter: Option<String>,
}

impl QueryParams {
    /// The format and its CSV options, or a message naming the parameter that is wrong.
    fn output(&self) -> Result<(Format, CsvOptions), String> {
        let format = self.format.unwrap_or(Format::Json);
        if format == Format::Table {
            return Err("format must be one of json, jsonl, csv, csv-excel, parquet, arrow, xlsx".into());
        }
        let bom = match self.bom.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("bom is {other:?}; it must be true or false")),
        };
        let delimiter = match self.delimiter.as_deref() {
            None => Delimiter::default(),
            Some(text) => Delimiter::parse(text).map_err(|reason| format!("delimiter: {reason}"))?,
        };
        let csv = CsvOptions { bom, delimiter };
        if csv.is_set() && format != Format::Csv {
            return Err("bom and delimiter apply to format=csv (csv-excel always writes a byte-order mark and ';')".into());
        }
        Ok((format, csv))
    }
}

/// The routes.
pub(crate) fn router(state: Arc<HttpState>) -> Router {
    let body_max = state.sql.limits.sql_bytes_max;
    let dashboard = crate::dashboard::router(Arc::clone(&state.sql));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/query", get(query_get).post(query_post))
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(state)
        .merge(dashboard)
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: Arc<HttpState>, mut shutdown: watch::Receiver<bool>) {
    let addr = listener.local_addr().map_or_else(|_| "?".into(), |a: SocketAddr| a.to_string());
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, router(state)).with_graceful_shutdown(stop).await {
        tracing::error!(%error, %addr, "the HTTP server stopped");
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], state.metrics.render()).into_response()
}

async fn query_get(State(state): State<Arc<HttpState>>, headers: HeaderMap, Query(params): Query<QueryParams>) -> Response {
    match params.sql.as_deref() {
        Some(sql) => answer(&state, &headers, sql, &params).await,
        None => text(StatusCode::BAD_REQUEST, "give the statement as ?sql=… (or POST it as the body)"),
    }
}

async fn query_post(State(state): State<Arc<HttpState>>, headers: HeaderMap, Query(params): Query<QueryParams>, body: Bytes) -> Response {
    let sql = match (params.sql.clone(), std::str::from_utf8(&body)) {
        (Some(sql), _) => sql,
        (None, Ok(body)) if !body.trim().is_empty() => body.to_string(),
        (None, Ok(_)) => return text(StatusCode::BAD_REQUEST, "the body is empty: POST the SQL statement as the body"),
        (None, Err(_)) => return text(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"),
    };
    answer(&state, &headers, &sql, &params).await
}

async fn answer(state: &HttpState, headers: &HeaderMap, sql: &str, params: &QueryParams) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let scope = match state.sql.authorize(authorization) {
        Ok(scope) => scope,
        Err(reason) => {
            let mut response = text(StatusCode::UNAUTHORIZED, reason);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    let (format, csv) = match params.output() {
        Ok(output) => output,
        Err(reason) => return text(StatusCode::BAD_REQUEST, &reason),
    };
    let (schema, batches) = match state.sql.collect_in(&scope, sql).await {
        Ok(result) => result,
        Err(error) => {
            let status = match error {
                SqlError::Plan(_) => StatusCode::BAD_REQUEST,
                SqlError::TooLong { .. } | SqlError::TooManyRows { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                SqlError::Execution(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return text(status, &error.to_string());
        }
    };
    // Encoding (an xlsx of many rows takes seconds) is kept off the threads that serve requests.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = Vec::new();
        write_output(&schema, &batches, format, csv, &mut body).map(|()| body)
    })
    .await;
    let body = match encoded {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => {
            // A result Excel cannot hold is the request's size, not a fault of the server.
            let too_large = error.downcast_ref::<XlsxError>().is_some_and(XlsxError::is_limit);
            let status = if too_large { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::INTERNAL_SERVER_ERROR };
            return text(status, &format!("encoding the result: {error:#}"));
        }
        Err(error) => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding the result: {error}")),
    };
    let mut response = ([(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()))], body).into_response();
    if let Some(disposition) = format.content_disposition() {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(disposition));
    }
    response
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}
