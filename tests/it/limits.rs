//! One test per connection and rate limit, each on a server with that limit made small. (The
//! frame, batch and timestamp limits are in `hostile`, and the byte budgets in its slow-sender
//! test.)

use std::time::Duration;

use faccia::config::Config;
use faccia::ingest::misuse::MisuseRules;
use faccia::limits::Limits;
use faccia::server::Server;
use faccia::terminal::client::{ClientError, Session, Terminal, batch_frame};
use faccia::wire::{ErrorCode, FrameHeader, FrameKind, Status};
use futures::FutureExt;

use crate::common::*;

/// Whether a connection attempt was refused before its handshake (QUIC CONNECTION_REFUSED).
fn refused_before_handshake(result: &Result<Session, ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Connection(quinn::ConnectionError::ConnectionClosed(close)))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

async fn connect(server: &Server, credential: &faccia::registry::Credential) -> Result<Session, ClientError> {
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    Session::connect(&endpoint, &target(server), credential).await
}

#[tokio::test]
async fn streams_per_connection_max_streams_are_open_at_once_and_the_next_waits() {
    // Proves: a connection gets streams_per_connection_max streams at once; the next one is
    // granted (QUIC flow control, no error) as soon as one of them is answered.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start_with_limits(dir.path(), Limits { streams_per_connection_max: 4, ..Limits::default() }).await;
    let session = session(&server, &credential).await;
    let now = faccia::clock::now_ms();
    let mut open = Vec::new();
    for seq in 1..=4u64 {
        let (mut send, recv) = session.connection.open_bi().await.unwrap();
        send.write_all(&batch_frame(seq, AGLIE, &human_votes(now - 3_600_000 + seq as i64 * 60_000, 2))).await.unwrap();
        open.push((send, recv));
    }
    assert!(session.connection.open_bi().now_or_never().is_none(), "a fifth stream is not granted while four are open");
    let (mut send, mut recv) = open.remove(0);
    send.finish().unwrap();
    assert_eq!(batch_reply(&recv.read_to_end(4096).await.unwrap()).status, Status::Stored as u8);
    let fifth = tokio::time::timeout(Duration::from_secs(10), session.connection.open_bi()).await;
    assert!(matches!(fifth, Ok(Ok(_))), "the fifth stream is granted once one is answered");
    for (mut send, mut recv) in open {
        send.finish().unwrap();
        assert_eq!(batch_reply(&recv.read_to_end(4096).await.unwrap()).status, Status::Stored as u8);
    }
    server.stop().await;
}

#[tokio::test]
async fn connections_max_refuses_before_the_handshake_and_frees_slots_on_close() {
    // Proves: past connections_max a new connection is refused before its handshake, as a
    // transient refusal (the terminal retries), and is let in once a connection closes.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start_with_limits(dir.path(), Limits { connections_max: 2, ..Limits::default() }).await;
    let first = connect(&server, &credential).await.unwrap();
    let _second = connect(&server, &credential).await.unwrap();
    let third = connect(&server, &credential).await;
    assert!(refused_before_handshake(&third), "expected CONNECTION_REFUSED, got {:?}", third.as_ref().err());
    assert!(!third.err().unwrap().is_final(), "a refused connection is retried later");
    first.connection.close(0u32.into(), b"bye");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while connect(&server, &credential).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the closed connection's slot was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let label = faccia::metrics::LimitLabel { limit: "connections_max" };
    assert!(server.engine.metrics.connections_not_admitted.get_or_create(&label).get() >= 1);
    server.stop().await;
}

