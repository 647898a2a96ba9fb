//! The dashboard over real HTTP on loopback: every page answers with the numbers SQL gives
//! over `/query` (found by their `data-` attributes), in Italian and English, behind the
//! analyst token (header or login cookie), with 400/404 pages naming the code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faccia::terminal::client::Terminal;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};

use crate::common::*;

fn analyst_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(faccia::analysts::tokens::TOKEN_FILE)).unwrap().trim().to_string()
}

/// One HTTP/1.1 exchange with extra headers: (status, headers, body).
async fn http(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, String)], body: &str) -> (StatusCode, HeaderMap, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = client.request(request.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// A page read with the analyst token as a bearer header; asserts 200.
async fn page(addr: SocketAddr, token: &str, path: &str) -> String {
    let (status, _, body) = http(addr, Method::GET, path, &[("authorization", format!("Bearer {token}"))], "").await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// Rows of SQL over `/query` as JSON objects.
async fn sql(addr: SocketAddr, token: &str, statement: &str) -> Vec<serde_json::Value> {
    let (status, _, body) =
        http(addr, Method::POST, "/query?format=json", &[("authorization", format!("Bearer {token}"))], statement).await;
    assert_eq!(status, StatusCode::OK, "{statement}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The `data-` attributes of every element in `html` that has `key`, by the value of `key`
/// (in the part of the page from `from` to the table's end, or to the section's SQL).
fn marked(html: &str, from: &str, key: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let start = html.find(from).unwrap_or_else(|| panic!("{from} not on the page"));
    let part = &html[start..];
    // A table ends at `</table>`, a section at its SQL (`<details>`).
    let end = if from.starts_with("<table") { "</table>" } else { "<details>" };
    let part = &part[..part.find(end).unwrap()];
    let mut found: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    // A row's numbers sit in its cells: they belong to the last keyed element before them.
    let mut current: Option<String> = None;
    for piece in part.split('<').skip(1) {
        let mut attributes = attributes(piece);
        if let Some(k) = attributes.remove(key) {
            current = Some(k.clone());
            found.entry(k).or_default();
        }
        if let Some(k) = &current {
            found.get_mut(k).unwrap().extend(attributes);
        }
    }
    found
}

fn attributes(tag: &str) -> BTreeMap<String, String> {
    let head = &tag[..tag.find('>').unwrap_or(tag.len())];
    let mut out = BTreeMap::new();
    let mut rest = head;
    while let Some(i) = rest.find(" data-") {
        rest = &rest[i + 1..];
        let Some(eq) = rest.find("=\"") else { break };
        let name = rest[..eq].to_string();
        let value_start = eq + 2;
        let end = rest[value_start..].find('"').unwrap() + value_start;
        out.insert(name, rest[value_start..end].to_string());
        rest = &rest[end..];
    }
    out
}

fn as_f64(value: &serde_json::Value) -> f64 {
    value.as_f64().unwrap_or_else(|| value.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN))
}

async fn send(server: &faccia::server::Server, credential: &faccia::registry::Credential, at_ms: i64, count: usize) -> usize {
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let mut terminal = Terminal::new(credential.clone(), endpoint, target(server), 4);
    terminal.enqueue(&human_votes(at_ms, count)).unwrap();
    deliver(&mut terminal).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_views_numbers_in_italian_and_english() {
    // Proves: /, /municipality/{code}, /coverage and /terminals show the numbers SQL gives
    // (service index, trend, per-comune week and today, heat map, terminals, coverage), in
    // Italian and in English, and names from data are escaped.
    let dir = tempfile::tempdir().unwrap();
    let aglie = faccia::registry::add_terminals(dir.path(), AGLIE, 1, "<b>\"sportello\"</b>").unwrap().remove(0);
    let ala = add(dir.path(), ALA_DI_STURA, 1).remove(0);
    let server = start(dir.path()).await;
    let addr = server.http_addr.unwrap();
    let token = analyst_token(dir.path());
    // Votes of the last half hour, or since midnight in Italy if that is later: today and this
    // week in Italy (25 votes span 3 minutes; just after midnight they run up to 3 minutes
    // ahead, inside the 5 minutes of clock skew the server accepts).
    let now = faccia::clock::now_ms();
    let midnight = chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::Rome)
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(chrono_tz::Europe::Rome).earliest())
        .map_or(0, |t| t.timestamp_millis());
    let at = (now - 30 * 60_000).max(midnight + 1_000);
    let sent = send(&server, &aglie, at, 25).await + send(&server, &ala, at + 1_000, 13).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while as_f64(&sql(addr, &token, "SELECT count(*) AS n FROM votes").await[0]["n"]) as usize != sent {
        assert!(Instant::now() < deadline, "{sent} votes not visible within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Overview: the service index and the trend, row by row.
    let home = page(addr, &token, "/").await;
    assert!(home.contains("Soddisfazione per servizio") && home.contains(r#"<html lang="it">"#), "Italian by default");
    let shown = marked(&home, r#"<table class="services">"#, "data-service");
    let index = sql(addr, &token, "SELECT service, votes, csat_pct FROM service_index").await;
    assert_eq!(shown.len(), index.len(), "{shown:?}");
    for row in &index {
        let cells = &shown[&row["service"].to_string()];
        assert_eq!(cells["data-votes"], row["votes"].to_string());
        assert_eq!(cells["data-csat"].parse::<f64>().unwrap(), as_f64(&row["csat_pct"]));
    }
    let trend = marked(&home, r#"<table class="trend">"#, "data-service");
    let weekly =
        sql(addr, &token, "SELECT service, votes FROM service_trend_weekly WHERE period = (SELECT max(period) FROM service_trend_weekly)")
            .await;
    assert_eq!(trend.len(), weekly.len());
    for row in &weekly {
        assert_eq!(trend[&row["service"].to_string()]["data-votes"], row["votes"].to_string());
    }
    let reasons = sql(addr, &token, "SELECT count(*) AS n FROM counted_votes WHERE face = -1").await;
    let on_page: u64 = marked(&home, "<h2>Motivi", "data-reason").values().map(|r| r["data-votes"].parse::<u64>().unwrap()).sum();
    assert_eq!(on_page as f64, as_f64(&reasons[0]["n"]));
    assert!(home.contains(r#"href="/municipality/001001""#) && home.contains(r#"href="/municipality/001003""#), "links from SQL");

    // A comune: this week and today per service, the heat map, its terminals.
    let comune = page(addr, &token, "/municipality/001001").await;
    let expected = as_f64(&sql(addr, &token, "SELECT count(*) AS n FROM counted_votes WHERE istat_code = '001001'").await[0]["n"]);
    let services = marked(&comune, r#"<table class="services">"#, "data-service");
    let week: f64 = services.values().map(|r| r["data-votes"].parse::<f64>().unwrap()).sum();
    let today: f64 = services.values().map(|r| r["data-votes-today"].parse::<f64>().unwrap()).sum();
    assert_eq!((week, today), (expected, expected), "{services:?}");
    let cells: f64 =
        comune.split(r#"class="cell""#).skip(1).map(|c| attributes(&format!(" {c}"))["data-votes"].parse::<f64>().unwrap()).sum();
    assert_eq!(cells, expected, "the heat map's cells add up to the comune's votes");
    let terminal = marked(&comune, r#"<table class="terminals">"#, "data-terminal");
    assert_eq!(terminal.len(), 1);
    assert_eq!(terminal.values().next().unwrap()["data-votes-today"], "25");
    assert!(comune.contains("&lt;b&gt;&quot;sportello&quot;&lt;/b&gt;") && !comune.contains("<b>\"sportello"), "labels are escaped");

    // Coverage: every region's numbers as coverage_by_region's.
    let coverage = page(addr, &token, "/coverage").await;
    let regions = marked(&coverage, r#"<table class="regions">"#, "data-region");
    let by_region = sql(addr, &token, "SELECT region_code, eligible, with_terminals, bonus_eur FROM coverage_by_region").await;
    assert_eq!(regions.len(), by_region.len());
    for row in &by_region {
        let cells = &regions[&row["region_code"].to_string().trim_matches('"').to_string()];
        assert_eq!(cells["data-eligible"], row["eligible"].to_string());
        assert_eq!(cells["data-with-terminals"], row["with_terminals"].to_string());
        assert_eq!(cells["data-bonus"].parse::<f64>().unwrap(), as_f64(&row["bonus_eur"]).max(0.0).trunc());
    }
    let piemonte = by_region.iter().find(|r| as_f64(&r["with_terminals"]) == 2.0).expect("Piemonte has both comuni");
    assert_eq!(regions[&piemonte["region_code"].to_string().trim_matches('"').to_string()]["data-with-votes-month"], "2");

    // Terminals: votes today per terminal, as SQL counts them.
    let terminals = page(addr, &token, "/terminals").await;
    assert!(terminals.contains(r#"id="alerts""#), "the place for alerts");
    let listed = marked(&terminals, r#"<table class="terminals">"#, "data-terminal");
    for row in sql(addr, &token, "SELECT terminal, count(*) AS n FROM votes GROUP BY terminal").await {
        let id = row["terminal"].to_string().trim_matches('"').to_string();
        assert_eq!(listed[&id]["data-votes-today"], row["n"].to_string());
    }

    // English: by the parameter, then kept by the cookie it sets.
    let (status, headers, english) = http(addr, Method::GET, "/?lang=en", &[("authorization", format!("Bearer {token}"))], "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(english.contains("Satisfaction by service") && english.contains(r#"<html lang="en">"#));
    let cookie = headers.get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_string();
    assert_eq!(cookie, "faccia_lang=en");
    let (_, _, coverage_en) =
        http(addr, Method::GET, "/coverage", &[("authorization", format!("Bearer {token}")), ("cookie", cookie)], "").await;
    assert!(coverage_en.contains("Programme coverage"), "the language is kept");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_the_token_log_in_by_cookie_and_name_bad_codes() {
    // Proves: without a token a page is 401 (the login form); /login checks the token and
    // sets an HttpOnly SameSite=Strict cookie that then opens the pages; /logout clears it;
    // an unknown code is 404 and a malformed one 400, each naming it.
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.http_addr.unwrap();
    let token = analyst_token(dir.path());

    for path in ["/", "/coverage", "/terminals", "/municipality/001001"] {
        let (status, headers, body) = http(addr, Method::GET, path, &[], "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(body.contains(r#"<form method="post" action="/login">"#) && body.contains("authentication required"), "{body}");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    let (status, _, body) = http(addr, Method::GET, "/", &[("authorization", "Bearer not-the-token".into())], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("unknown analyst token"));

    let form = [("content-type", "application/x-www-form-urlencoded".to_string())];
    let (status, _, body) = http(addr, Method::POST, "/login", &form, "token=wrong-token-1234567890").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("unknown analyst token"));
    let (status, _, body) = http(addr, Method::POST, "/login", &form, "token=").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("token is empty"));
    let (status, headers, _) = http(addr, Method::POST, "/login", &form, &format!("token={token}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/");
    let set = headers["set-cookie"].to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let (status, _, body) = http(addr, Method::GET, "/", &[("cookie", cookie.clone())], "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, headers, _) = http(addr, Method::GET, "/logout", &[("cookie", cookie)], "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));

    let bearer = [("authorization", format!("Bearer {token}"))];
    let (status, _, body) = http(addr, Method::GET, "/municipality/999999", &bearer, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("Nessun comune con codice ISTAT 999999"), "{body}");
    let (status, _, body) = http(addr, Method::GET, "/municipality/12?lang=en", &bearer, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("six-digit ISTAT code"), "{body}");
    let (status, _, body) = http(addr, Method::GET, "/union/NO-SUCH-UNION", &bearer, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("NO-SUCH-UNION"));
    let (status, _, body) = http(addr, Method::GET, "/union/bad%20code", &bearer, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("1 to 32 characters"), "{body}");
    server.stop().await;
}
