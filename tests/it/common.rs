//! Helpers shared by the integration tests: a server on a temporary directory, registered
//! terminals, and SQL counts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use faccia::config::Config;
use faccia::model::{Channel, Face, IstatCode, Reason};
use faccia::registry::{self, Credential};
use faccia::server::Server;
use faccia::terminal::client::{Event, ServerTarget, Session, Terminal, TerminalVote};

/// Agliè (TO), 2,644 inhabitants.
pub(crate) const AGLIE: IstatCode = IstatCode(1001);
/// Ala di Stura (TO), 462 inhabitants.
pub(crate) const ALA_DI_STURA: IstatCode = IstatCode(1003);

/// A configuration listening on ephemeral loopback ports.
pub(crate) fn loopback_config() -> Config {
    let any = "127.0.0.1:0".parse().unwrap();
    Config { listen: any, flight_listen: Some(any), http_listen: Some(any), ..Config::default() }
}

pub(crate) async fn start(dir: &Path) -> Server {
    Server::start(dir.to_path_buf(), loopback_config()).await.expect("server starts")
}

/// A server on loopback with `limits`.
pub(crate) async fn start_with_limits(dir: &Path, limits: faccia::limits::Limits) -> Server {
    Server::start(dir.to_path_buf(), Config { limits, ..loopback_config() }).await.expect("server starts")
}

pub(crate) fn target(server: &Server) -> ServerTarget {
    ServerTarget::new(server.ingest_addr, "localhost", server.ca_path.as_ref().unwrap()).unwrap()
}

pub(crate) fn add(dir: &Path, municipality: IstatCode, count: u32) -> Vec<Credential> {
    registry::add_terminals(dir, municipality, count, "test").unwrap()
}

/// `count` distinct votes starting at `at_ms`, one millisecond apart.
pub(crate) fn votes(at_ms: i64, count: usize) -> Vec<TerminalVote> {
    (0..count)
        .map(|i| {
            let face = Face::ALL[i % 3];
            TerminalVote {
                at_ms: at_ms + i as i64,
                service: (i % 15) as u16 + 1,
                face,
                channel: Channel::ALL[i % 3],
                reason: (face == Face::Negative).then_some(Reason::ALL[i % 4]),
            }
        })
        .collect()
}

/// Time between two citizens' votes in `human_votes`: longer than every misuse rule's window.
pub(crate) const CITIZEN_GAP_MS: i64 = 7_000;

/// `count` votes as people cast them, `CITIZEN_GAP_MS` apart from `at_ms`, each different from
/// the one before: no misuse rule flags them.
pub(crate) fn human_votes(at_ms: i64, count: usize) -> Vec<TerminalVote> {
    votes(0, count).into_iter().enumerate().map(|(i, v)| TerminalVote { at_ms: at_ms + i as i64 * CITIZEN_GAP_MS, ..v }).collect()
}

/// A copy of `bytes` aligned for in-place reading of archives.
pub(crate) fn aligned(bytes: &[u8]) -> faccia::wire::ArchiveBuf {
    let mut buf = faccia::wire::ArchiveBuf::with_capacity(bytes.len());
    buf.extend_from_slice(bytes);
    buf
}

/// The batch reply in `frame`, the bytes a stream answered (tests that speak raw QUIC).
pub(crate) fn batch_reply(frame: &[u8]) -> faccia::wire::BatchReplyV1 {
    let (_, payload) = faccia::wire::decode_frame(frame, 4096).expect("a reply frame");
    faccia::wire::read_batch_reply(&aligned(payload)).expect("a batch reply")
}

pub(crate) async fn session(server: &Server, credential: &Credential) -> Session {
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    Session::connect(&endpoint, &target(server), credential).await.expect("terminal connects")
}

/// Drives a terminal until its outbox is empty; returns (votes acknowledged, duplicates).
pub(crate) async fn deliver(terminal: &mut Terminal) -> (usize, usize) {
    let (mut votes, mut duplicates) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while terminal.unacknowledged() > 0 {
        let event = tokio::time::timeout_at(deadline, terminal.next_event()).await.expect("delivery within 30 s");
        match event {
            Event::Acknowledged { votes: v, duplicate, .. } => {
                votes += v;
                duplicates += usize::from(duplicate);
            }
            Event::Fatal(error) => panic!("terminal refused: {error}"),
            Event::Rejected { rejection, .. } => panic!("batch rejected: {rejection}"),
            _ => {}
        }
    }
    (votes, duplicates)
}

pub(crate) async fn count(dir: &Path, sql: &str) -> i64 {
    let ctx = faccia::query::context(dir).await.unwrap();
    let batches = faccia::query::run(&ctx, sql).await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

pub(crate) fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.join("votes")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Whether this run is CI's (`CI` set, and not to `false` or `0`): there a test must run its
/// real part or fail.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A test that cannot set up its real part (a mount, a tool) calls this and returns. In CI it
/// fails, naming what was missing; elsewhere it says loudly, on stderr, that it did not run.
pub(crate) fn cannot_run(test: &str, why: &str) {
    assert!(!in_ci(), "{test} could not run its real part in CI: {why}");
    // Written to the stderr handle itself, not with eprintln!, which the test harness captures
    // and hides for a test that passes: a skip must be seen.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {test}: {why} (outside CI only; in CI this fails)\n").as_bytes(),
    );
}