#[tokio::test]
async fn handshakes_past_the_budget_are_refused_and_terminals_back_off_until_served() {
    // Proves: past handshake_burst (refilled at handshakes_per_second) and a full handshake
    // queue (HANDSHAKE_QUEUE_WAIT_MAX of the budget), new connections are refused before their
    // handshake or asked for a QUIC Retry, and a terminal that backs off gets in and delivers
    // its votes.
    let limits = Limits { handshakes_per_second: 1, handshake_burst: 2, ..Limits::default() };
    let dir = tempfile::tempdir().unwrap();
    let credentials = add(dir.path(), AGLIE, 2);
    let server = start_with_limits(dir.path(), limits).await;
    let started = tokio::time::Instant::now();
    let attempts = (0..8).map(|_| connect(&server, &credentials[0]));
    let results = futures::future::join_all(attempts).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count() as u64;
    assert!(results.iter().all(|r| r.is_ok() || refused_before_handshake(r)), "only CONNECTION_REFUSED refusals");
    assert!(admitted <= 2 + started.elapsed().as_secs() + 1, "{admitted} handshakes within the budget");
    assert!(admitted < 8, "the budget refused some of 8 simultaneous handshakes");
    let metrics = &server.engine.metrics;
    let label = faccia::metrics::LimitLabel { limit: "handshakes_per_second" };
    assert!(metrics.connections_not_admitted.get_or_create(&label).get() >= 1);
    assert!(metrics.connections_retried.get() >= 1, "unvalidated clients were asked for a Retry first");

    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let mut terminal = Terminal::new(credentials[1].clone(), endpoint, target(&server), 2);
    terminal.enqueue(&human_votes(faccia::clock::now_ms() - 600_000, 5)).unwrap();
    assert_eq!(deliver(&mut terminal).await.0, 5, "the terminal backed off and got in");
    server.stop().await;
}

#[tokio::test]
async fn a_storm_past_the_handshake_budget_waits_its_turn_instead_of_being_refused() {
    // Proves: validated attempts past the handshake budget wait in the server's queue and are
    // accepted at its pace, in one attempt each (no refusal, no backoff), within
    // HANDSHAKE_QUEUE_WAIT_MAX. Before the queue, 25 of these 30 attempts were refused.
    let limits = Limits { handshakes_per_second: 20, handshake_burst: 5, ..Limits::default() };
    let dir = tempfile::tempdir().unwrap();
    let credentials = add(dir.path(), AGLIE, 30);
    let server = start_with_limits(dir.path(), limits).await;
    let started = tokio::time::Instant::now();
    let results = futures::future::join_all(credentials.iter().map(|c| connect(&server, c))).await;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).map(ToString::to_string).collect();
    assert!(refused.is_empty(), "every attempt waited its turn: {refused:?}");
    assert!(started.elapsed() >= Duration::from_millis(1_000), "at 20 a second past a burst of 5: {:?}", started.elapsed());
    let metrics = &server.engine.metrics;
    assert!(metrics.handshakes_queued.get() >= 20, "queued: {}", metrics.handshakes_queued.get());
    let label = faccia::metrics::LimitLabel { limit: "handshakes_per_second" };
    assert_eq!(metrics.connections_not_admitted.get_or_create(&label).get(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_without_a_hello_is_closed_after_hello_timeout_ms() {
    // Proves: a client that completes the handshake but never says who it is is closed with
    // `timeout` once hello_timeout_ms has passed.
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_limits(dir.path(), Limits { hello_timeout_ms: 300, ..Limits::default() }).await;
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let target = target(&server);
    let connection = endpoint.connect_with(target.client_config, target.addr, &target.server_name).unwrap().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), connection.closed()).await.unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(close.error_code.into_inner(), ErrorCode::Timeout as u64),
        other => panic!("expected a timeout close, got {other}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_idle_timeout_ms() {
    // Proves: a connection without traffic (no keep-alives within the limit) is closed by the
    // QUIC idle timeout the server sets.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start_with_limits(dir.path(), Limits { idle_timeout_ms: 500, ..Limits::default() }).await;
    let session = session(&server, &credential).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), session.connection.closed()).await.unwrap();
    assert!(matches!(closed, quinn::ConnectionError::TimedOut), "expected the idle timeout, got {closed}");
    server.stop().await;
}

