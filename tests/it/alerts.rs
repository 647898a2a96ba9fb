//! Real-time alerts end to end: terminals over QUIC, a server evaluating its rules every second,
//! and a real HTTP receiver on loopback that records the webhook's POSTs (answering the first
//! with 500 to exercise retries).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faccia::alerts::AlertsConfig;
use faccia::config::Config;
use faccia::model::{Channel, Face, Reason};
use faccia::server::Server;
use faccia::terminal::client::{TerminalVote, batch_frame};
use faccia::terminal::simulate::CLOCK_RESET_MS;
use faccia::wire::Status;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::common::*;

const SECRET: &str = "a webhook secret for the test";
const SERVICE: u16 = 3;

/// One request the receiver got, and the status it answered.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn is(&self, rule: &str, event: &str) -> bool {
        let json = self.json();
        json["rule"] == rule && json["event"] == event
    }
}

type Log = Arc<Mutex<Vec<Received>>>;

/// A minimal HTTP/1.1 receiver: records each request, answers 500 to the first and 200 after.
async fn receiver() -> (SocketAddr, Log) {
    receiver_over(None).await
}

/// As `receiver`, over TLS with `tls` when given (an https receiver).
async fn receiver_over(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Log) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => answer(stream, seen).await,
                    // A client that refuses the certificate ends the handshake: nothing to record.
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            answer(stream, seen).await;
                        }
                    }
                }
            });
        }
    });
    (addr, log)
}

/// Reads one request from `stream`, records it and answers it (500 to the very first, 200 after).
async fn answer(mut stream: impl AsyncRead + AsyncWrite + Unpin, seen: Log) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the headers ended");
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the body ended");
        data.extend_from_slice(&buf[..n]);
    }
    let body = data[head_end..head_end + length].to_vec();
    let answered = {
        let mut seen = seen.lock().unwrap();
        let answered = if seen.is_empty() { 500 } else { 200 };
        seen.push(Received { headers, body, answered });
        answered
    };
    let reason = if answered == 200 { "OK" } else { "Internal Server Error" };
    let reply = format!("HTTP/1.1 {answered} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(reply.as_bytes()).await.unwrap();
    let _ = stream.shutdown().await;
}

/// A TLS acceptor with a certificate for 127.0.0.1 issued by a new CA; returns it and the CA's PEM file.
fn tls_receiver_identity(dir: &std::path::Path) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (_, ca) = faccia::transport::tls::dev_identity(dir).unwrap();
    let chain = CertificateDer::pem_file_iter(dir.join("tls/server.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("tls/server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca)
}

fn config(webhook: SocketAddr) -> Config {
    let alerts = AlertsConfig {
        evaluate_interval_s: 1,
        webhook_url: Some(format!("http://{webhook}/faccia")),
        webhook_secret: Some(SECRET.into()),
        webhook_backoff_ms: 200,
        ..AlertsConfig::default()
    };
    Config { alerts, ..loopback_config() }
}

/// `count` votes of `face` for `SERVICE`, `CITIZEN_GAP_MS` apart from `at_ms` (no misuse rule flags them).
fn faces(face: Face, at_ms: i64, count: usize) -> Vec<TerminalVote> {
    (0..count)
        .map(|i| TerminalVote {
            at_ms: at_ms + i as i64 * CITIZEN_GAP_MS,
            service: SERVICE,
            face,
            channel: Channel::ALL[i % 3],
            reason: (face == Face::Negative).then_some(Reason::ALL[i % 4]),
        })
        .collect()
}

