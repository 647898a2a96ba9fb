//! Analysts' SQL: fresh data, the Flight SQL server with a real Flight SQL client (arrow-flight's
//! `FlightSqlServiceClient`), the HTTP endpoint with a real HTTP client (hyper), and `faccia sql`
//! reading the log tail of a running or killed server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch, UInt16Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use bytes::Bytes;
use faccia::terminal::client::Terminal;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use tonic::transport::Channel;

use crate::common::*;
use crate::crash::{free_port, start_process};

fn analyst_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(faccia::analysts::tokens::TOKEN_FILE)).unwrap().trim().to_string()
}

/// One HTTP/1.1 exchange: (status, content type, body).
async fn http(addr: SocketAddr, method: Method, path: &str, token: Option<&str>, body: &str) -> (StatusCode, String, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client.request(request.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap();
    let status = response.status();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, content_type, response.into_body().collect().await.unwrap().to_bytes())
}

/// `SELECT count(*) …` over HTTP as JSON.
async fn http_count(addr: SocketAddr, token: &str, sql: &str) -> i64 {
    let (status, _, body) = http(addr, Method::POST, "/query?format=json", Some(token), sql).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let rows: serde_json::Value = serde_json::from_slice(&body).unwrap();
    rows[0]["n"].as_i64().unwrap()
}

/// Waits until SQL over HTTP counts `expected` votes (the store publishes rows every 100 ms).
async fn wait_visible(addr: SocketAddr, token: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_count(addr, token, "SELECT count(*) AS n FROM votes").await != expected {
        assert!(Instant::now() < deadline, "{expected} votes not visible within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn flight_client(addr: SocketAddr) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    FlightSqlServiceClient::new(channel)
}

/// Every batch behind a FlightInfo.
async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
        batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    batches
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

async fn send(
    server_addr: SocketAddr,
    target: faccia::terminal::client::ServerTarget,
    credential: &faccia::registry::Credential,
    at_ms: i64,
    batches: i64,
) -> usize {
    let endpoint = faccia::terminal::client::client_endpoint(server_addr).unwrap();
    let mut terminal = Terminal::new(credential.clone(), endpoint, target, 4);
    for b in 0..batches {
        // People's votes (no misuse flag: the index views count only those), ending at `at_ms`.
        terminal.enqueue(&human_votes(at_ms - (batches - b) * 25 * CITIZEN_GAP_MS, 25)).unwrap();
    }
    let (acknowledged, _) = deliver(&mut terminal).await;
    terminal.close();
    acknowledged
}

#[tokio::test]
async fn acknowledged_votes_are_visible_within_a_second_and_counted_once_across_a_flush() {
    // Proves: SQL over HTTP, Flight SQL and `faccia sql` sees votes as soon as they are
    // acknowledged (before any flush), and the count stays exact while they move to Parquet.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let http_addr = server.http_addr.unwrap();
    let token = analyst_token(dir.path());
    let acknowledged = send(server.ingest_addr, target(&server), &credential, faccia::clock::now_ms() - 60_000, 3).await as i64;
    let acknowledged_at = Instant::now();
    assert_eq!(acknowledged, 75);
    let seen_after = loop {
        let asked_at = acknowledged_at.elapsed();
        if http_count(http_addr, &token, "SELECT count(*) AS n FROM votes").await == acknowledged {
            break asked_at;
        }
        assert!(asked_at < Duration::from_secs(5), "not visible after {asked_at:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(seen_after <= Duration::from_secs(1), "visible only after {seen_after:?}");
    assert!(parquet_files(dir.path()).is_empty(), "seen before any flush");
    // `faccia sql` in another process reads the log tail; the server is untouched.
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, acknowledged);

    // Across the flush: never more, never fewer, whichever side of the commit a query lands.
    server.engine.request_flush();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(http_count(http_addr, &token, "SELECT count(*) AS n FROM votes").await, acknowledged);
        assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, acknowledged);
        let flushed = !parquet_files(dir.path()).is_empty() && server.engine.memory_snapshot().generations.is_empty();
        if flushed {
            break;
        }
        assert!(Instant::now() < deadline, "the flush did not commit within 20 s");
    }
    // Flight SQL agrees.
    let mut client = flight_client(server.flight_addr.unwrap()).await;
    client.set_token(token);
    let info = client.execute("SELECT count(*) AS n FROM votes".into(), None).await.unwrap();
    let batches = fetch(&mut client, info).await;
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), acknowledged);
    server.stop().await;
}