#[tokio::test]
async fn a_frame_not_complete_within_frame_timeout_ms_is_answered_timeout() {
    // Proves: a stream that sends part of a frame and stalls is answered `timeout`, naming the
    // limit, and the connection goes on serving.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start_with_limits(dir.path(), Limits { frame_timeout_ms: 300, ..Limits::default() }).await;
    let session = session(&server, &credential).await;
    let (mut send, mut recv) = session.connection.open_bi().await.unwrap();
    send.write_all(&FrameHeader { kind: FrameKind::Batch, payload_bytes: 500 }.encode()).await.unwrap();
    let reply = batch_reply(&tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(4096)).await.unwrap().unwrap());
    assert_eq!((reply.status, reply.code), (Status::Rejected as u8, ErrorCode::Timeout as u16));
    assert!(reply.message_text().contains("frame_timeout_ms"), "{}", reply.message_text());
    let ok = session.send_frame(&batch_frame(1, AGLIE, &human_votes(faccia::clock::now_ms() - 60_000, 2))).await.unwrap();
    assert_eq!(ok.status, Status::Stored as u8);
    server.stop().await;
}

#[tokio::test]
async fn votes_past_votes_per_terminal_per_minute_max_are_retried_later() {
    // Proves: a terminal past its vote budget is answered "retry later" (`rate_limited`, naming
    // the limit), nothing of that batch is stored, and other terminals are not affected.
    let limits = Limits { votes_per_terminal_per_minute_max: 100, batch_votes_max: 50, ..Limits::default() };
    let dir = tempfile::tempdir().unwrap();
    let credentials = add(dir.path(), AGLIE, 2);
    let server = start_with_limits(dir.path(), limits).await;
    let (busy, other) = (session(&server, &credentials[0]).await, session(&server, &credentials[1]).await);
    let batch = |seq: u64| batch_frame(seq, AGLIE, &human_votes(faccia::clock::now_ms() - 3_600_000 + seq as i64 * 600_000, 40));
    assert_eq!(busy.send_frame(&batch(1)).await.unwrap().status, Status::Stored as u8);
    assert_eq!(busy.send_frame(&batch(2)).await.unwrap().status, Status::Stored as u8);
    let limited = busy.send_frame(&batch(3)).await.unwrap();
    assert_eq!((limited.status, limited.code), (Status::RetryLater as u8, ErrorCode::RateLimited as u16));
    assert!(limited.message_text().contains("votes_per_terminal_per_minute_max = 100"), "{}", limited.message_text());
    assert!(ErrorCode::RateLimited.is_transient(), "terminals keep the batch and resend it");
    assert_eq!(other.send_frame(&batch(1)).await.unwrap().status, Status::Stored as u8, "another terminal has its own budget");
    server.stop().await;
    let per_terminal = |id: u32| format!("SELECT count(*) FROM votes WHERE terminal = {id}");
    assert_eq!(count(dir.path(), &per_terminal(credentials[0].id)).await, 80);
    assert_eq!(count(dir.path(), &per_terminal(credentials[1].id)).await, 40);
}

#[tokio::test]
async fn a_server_with_limits_that_cannot_work_together_does_not_start() {
    // Proves: the configuration is checked before anything is opened, and the error names the
    // table, the field and the values allowed.
    let dir = tempfile::tempdir().unwrap();
    let config = Config { limits: Limits { batch_votes_max: 100_000, ..Limits::default() }, ..loopback_config() };
    let error = Server::start(dir.path().join("data"), config).await.err().expect("refused");
    assert!(error.to_string().contains("[limits] batch_votes_max = 100000"), "{error}");
    assert!(!dir.path().join("data").exists(), "nothing was created");
    let config = Config { misuse: MisuseRules { debounce_ms: -1, ..MisuseRules::default() }, ..loopback_config() };
    let error = Server::start(dir.path().join("data"), config).await.err().expect("refused");
    assert!(error.to_string().contains("[misuse] debounce_ms = -1"), "{error}");
}
