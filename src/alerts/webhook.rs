//! Webhook delivery: each event is POSTed as JSON to `[alerts] webhook_url` (http or https;
//! https trusts the system's roots and `webhook_ca`), signed with
//! HMAC-SHA256 (RFC 2104, SHA-256 per FIPS 180-4; test vectors from RFC 4231) over the exact
//! body bytes, retried with exponential backoff up to `webhook_attempts_max` attempts, every
//! attempt recorded in `deliveries.jsonl`. Deliveries run in their own tasks fed by a bounded
//! queue, so a slow or dead receiver never holds the evaluation up.
//!
//! Headers: `Content-Type: application/json`, `X-Faccia-Event: fired|resolved`,
//! `X-Faccia-Timestamp: <unix seconds of the attempt>`,
//! `X-Faccia-Signature: sha256=<hex of HMAC-SHA256(secret, body)>` (`schemas/alerts.md`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{Semaphore, mpsc};

use crate::alerts::store::{self, Delivery, Event, Log, StoreError};
use crate::clock::Clock;
use crate::metrics::Metrics;

/// The most a retry waits, in milliseconds (a minute): beyond it backoff stops growing.
pub const WEBHOOK_BACKOFF_MAX_MS: u64 = 60_000;

/// The signature header: `sha256=` and the HMAC-SHA256 of the body, lowercase hex.
pub const SIGNATURE_HEADER: &str = "X-Faccia-Signature";
/// The attempt's time header: seconds since the Unix epoch (receivers may refuse old ones).
pub const TIMESTAMP_HEADER: &str = "X-Faccia-Timestamp";
/// The event header: `fired` or `resolved`.
pub const EVENT_HEADER: &str = "X-Faccia-Event";
/// The generated secret's file, in `DATA_DIR/alerts/` (mode 0600).
pub const SECRET_FILE: &str = "webhook-secret";
/// Events waiting for delivery at most; beyond, an event is logged as failed at once (a
/// receiver down for long enough to fill it is not helped by keeping more in memory).
pub const QUEUE_EVENTS_MAX: usize = 1_024;
/// Events being delivered (or waiting to retry) at once.
pub const CONCURRENT_DELIVERIES_MAX: usize = 16;

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()))
}

/// Checks a webhook URL: `http://host[:port]/path` or `https://host[:port]/path`.
///
/// # Errors
/// What is wrong with it, in words (the configuration check names the field).
pub fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("a URL ({e})"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err("an http:// or https://host[:port]/path URL".into());
    }
    Ok(uri)
}

/// The signing secret: `configured`, else `DATA_DIR/alerts/webhook-secret`, generated (32 random
/// bytes as hex, mode 0600) when it does not exist.
///
/// # Errors
/// When the file cannot be read or created.
pub fn secret(data_dir: &Path, configured: Option<&str>) -> Result<Vec<u8>, StoreError> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join(store::ALERTS_DIR).join(SECRET_FILE);
    let io = |source| StoreError::Io { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io(source)),
    }
    crate::fsutil::create_dir_durable(&data_dir.join(store::ALERTS_DIR)).map_err(io)?;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let secret = hex::encode(bytes);
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).map_err(io)?;
    file.write_all(format!("{secret}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    crate::fsutil::sync_dir(&data_dir.join(store::ALERTS_DIR)).map_err(io)?;
    tracing::info!(path = %path.display(), "webhook secret generated: give it to the receiver to check signatures");
    Ok(secret.into_bytes())
}

/// Where and how events are delivered.
#[derive(Debug, Clone)]
pub struct Target {
    /// The receiver (`parse_url`).
    pub url: Uri,
    /// The HMAC key.
    pub secret: Vec<u8>,
    /// Attempts per event, the first included.
    pub attempts_max: u32,
    /// Wait before the first retry, in ms; doubled at each further one, capped at `WEBHOOK_BACKOFF_MAX_MS`.
    pub backoff_ms: u64,
    /// Time allowed for one attempt, in ms.
    pub timeout_ms: u64,
    /// TLS for an `https` URL (`transport::tls::https_client_config`); unused over http.
    pub tls: rustls::ClientConfig,
}

impl Target {
    /// The wait after failed attempt `attempt` (from 1): `backoff_ms · 2^(attempt − 1)`, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(self.backoff_ms.saturating_mul(factor).min(WEBHOOK_BACKOFF_MAX_MS))
    }
}