/// Waits until `log` holds a request answered 200 that `wanted` matches.
async fn wait_for(log: &Log, what: &str, wanted: impl Fn(&Received) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !log.lock().unwrap().iter().any(|r| r.answered == 200 && wanted(r)) {
        assert!(Instant::now() < deadline, "no {what} POST within 15 s: {:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP/1.1 exchange with the server: (status, body).
async fn http(addr: SocketAddr, method: Method, path: &str, token: &str, body: &str) -> (StatusCode, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    (status, String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
}

async fn query(server: &Server, token: &str, sql: &str) -> serde_json::Value {
    let (status, body) = http(server.http_addr.unwrap(), Method::POST, "/query?format=json", token, sql).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn metrics(server: &Server, token: &str) -> String {
    http(server.http_addr.unwrap(), Method::GET, "/metrics", token, "").await.1
}

/// The dashboard's `/terminals` page in English, as `token` sees it.
async fn terminals_page(server: &Server, token: &str) -> String {
    let (status, body) = http(server.http_addr.unwrap(), Method::GET, "/terminals?lang=en", token, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The start of an alert's row on the terminals page (`dashboard::pages::alerts`).
fn alert_row(rule: &str, state: &str, istat_code: &str) -> String {
    format!(r#"data-rule="{rule}" data-state="{state}" data-municipality="{istat_code}""#)
}

fn has_line(metrics: &str, line: &str) {
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in /metrics:\n{}",
        metrics.lines().filter(|l| l.contains("alert")).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn red_votes_fire_one_signed_post_green_votes_resolve_it_and_a_restart_sends_nothing_again() {
    // Proves: four red votes of one municipality × service fire exactly one `fired` POST (the
    // receiver's 500 is retried), signed with HMAC-SHA256 over the body; it is not sent again
    // while the faces stay red, nor after a restart; green votes send one `resolved` POST; the
    // `alerts` and `alert_deliveries` tables over HTTP and `/metrics` show it; a terminal with a
    // reset clock fires a `clock_fault` alert under its comune.
    let (webhook, log) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let red_terminal = add(dir.path(), AGLIE, 1).remove(0);
    let clock_terminal = add(dir.path(), ALA_DI_STURA, 1).remove(0);
    let server = Server::start(dir.path().to_path_buf(), config(webhook)).await.unwrap();
    let token = std::fs::read_to_string(dir.path().join(faccia::analysts::tokens::TOKEN_FILE)).unwrap().trim().to_string();

    let red_start = faccia::clock::now_ms() - 60_000;
    let red = faces(Face::Negative, red_start, 4);
    let reply = session(&server, &red_terminal).await.send_frame(&batch_frame(1, AGLIE, &red)).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8, "{}", reply.message_text());
    let skewed = faces(Face::Positive, CLOCK_RESET_MS + 3_600_000, 3);
    let reply = session(&server, &clock_terminal).await.send_frame(&batch_frame(1, ALA_DI_STURA, &skewed)).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8, "{}", reply.message_text());

    wait_for(&log, "red_share fired", |r| r.is("red_share", "fired")).await;
    wait_for(&log, "clock_fault fired", |r| r.is("clock_fault", "fired")).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await; // two more evaluations: no duplicate
    {
        let seen = log.lock().unwrap();
        let fired: Vec<&Received> = seen.iter().filter(|r| r.is("red_share", "fired")).collect();
        assert_eq!(fired.iter().filter(|r| r.answered == 200).count(), 1, "exactly one fired POST taken: {seen:?}");
        assert!(fired.len() <= 2, "one event, retried at most once after the 500: {seen:?}");
        assert_eq!(seen.iter().filter(|r| r.answered == 500).count(), 1);
        let json = fired[0].json();
        assert_eq!((json["municipality"].as_u64(), json["service"].as_u64()), (Some(AGLIE.0.into()), Some(SERVICE.into())));
        assert_eq!((json["value"].as_f64(), json["threshold"].as_f64()), (Some(100.0), Some(50.0)));
        let clock = seen.iter().find(|r| r.is("clock_fault", "fired")).unwrap().json();
        assert_eq!(
            (clock["terminal"].as_u64(), clock["municipality"].as_u64()),
            (Some(clock_terminal.id.into()), Some(ALA_DI_STURA.0.into()))
        );
        for request in seen.iter() {
            let expected = faccia::alerts::webhook::sign(SECRET.as_bytes(), &request.body);
            assert_eq!(request.headers.get("x-faccia-signature"), Some(&expected), "signed over the exact body");
            let sent_s: i64 = request.headers["x-faccia-timestamp"].parse().unwrap();
            assert!((sent_s - faccia::clock::now_ms() / 1_000).abs() < 60);
            assert_eq!(request.headers.get("x-faccia-event").map(String::as_str), request.json()["event"].as_str());
        }
    }
    // The terminals page shows both, firing; Agliè's own token sees its alert and not Ala di Stura's.
    let aglie = faccia::query::scope::Scope::parse("municipality:001001").unwrap();
    let (_, aglie_token) = faccia::analysts::tokens::add_token(dir.path(), &aglie, "Agliè").unwrap();
    let page = terminals_page(&server, &token).await;
    assert!(page.contains(&alert_row("red_share", "firing", "001001")), "{page}");
    assert!(page.contains(&alert_row("clock_fault", "firing", "001003")), "{page}");
    assert!(page.contains(r#"data-firing="2""#), "{page}");
    let own = terminals_page(&server, &aglie_token).await;
    assert!(own.contains(&alert_row("red_share", "firing", "001001")), "{own}");
    assert!(!own.contains("clock_fault") && own.contains(r#"data-firing="1""#), "another comune's alert on a scoped page: {own}");
    let text = metrics(&server, &token).await;
    has_line(&text, "faccia_alerts_raised_total{rule=\"red_share\"} 1");
    has_line(&text, "faccia_alerts_firing{rule=\"red_share\"} 1");
    has_line(&text, "faccia_alert_deliveries_total{outcome=\"retry\"} 1");
    has_line(&text, "faccia_alert_deliveries_total{outcome=\"ok\"} 2");
    server.stop().await;

    let sent_before_restart = log.lock().unwrap().len();
    let server = Server::start(dir.path().to_path_buf(), config(webhook)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3_000)).await; // three evaluations after the restart
    assert_eq!(log.lock().unwrap().len(), sent_before_restart, "a restart raises nothing again: {:?}", log.lock().unwrap());
    has_line(&metrics(&server, &token).await, "faccia_alerts_firing{rule=\"red_share\"} 1");

    let green_start = (faccia::clock::now_ms() - 40_000).max(red_start + 4 * CITIZEN_GAP_MS);
    let green = faces(Face::Positive, green_start, 6);
    let reply = session(&server, &red_terminal).await.send_frame(&batch_frame(2, AGLIE, &green)).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8, "{}", reply.message_text());
    wait_for(&log, "red_share resolved", |r| r.is("red_share", "resolved")).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(log.lock().unwrap().iter().filter(|r| r.is("red_share", "resolved")).count(), 1, "resolved once");

    let rows = query(
        &server,
        &token,
        "SELECT rule, state, municipality, service, terminal, value, threshold, delivered, resolved_at IS NOT NULL AS ended, message \
         FROM alerts ORDER BY rule",
    )
    .await;
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    let (clock, red) = (&rows[0], &rows[1]);
    assert_eq!((red["rule"].as_str(), red["state"].as_str(), red["ended"].as_bool()), (Some("red_share"), Some("resolved"), Some(true)));
    assert_eq!((red["municipality"].as_u64(), red["service"].as_u64()), (Some(AGLIE.0.into()), Some(SERVICE.into())));
    assert_eq!((red["value"].as_f64(), red["threshold"].as_f64(), red["delivered"].as_bool()), (Some(100.0), Some(50.0), Some(true)));
    assert!(red["message"].as_str().unwrap().contains("red faces"), "{red}");
    assert_eq!((clock["rule"].as_str(), clock["state"].as_str()), (Some("clock_fault"), Some("firing")));
    assert_eq!(clock["terminal"].as_u64(), Some(clock_terminal.id.into()));
    let attempts = query(&server, &token, "SELECT event, attempt, status, error FROM alert_deliveries WHERE status = 500").await;
    assert_eq!(attempts.as_array().unwrap().len(), 1, "{attempts}");
    assert_eq!((attempts[0]["attempt"].as_u64(), attempts[0]["error"].as_str()), (Some(1), Some("HTTP 500")));
    let retried = query(&server, &token, "SELECT count(*) AS n FROM alert_deliveries WHERE attempt = 2 AND status = 200").await;
    assert_eq!(retried[0]["n"].as_i64(), Some(1), "the event answered 500 was taken at its second attempt");

    let page = terminals_page(&server, &token).await;
    assert!(page.contains(&alert_row("red_share", "resolved", "001001")), "{page}");
    assert!(page.contains(r#"data-firing="1""#), "{page}");
    let text = metrics(&server, &token).await;
    has_line(&text, "faccia_alerts_firing{rule=\"red_share\"} 0");
    has_line(&text, "faccia_alerts_firing{rule=\"clock_fault\"} 1");
    has_line(&text, "faccia_alert_deliveries_total{outcome=\"ok\"} 1");
    server.stop().await;
}

#[tokio::test]
async fn a_bad_alerts_setting_is_refused_naming_the_field() {
    // Proves: the server does not start with an `[alerts]` value it cannot work with, and says which.
    let dir = tempfile::tempdir().unwrap();
    let config =
        Config { alerts: AlertsConfig { webhook_url: Some("ftp://example.org/x".into()), ..Default::default() }, ..loopback_config() };
    let error = format!("{:#}", Server::start(dir.path().to_path_buf(), config).await.err().expect("refused"));
    assert!(error.contains("[alerts] webhook_url") && error.contains("https://"), "{error}");
    let missing = dir.path().join("no-such-ca.pem");
    let alerts = AlertsConfig { webhook_url: Some("https://127.0.0.1:9/x".into()), webhook_ca: Some(missing), ..Default::default() };
    let error = format!("{:#}", Server::start(dir.path().to_path_buf(), Config { alerts, ..loopback_config() }).await.err().unwrap());
    assert!(error.contains("alerts.webhook_ca") && error.contains("no-such-ca.pem"), "{error}");
    let text = "[alerts.red_share]\nshare_pct_min = 0\n";
    let config: Config = toml::from_str(text).unwrap();
    let error = format!(
        "{:#}",
        Server::start(dir.path().to_path_buf(), Config { alerts: config.alerts, ..loopback_config() }).await.err().unwrap()
    );
    assert!(error.contains("[alerts.red_share] share_pct_min = 0"), "{error}");
}

#[tokio::test]
async fn an_https_receiver_gets_the_signed_post_when_its_ca_is_trusted_and_nothing_otherwise() {
    // Proves: `webhook_url = "https://…"` delivers over TLS to a receiver whose certificate chains
    // to `webhook_ca`; a server trusting another CA refuses the handshake and logs the attempt
    // as failed, naming the certificate.
    let receivers = tempfile::tempdir().unwrap();
    let (acceptor, ca) = tls_receiver_identity(&receivers.path().join("trusted"));
    let (_, other_ca) = tls_receiver_identity(&receivers.path().join("other"));
    let (webhook, log) = receiver_over(Some(acceptor)).await;
    let https = |ca: std::path::PathBuf| {
        let mut config = config(webhook);
        config.alerts.webhook_url = Some(format!("https://{webhook}/faccia"));
        config.alerts.webhook_ca = Some(ca);
        config.alerts.webhook_attempts_max = 2;
        config
    };
    let (trusting, distrusting) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut servers = Vec::new();
    for (dir, ca) in [(&trusting, ca), (&distrusting, other_ca)] {
        let terminal = add(dir.path(), AGLIE, 1).remove(0);
        let server = Server::start(dir.path().to_path_buf(), https(ca)).await.unwrap();
        let red = faces(Face::Negative, faccia::clock::now_ms() - 60_000, 4);
        let reply = session(&server, &terminal).await.send_frame(&batch_frame(1, AGLIE, &red)).await.unwrap();
        assert_eq!(reply.status, Status::Stored as u8, "{}", reply.message_text());
        servers.push(server);
    }
    wait_for(&log, "red_share fired over https", |r| r.is("red_share", "fired")).await;
    let token = std::fs::read_to_string(distrusting.path().join(faccia::analysts::tokens::TOKEN_FILE)).unwrap().trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let rows = query(&servers[1], &token, "SELECT attempt, status, error FROM alert_deliveries ORDER BY attempt").await;
        if rows.as_array().unwrap().len() == 2 {
            break rows;
        }
        assert!(Instant::now() < deadline, "the distrusting server did not try twice: {rows}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for attempt in failed.as_array().unwrap() {
        assert!(attempt["status"].is_null(), "{failed}");
        assert!(attempt["error"].as_str().unwrap().to_lowercase().contains("certificate"), "{failed}");
    }
    let seen = log.lock().unwrap().clone();
    // The receiver's first answer is a 500, so the trusting server's event is taken at its second attempt.
    assert_eq!(seen.len(), 2, "only the trusting server's POSTs reached the receiver: {seen:?}");
    for request in &seen {
        assert_eq!(request.headers.get("x-faccia-signature"), Some(&faccia::alerts::webhook::sign(SECRET.as_bytes(), &request.body)));
    }
    for server in servers {
        server.stop().await;
    }
}
