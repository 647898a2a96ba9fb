//! Scoped tokens (`faccia tokens`): a municipality-scoped and a region-scoped token try to see
//! other comuni's rows over HTTP and Flight SQL — joins, subqueries, UNION, the rollups, every
//! view, `information_schema`, `table_history`, prepared statements, catalog calls — and every
//! count equals the unscoped count filtered by hand. Invariant 27.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetTables, CommandPreparedStatementQuery, ProstMessageExt};
use arrow_flight::{FlightDescriptor, FlightInfo};
use bytes::Bytes;
use faccia::analysts::tokens::{add_token, revoke_token};
use faccia::model::IstatCode;
use faccia::query::scope::Scope;
use faccia::terminal::client::Terminal;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use prost::Message;
use tonic::transport::Channel;

use crate::common::*;

/// Acquapendente (VT, Lazio): outside Piemonte.
const ACQUAPENDENTE: IstatCode = IstatCode(56001);

async fn post(addr: SocketAddr, token: &str, sql: &str) -> (StatusCode, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/query?format=json"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(sql.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    (status, String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
}

/// The JSON rows of a statement that must succeed.
async fn json(addr: SocketAddr, token: &str, sql: &str) -> Vec<serde_json::Value> {
    let (status, body) = post(addr, token, sql).await;
    assert_eq!(status, StatusCode::OK, "{sql}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `n` of the first row.
async fn n(addr: SocketAddr, token: &str, sql: &str) -> i64 {
    json(addr, token, sql).await[0]["n"].as_i64().unwrap_or_else(|| panic!("{sql}: no n"))
}

async fn send(server: &faccia::server::Server, credential: faccia::registry::Credential, votes: usize) -> usize {
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let mut terminal = Terminal::new(credential, endpoint, target(server), 4);
    terminal.enqueue(&human_votes(faccia::clock::now_ms() - 3_600_000, votes)).unwrap();
    let (acknowledged, _) = deliver(&mut terminal).await;
    terminal.close();
    acknowledged
}

fn list(codes: &BTreeSet<u32>) -> String {
    codes.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Names of a one-string-column result.
fn names(rows: &[serde_json::Value], column: &str) -> Vec<String> {
    rows.iter().map(|r| r[column].as_str().unwrap().to_string()).collect()
}

/// What a token of `scope` must see, checked against the unscoped data filtered by hand.
async fn no_escape(dir: &Path, addr: SocketAddr, token: &str, scope: &Scope) {
    let codes = scope.municipalities(dir).unwrap().unwrap();
    let inside = list(&codes);
    let unscoped = |sql: String| async move { count(dir, &sql).await };
    // Plain reads and the rollups.
    let votes = unscoped(format!("SELECT count(*) FROM votes WHERE municipality IN ({inside})")).await;
    assert!(votes > 0, "{scope}: the test needs votes inside the scope");
    assert_eq!(n(addr, token, "SELECT count(*) AS n FROM votes").await, votes, "{scope}");
    for table in ["vote_counts", "municipality_service_counts"] {
        let expected = if table == "vote_counts" {
            unscoped(format!(
                "SELECT CAST(sum(votes) AS BIGINT) FROM vote_counts WHERE region_code IN (SELECT region_code FROM municipalities WHERE municipality IN ({inside}))"
            ))
            .await
        } else {
            unscoped(format!("SELECT CAST(sum(votes) AS BIGINT) FROM {table} WHERE municipality IN ({inside})")).await
        };
        let seen = n(addr, token, &format!("SELECT CAST(sum(votes) AS BIGINT) AS n FROM {table}")).await;
        if table == "vote_counts" && matches!(scope, Scope::Municipality(_)) {
            // Narrower than a region: counted from the comune's own votes.
            assert_eq!(seen, votes, "{scope}: {table}");
        } else {
            assert_eq!(seen, expected, "{scope}: {table}");
        }
    }
    // Joins, subqueries, UNION: nothing from outside.
    for (table, expected) in [
        ("municipalities", codes.len() as i64),
        ("administrations", codes.len() as i64),
        ("terminals", unscoped(format!("SELECT count(*) FROM terminals WHERE municipality IN ({inside})")).await),
    ] {
        assert_eq!(n(addr, token, &format!("SELECT count(*) AS n FROM {table}")).await, expected, "{scope}: {table}");
    }
    assert_eq!(n(addr, token, "SELECT count(*) AS n FROM votes v JOIN municipalities m ON m.municipality = v.municipality").await, votes);
    let outside = "SELECT count(*) AS n FROM (SELECT municipality FROM votes UNION ALL SELECT municipality FROM terminals \
                   UNION ALL SELECT municipality FROM municipalities UNION ALL SELECT municipality FROM administrations \
                   UNION ALL SELECT municipality FROM municipality_service_counts UNION ALL SELECT municipality FROM union_members) t \
                   WHERE municipality NOT IN";
    let code = *codes.iter().next().unwrap();
    let others = unscoped(format!("SELECT count(*) FROM votes WHERE municipality IN ({inside}) AND municipality <> {code}")).await;
    assert_eq!(
        n(
            addr,
            token,
            &format!(
                "SELECT count(*) AS n FROM votes WHERE municipality NOT IN (SELECT municipality FROM votes WHERE municipality = {code})"
            )
        )
        .await,
        others,
        "{scope}: subquery"
    );
    assert_eq!(n(addr, token, &format!("{outside} ({inside})")).await, 0, "{scope}: UNION of every table with a municipality");
    assert_eq!(n(addr, token, "SELECT count(*) AS n FROM votes WHERE municipality = 56001").await, 0, "{scope}");
    // `table_history` is absent, from SQL and from information_schema; code tables stay.
    let (status, body) = post(addr, token, "SELECT * FROM table_history").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("table_history"), "{body}");
    let tables =
        names(&json(addr, token, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").await, "table_name");
    assert!(!tables.contains(&"table_history".to_string()) && tables.contains(&"services".to_string()), "{tables:?}");
    assert_eq!(n(addr, token, "SELECT count(*) AS n FROM information_schema.columns WHERE table_name = 'table_history'").await, 0);
    // Every view answers, and every view with a municipality or region shows only the scope's.
    let views = json(addr, token, "SELECT table_name, definition FROM information_schema.views WHERE table_schema = 'public'").await;
    assert!(views.len() > 20, "{views:?}");
    let view_names = names(&views, "table_name");
    assert!(views.iter().all(|v| !v["definition"].as_str().unwrap_or("").contains("table_history")));
    for view in &view_names {
        let columns = names(
            &json(addr, token, &format!("SELECT column_name FROM information_schema.columns WHERE table_name = '{view}'")).await,
            "column_name",
        );
        if columns.contains(&"municipality".to_string()) {
            let sql = format!("SELECT count(*) AS n FROM {view} WHERE municipality IS NULL OR municipality NOT IN ({inside})");
            assert_eq!(n(addr, token, &sql).await, 0, "{scope}: {view}");
        } else if columns.contains(&"region".to_string()) {
            // Both scopes of the test are in Piemonte.
            let regions =
                names(&json(addr, token, &format!("SELECT DISTINCT region FROM {view} WHERE region IS NOT NULL")).await, "region");
            assert!(regions.iter().all(|r| r == "Piemonte"), "{scope}: {view} shows {regions:?}");
        } else {
            json(addr, token, &format!("SELECT * FROM {view} LIMIT 1")).await;
        }
    }
    // The index views count the scope's votes only.
    assert_eq!(n(addr, token, "SELECT CAST(sum(votes) AS BIGINT) AS n FROM service_index").await, votes, "{scope}: service_index");
    assert_eq!(
        n(addr, token, "SELECT CAST(sum(votes) AS BIGINT) AS n FROM municipality_index").await,
        votes,
        "{scope}: municipality_index"
    );
}

async fn flight(addr: SocketAddr, token: &str) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_token(token.to_string());
    client
}

async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
        batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    batches
}

fn first(batches: &[RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn scoped_tokens_see_only_their_rows_over_http_and_flight_sql() {
    // Proves invariant 27: a scoped session's tables are filtered before any SQL sees them.
    let dir = tempfile::tempdir().unwrap();
    // Terminals are registered before the server starts (it reads its directory at start).
    let fleet: Vec<_> = [(ALA_DI_STURA, 30), (AGLIE, 20), (ACQUAPENDENTE, 25)]
        .into_iter()
        .map(|(municipality, votes)| (add(dir.path(), municipality, 1).remove(0), votes))
        .collect();
    let server = start(dir.path()).await;
    let mut total = 0;
    for (credential, votes) in fleet {
        total += send(&server, credential, votes).await;
    }
    let analyst = std::fs::read_to_string(dir.path().join(faccia::analysts::tokens::TOKEN_FILE)).unwrap().trim().to_string();
    let http = server.http_addr.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while n(http, &analyst, "SELECT count(*) AS n FROM votes").await != total as i64 {
        assert!(Instant::now() < deadline, "votes not visible");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Tokens added while the server runs are seen at once.
    let town = Scope::parse("municipality:001003").unwrap();
    let region = Scope::parse("region:piemonte").unwrap();
    let (town_record, town_token) = add_token(dir.path(), &town, "Ala di Stura").unwrap();
    let (_, region_token) = add_token(dir.path(), &region, "Piemonte").unwrap();
    no_escape(dir.path(), http, &town_token, &town).await;
    no_escape(dir.path(), http, &region_token, &region).await;
    assert_eq!(n(http, &region_token, "SELECT count(*) AS n FROM votes").await, 50);
    assert!(n(http, &analyst, "SELECT count(*) AS n FROM table_history").await > 0);

    // Flight SQL: statements, catalog calls and prepared statements in the token's scope.
    let flight_addr = server.flight_addr.unwrap();
    let mut town_client = flight(flight_addr, &town_token).await;
    let info = town_client.execute("SELECT count(*) AS n FROM votes".into(), None).await.unwrap();
    assert_eq!(first(&fetch(&mut town_client, info).await), 30);
    let tables = CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: Some("public".into()),
        table_name_filter_pattern: None,
        table_types: vec![],
        include_schema: false,
    };
    let info = town_client.get_tables(tables.clone()).await.unwrap();
    let listed: Vec<String> = fetch(&mut town_client, info)
        .await
        .iter()
        .flat_map(|b| {
            let names = b.column_by_name("table_name").unwrap().as_string::<i32>();
            (0..b.num_rows()).map(|i| names.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert!(listed.contains(&"votes".to_string()) && !listed.contains(&"table_history".to_string()), "{listed:?}");
    let mut analyst_client = flight(flight_addr, &analyst).await;
    let info = analyst_client.get_tables(tables).await.unwrap();
    // The analyst also has the tables a scoped session lacks (no municipality column):
    // table_history, alert_deliveries, registry_editions.
    assert_eq!(fetch(&mut analyst_client, info).await.iter().map(RecordBatch::num_rows).sum::<usize>(), listed.len() + 3);

    // A statement prepared under the analyst's token cannot run under the town's.
    let mut prepared = analyst_client.prepare("SELECT count(*) AS n FROM votes".into(), None).await.unwrap();
    let info = prepared.execute().await.unwrap();
    assert_eq!(first(&fetch(&mut analyst_client, info).await), total as i64);
    let command = CommandPreparedStatementQuery { prepared_statement_handle: Bytes::from("faccia-prepared-1") };
    let mut request = tonic::Request::new(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()));
    request.metadata_mut().insert("authorization", format!("Bearer {town_token}").parse().unwrap());
    let refused = town_client.inner_mut().get_flight_info(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    // Prepared under the town's token, a parameter naming another comune finds nothing.
    let mut mine = town_client.prepare("SELECT count(*) AS n FROM votes WHERE municipality = ?".into(), None).await.unwrap();
    for (code, expected) in [(ALA_DI_STURA.0, 30), (AGLIE.0, 0), (ACQUAPENDENTE.0, 0)] {
        let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::UInt32, false)]));
        mine.set_parameters(RecordBatch::try_new(schema, vec![Arc::new(UInt32Array::from(vec![code]))]).unwrap()).unwrap();
        let info = mine.execute().await.unwrap();
        assert_eq!(first(&fetch(&mut town_client, info).await), expected, "{code}");
    }

    // Revoked: refused from the next request, over HTTP and Flight SQL.
    revoke_token(dir.path(), town_record.id).unwrap();
    let (status, body) = post(http, &town_token, "SELECT 1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(town_client.execute("SELECT 1".into(), None).await.is_err());
    assert_eq!(n(http, &region_token, "SELECT count(*) AS n FROM votes").await, 50);
    server.stop().await;
}

#[test]
fn tokens_command_adds_lists_and_revokes_and_names_bad_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let faccia = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_faccia"))
            .args(["tokens", "--data-dir", dir.path().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, out, _) = faccia(&["add", "--scope", "municipality:001003", "--label", "town hall"]);
    assert!(ok, "{out}");
    let token = out.lines().last().unwrap().to_string();
    assert!(token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{out}");
    let (ok, listed, _) = faccia(&["list"]);
    assert!(ok && listed.contains("municipality:001003") && listed.contains("town hall") && !listed.contains(&token), "{listed}");
    for (scope, says) in
        [("comune:1", "is not a kind of scope"), ("municipality:999999", "not in the registry"), ("union:NOPE", "not registered")]
    {
        let (ok, _, err) = faccia(&["add", "--scope", scope]);
        assert!(!ok && err.contains("scope: ") && err.contains(says), "{scope}: {err}");
    }
    let (ok, _, _) = faccia(&["revoke", "1"]);
    assert!(ok);
    let (ok, _, err) = faccia(&["revoke", "1"]);
    assert!(!ok && err.contains("no token has id 1"), "{err}");
    assert!(!faccia(&["list"]).1.contains("001003"));
}