#[tokio::test]
async fn flight_sql_answers_statements_prepared_statements_and_catalog_calls() {
    // Proves: a Flight SQL client authenticates (bearer or basic→bearer), runs statements and
    // prepared statements with parameters, lists catalogs, schemas, tables and SQL info, and
    // is refused without a valid token.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), ALA_DI_STURA, 1).remove(0);
    let server = start(dir.path()).await;
    let acknowledged = send(server.ingest_addr, target(&server), &credential, faccia::clock::now_ms() - 60_000, 2).await;
    let token = analyst_token(dir.path());
    let addr = server.flight_addr.unwrap();
    wait_visible(server.http_addr.unwrap(), &token, acknowledged as i64).await;

    let mut anonymous = flight_client(addr).await;
    let refused = anonymous.execute("SELECT 1".into(), None).await.unwrap_err().to_string();
    assert!(refused.contains("authentication required"), "{refused}");
    anonymous.set_token("a-wrong-token-of-some-length".into());
    assert!(anonymous.execute("SELECT 1".into(), None).await.is_err());
    assert!(flight_client(addr).await.handshake("analyst", "wrong-password-here").await.is_err());

    let mut client = flight_client(addr).await;
    let issued = client.handshake("analyst", &token).await.unwrap();
    assert_eq!(issued, Bytes::from(token.clone()));
    client.set_token(token.clone());

    let info = client.execute("SELECT sum(votes) AS n FROM service_index".into(), None).await.unwrap();
    let batches = fetch(&mut client, info).await;
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), acknowledged as i64);
    let error = client.execute("SELECT * FROM no_such_table".into(), None).await.unwrap_err().to_string();
    assert!(error.contains("no_such_table"), "{error}");
    let error = client.execute("CREATE TABLE t AS SELECT 1".into(), None).await.unwrap_err().to_string();
    assert!(error.to_lowercase().contains("not supported") || error.contains("DDL"), "{error}");

    // A prepared statement with a `?` parameter, bound twice.
    let mut prepared = client.prepare("SELECT count(*) AS n FROM votes WHERE service = ?".into(), None).await.unwrap();
    let mut per_service = 0;
    for service in [1u16, 2] {
        let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::UInt16, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(UInt16Array::from(vec![service]))]).unwrap();
        prepared.set_parameters(batch).unwrap();
        let info = prepared.execute().await.unwrap();
        let batches = fetch(&mut client, info).await;
        per_service += batches[0].column(0).as_primitive::<Int64Type>().value(0);
    }
    let expected = count(dir.path(), "SELECT count(*) FROM votes WHERE service IN (1, 2)").await;
    assert_eq!(per_service, expected);
    assert!(per_service > 0);
    prepared.close().await.unwrap();

    let info = client.get_catalogs().await.unwrap();
    assert_eq!(rows(&fetch(&mut client, info).await), 1);
    let schemas = CommandGetDbSchemas { catalog: None, db_schema_filter_pattern: Some("public".into()) };
    let info = client.get_db_schemas(schemas).await.unwrap();
    assert_eq!(rows(&fetch(&mut client, info).await), 1);
    let tables = CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: None,
        table_name_filter_pattern: Some("service%".into()),
        table_types: vec!["VIEW".into()],
        include_schema: true,
    };
    let info = client.get_tables(tables).await.unwrap();
    let tables = fetch(&mut client, info).await;
    let names: Vec<String> = tables
        .iter()
        .flat_map(|b| {
            let names = b.column_by_name("table_name").unwrap().as_string::<i32>();
            (0..b.num_rows()).map(|i| names.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert!(names.contains(&"service_index".to_string()) && names.contains(&"service_trend_monthly".to_string()), "{names:?}");
    assert!(!names.contains(&"services".to_string()), "a table is not a view: {names:?}");
    let info = client.get_table_types().await.unwrap();
    assert_eq!(rows(&fetch(&mut client, info).await), 2);
    let info = client.get_sql_info(vec![SqlInfo::FlightSqlServerName, SqlInfo::FlightSqlServerReadOnly]).await.unwrap();
    assert_eq!(rows(&fetch(&mut client, info).await), 2);
    server.stop().await;
}

#[tokio::test]
async fn http_answers_every_format_and_names_what_is_wrong() {
    // Proves: /health and /metrics answer without a token; /query needs the token, answers in
    // every format, and refuses bad input with a status and a message naming the problem.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let mut config = loopback_config();
    config.query.http_result_rows_max = 20;
    config.query.sql_bytes_max = 200;
    let server = faccia::server::Server::start(dir.path().to_path_buf(), config).await.unwrap();
    let acknowledged = send(server.ingest_addr, target(&server), &credential, faccia::clock::now_ms() - 60_000, 1).await;
    let addr = server.http_addr.unwrap();
    let token = analyst_token(dir.path());
    wait_visible(addr, &token, acknowledged as i64).await;

    assert_eq!(http(addr, Method::GET, "/health", None, "").await.0, StatusCode::OK);
    let (status, _, metrics) = http(addr, Method::GET, "/metrics", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&metrics).contains("faccia_votes_stored_total 25"), "{}", String::from_utf8_lossy(&metrics));

    let sql = "/query?sql=SELECT%20service%2C%20votes%20FROM%20service_index%20ORDER%20BY%20service";
    assert_eq!(http(addr, Method::GET, sql, None, "").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(http(addr, Method::GET, sql, Some("a-wrong-token-of-some-length"), "").await.0, StatusCode::UNAUTHORIZED);
    let (status, content_type, body) = http(addr, Method::GET, sql, Some(&token), "").await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "application/json"));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let total: i64 = json.as_array().unwrap().iter().map(|r| r["votes"].as_i64().unwrap()).sum();
    assert_eq!(total, acknowledged as i64);
    let (_, _, csv) = http(addr, Method::GET, &format!("{sql}&format=csv"), Some(&token), "").await;
    assert!(String::from_utf8_lossy(&csv).starts_with("service,votes\n"));
    let (_, _, jsonl) = http(addr, Method::GET, &format!("{sql}&format=jsonl"), Some(&token), "").await;
    assert_eq!(String::from_utf8_lossy(&jsonl).lines().count(), json.as_array().unwrap().len());
    let (_, _, arrow_bytes) = http(addr, Method::POST, "/query?format=arrow", Some(&token), "SELECT 1 AS one").await;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow_bytes.to_vec()), None).unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 1);
    let (_, content_type, parquet_bytes) = http(addr, Method::POST, "/query?format=parquet", Some(&token), "SELECT 1 AS one").await;
    assert_eq!(content_type, "application/vnd.apache.parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet_bytes).unwrap().build().unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 1);

    let (status, _, body) = http(addr, Method::POST, "/query", Some(&token), "SELECT nothing FROM nowhere").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("nowhere"));
    let (status, _, body) = http(addr, Method::POST, "/query", Some(&token), "COPY (SELECT 1) TO '/tmp/x.csv'").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = http(addr, Method::POST, "/query", Some(&token), "SELECT * FROM votes").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("http_result_rows_max"));
    let long = format!("SELECT 1 AS a{}", " ".repeat(300));
    assert_eq!(http(addr, Method::POST, "/query", Some(&token), &long).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, body) = http(addr, Method::GET, &format!("/query?sql=SELECT%201{}", "%20".repeat(300)), Some(&token), "").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("sql_bytes_max"), "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = http(addr, Method::GET, &format!("{sql}&format=xml"), Some(&token), "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
    server.stop().await;
}

#[tokio::test]
async fn faccia_sql_reads_a_killed_servers_log_without_changing_it() {
    // Proves: after SIGKILL, with a torn record at the end of the log, `faccia sql` counts every
    // acknowledged vote from the log tail and leaves the log byte for byte as it was.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start_process(dir.path(), free_port());
    let acknowledged = send(server.addr, server.target().unwrap(), &credential, faccia::clock::now_ms() - 60_000, 4).await as i64;
    server.kill();
    let segment = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .unwrap();
    let mut torn = std::fs::read(&segment).unwrap();
    torn.extend_from_slice(&[0x40, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&segment, &torn).unwrap();
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, acknowledged);
    assert_eq!(count(dir.path(), "SELECT CAST(sum(votes) AS BIGINT) FROM service_index").await, acknowledged);
    assert_eq!(std::fs::read(&segment).unwrap(), torn, "the reader changed nothing");
}