/// The sending side of the delivery queue; dropping it ends the dispatcher once the queue is empty.
#[derive(Debug)]
pub struct Webhook {
    queue: mpsc::Sender<Event>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    target: Target,
    log: Mutex<Log>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Webhook {
    /// Starts the dispatcher task; attempts are appended to `deliveries` (`DATA_DIR/alerts/deliveries.jsonl`).
    pub fn start(target: Target, deliveries: Log, metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Webhook {
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(target.tls.clone()).https_or_http().enable_http1().build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let shared = Arc::new(Shared { target, log: Mutex::new(deliveries), metrics, clock, client });
        let (queue, events) = mpsc::channel(QUEUE_EVENTS_MAX);
        tokio::spawn(dispatch(events, Arc::clone(&shared)));
        Webhook { queue, shared }
    }

    /// Queues `event` for delivery without waiting; a full queue records it as failed.
    pub fn send(&self, event: Event) {
        if let Err(mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event)) = self.queue.try_send(event) {
            let error = format!("not sent: {QUEUE_EVENTS_MAX} events already wait for delivery (QUEUE_EVENTS_MAX)");
            tracing::warn!(alert = %event.alert_id, "{error}");
            self.shared.record(&event, 0, None, Some(error));
            self.shared.metrics.alert_delivery("failed");
        }
    }
}

async fn dispatch(mut events: mpsc::Receiver<Event>, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_DELIVERIES_MAX));
    while let Some(event) = events.recv().await {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            shared.deliver(event).await;
            drop(permit);
        });
    }
}

impl Shared {
    fn record(&self, event: &Event, attempt: u32, status: Option<u16>, error: Option<String>) -> Delivery {
        let delivery =
            Delivery { alert_id: event.alert_id.clone(), event: event.event, attempt, at_ms: self.clock.now_ms(), status, error };
        let mut log = self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = log.append_durable(&delivery) {
            tracing::warn!(error = %crate::error_chain(&error), "webhook delivery not logged");
        }
        delivery
    }

    async fn deliver(&self, event: Event) {
        let body = Bytes::from(serde_json::to_vec(&event).expect("events serialise"));
        let signature = sign(&self.target.secret, &body);
        for attempt in 1..=self.target.attempts_max {
            let (status, error) = self.post(&event, &body, &signature).await;
            let delivery = self.record(&event, attempt, status, error);
            if delivery.succeeded() {
                self.metrics.alert_delivery("ok");
                return;
            }
            if attempt == self.target.attempts_max {
                self.metrics.alert_delivery("failed");
                tracing::warn!(alert = %event.alert_id, attempts = attempt, error = ?delivery.error, "webhook delivery given up");
                return;
            }
            self.metrics.alert_delivery("retry");
            tokio::time::sleep(self.target.backoff(attempt)).await;
        }
    }

    /// One attempt: the receiver's status, and an error unless it is 2xx.
    async fn post(&self, event: &Event, body: &Bytes, signature: &str) -> (Option<u16>, Option<String>) {
        let request = hyper::Request::post(self.target.url.clone())
            .header("content-type", "application/json")
            .header("user-agent", concat!("faccia/", env!("CARGO_PKG_VERSION")))
            .header(EVENT_HEADER, event.event.name())
            .header(TIMESTAMP_HEADER, (self.clock.now_ms() / 1_000).to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(body.clone()))
            .expect("a valid request");
        let timeout = Duration::from_millis(self.target.timeout_ms);
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => (None, Some(format!("no answer within {} ms (webhook_timeout_ms)", self.target.timeout_ms))),
            Ok(Err(error)) => (None, Some(crate::error_chain(&error))),
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let error = (!response.status().is_success()).then(|| format!("HTTP {status}"));
                (Some(status), error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231() {
        // Proves: the signature is HMAC-SHA256 as RFC 4231 defines it (test cases 1 and 2).
        assert_eq!(sign(&[0x0b; 20], b"Hi There"), "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let target = Target {
            url: parse_url("http://127.0.0.1:9/x").unwrap(),
            secret: vec![],
            attempts_max: 8,
            backoff_ms: 1_000,
            timeout_ms: 1_000,
            tls: crate::transport::tls::https_client_config(rustls::RootCertStore::empty()).unwrap(),
        };
        let waits: Vec<u64> = (1..=8).map(|a| target.backoff(a).as_millis() as u64).collect();
        assert_eq!(waits, [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]);
        assert!(parse_url("https://example.org/hook").is_ok());
        assert!(parse_url("ftp://example.org/hook").unwrap_err().contains("https://"));
    }

    #[test]
    fn a_generated_secret_is_kept_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = secret(dir.path(), None).unwrap();
        assert_eq!(first.len(), 64);
        let path = dir.path().join(store::ALERTS_DIR).join(SECRET_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(secret(dir.path(), None).unwrap(), first);
        assert_eq!(secret(dir.path(), Some("configured secret")).unwrap(), b"configured secret");
    }
}
