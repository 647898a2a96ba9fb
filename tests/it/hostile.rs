//! Bad input: each kind gets its error code, and the server keeps serving honest terminals.

use faccia::registry::{Credential, Secret};
use faccia::terminal::client::{ClientError, ServerTarget, Session, Terminal, batch_frame};
use faccia::wire::{self, BatchV1, ErrorCode, FrameHeader, FrameKind, Status, VoteV1};

use crate::common::*;

fn rejected(reply: &wire::BatchReplyV1) -> ErrorCode {
    assert_eq!(reply.status, Status::Rejected as u8, "expected a rejection, got {reply:?}");
    ErrorCode::from_u16(reply.code).unwrap()
}

fn raw_batch(seq: u64, municipality: u32, base_ms: i64, votes: Vec<VoteV1>) -> Vec<u8> {
    wire::frame(FrameKind::Batch, &wire::encode_batch(&BatchV1 { seq, base_ms, municipality, votes }))
}

fn good_vote() -> VoteV1 {
    VoteV1 { offset_ms: 0, service: 1, face: 2, channel: 0, reason: 0 }
}

async fn refused(server: &faccia::server::Server, credential: &Credential) -> ErrorCode {
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    match Session::connect(&endpoint, &target(server), credential).await {
        Err(ClientError::Refused(rejection)) => rejection.code,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a session"),
    }
}

#[tokio::test]
async fn every_bad_input_gets_its_code_while_honest_terminals_are_served() {
    // Proves: malformed, oversized, out-of-range, wrongly addressed and unauthenticated input is
    // refused with its own error code, and an honest terminal sending meanwhile loses nothing.
    let dir = tempfile::tempdir().unwrap();
    let honest = add(dir.path(), ALA_DI_STURA, 1).remove(0);
    let hostile = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let now = faccia::clock::now_ms();

    let honest_target = target(&server);
    let honest_endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let honest_task = tokio::spawn(async move {
        let mut terminal = Terminal::new(honest, honest_endpoint, honest_target, 4);
        let mut sent = 0;
        for b in 0..40 {
            terminal.enqueue(&votes(now - 30_000 + b * 50, 10)).unwrap();
            sent += 10;
            if b % 8 == 7 {
                deliver(&mut terminal).await;
            }
        }
        let (_, _) = deliver(&mut terminal).await;
        sent
    });

    // Unknown terminal, wrong secret.
    let unknown = Credential { id: 9999, ..hostile.clone() };
    assert_eq!(refused(&server, &unknown).await, ErrorCode::UnknownTerminal);
    let wrong_secret = Credential { secret: Secret([7; 32]), ..hostile.clone() };
    assert_eq!(refused(&server, &wrong_secret).await, ErrorCode::BadCredential);

    let session = session(&server, &hostile).await;
    let send = |frame: Vec<u8>| {
        let session = session.clone();
        async move { session.send_frame(&frame).await.expect("a reply") }
    };
    // Malformed archive: random bytes behind a valid header.
    let garbage: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert_eq!(rejected(&send(wire::frame(FrameKind::Batch, &garbage)).await), ErrorCode::MalformedArchive);
    // Bad magic.
    let mut bad_magic = raw_batch(1, AGLIE.0, now, vec![good_vote()]);
    bad_magic[0] = b'X';
    assert_eq!(rejected(&send(bad_magic).await), ErrorCode::MalformedFrame);
    // Votes for another municipality.
    assert_eq!(rejected(&send(raw_batch(1, ALA_DI_STURA.0, now, vec![good_vote()])).await), ErrorCode::WrongMunicipality);
    // Oversized frame: refused from its header.
    let mut oversized = FrameHeader { kind: FrameKind::Batch, payload_bytes: 1 << 20 }.encode().to_vec();
    oversized.extend(std::iter::repeat_n(0u8, 100_000));
    let reply = send(oversized).await;
    assert_eq!(rejected(&reply), ErrorCode::FrameTooLarge);
    assert!(reply.message_text().contains("frame_bytes_max"), "{}", reply.message_text());
    // Too many votes in one batch.
    let reply = send(raw_batch(1, AGLIE.0, now, vec![good_vote(); 4097])).await;
    assert_eq!(rejected(&reply), ErrorCode::TooManyVotes);
    assert!(reply.message_text().contains("batch_votes_max"), "{}", reply.message_text());
    // Out-of-range enum value.
    let reply = send(raw_batch(1, AGLIE.0, now, vec![VoteV1 { face: 3, ..good_vote() }])).await;
    assert_eq!(rejected(&reply), ErrorCode::FieldOutOfRange);
    assert!(reply.message_text().contains("face"), "{}", reply.message_text());
    // A time far in the future or far in the past is no longer a refusal: the vote is stored as
    // a clock fault (`it::clock`).
    // Empty batch and the reserved sequence number 0.
    assert_eq!(rejected(&send(raw_batch(1, AGLIE.0, now, vec![])).await), ErrorCode::EmptyBatch);
    assert_eq!(rejected(&send(raw_batch(0, AGLIE.0, now, vec![good_vote()])).await), ErrorCode::BadSequence);
    // A hello where a batch belongs.
    let hello = wire::encode_hello(&wire::HelloV1 { terminal: 1, secret: [0; 32], client: Vec::new() });
    assert_eq!(rejected(&send(hello).await), ErrorCode::MalformedFrame);
    // After all that, the same connection still stores a valid batch.
    let ok = send(batch_frame(1, AGLIE, &votes(now - 1000, 5))).await;
    assert_eq!(ok.status, Status::Stored as u8);

    let honest_sent = honest_task.await.unwrap();
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes WHERE municipality = 1003").await, honest_sent as i64);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes WHERE municipality = 1001").await, 5);
}

#[tokio::test]
async fn wrong_alpn_fails_the_handshake() {
    // Proves: a client that does not speak faccia/1 is refused during the TLS handshake.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let tls = faccia::transport::tls::client_config_with_alpn(server.ca_path.as_ref().unwrap(), b"h3").unwrap();
    let target = ServerTarget::with_tls(server.ingest_addr, "localhost", tls).unwrap();
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let error = match Session::connect(&endpoint, &target, &credential).await {
        Err(error) => error,
        Ok(_) => panic!("a wrong ALPN must not connect"),
    };
    let text = faccia::error_chain(&error);
    assert!(text.contains("no_application_protocol") || text.contains("120"), "{text}");
    assert!(error.is_final(), "a terminal must not retry a protocol mismatch: {text}");
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_terminal_is_refused() {
    // Proves: revocation in the terminal directory reaches a running server.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    session(&server, &credential).await;
    faccia::registry::revoke_terminal(dir.path(), credential.id).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
        match Session::connect(&endpoint, &target(&server), &credential).await {
            Err(ClientError::Refused(r)) => {
                assert_eq!(r.code, ErrorCode::TerminalRevoked);
                break;
            }
            _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            _ => panic!("revocation not applied within 10 s"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_terminal_registered_while_the_server_runs_is_let_in_at_its_first_hello() {
    // Proves: an id the server does not know makes it look at the terminal directory before
    // refusing, so a terminal added a moment ago is not refused for good (`unknown_terminal` is
    // final for the terminal library) while the periodic reload has not come yet. Before, a
    // terminal added and started at once was refused.
    let dir = tempfile::tempdir().unwrap();
    let first = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    session(&server, &first).await;
    for _ in 0..5 {
        let added = add(dir.path(), AGLIE, 1).remove(0);
        session(&server, &added).await;
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The hostile-client suite: each test runs honest terminals beside the attack and checks that
// every honest vote is stored, every hostile input is refused with its code, and the server's
// buffered bytes stay under `buffered_bytes_max`.

use std::time::Duration;

use faccia::limits::Limits;
use faccia::server::Server;
use faccia::wire::{BatchRules, BatchView};
use rand::{Rng, SeedableRng};

/// A seed from `FACCIA_TEST_SEED` or a fresh one, printed so that a failure can be replayed.
fn seed() -> u64 {
    let seed = std::env::var("FACCIA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} (FACCIA_TEST_SEED={seed} replays it)");
    seed
}

/// Honest terminals sending people's votes, `batches` batches of 10 each, in a background task
/// that returns how many votes were acknowledged (it fails the test on any refusal).
fn honest_fleet(server: &Server, credentials: Vec<Credential>, batches: i64) -> tokio::task::JoinHandle<usize> {
    let (addr, target) = (server.ingest_addr, target(server));
    tokio::spawn(async move {
        let endpoint = faccia::terminal::client::client_endpoint(addr).unwrap();
        let now = faccia::clock::now_ms();
        let mut terminals: Vec<Terminal> = credentials.into_iter().map(|c| Terminal::new(c, endpoint.clone(), target.clone(), 4)).collect();
        let mut acknowledged = 0;
        for b in 0..batches {
            for terminal in &mut terminals {
                terminal.enqueue(&human_votes(now - 3_600_000 + b * 10 * CITIZEN_GAP_MS, 10)).unwrap();
                acknowledged += deliver(terminal).await.0;
            }
        }
        acknowledged
    })
}

/// Checks the byte budget after a test: never above its limit, nothing left charged.
fn assert_memory_within(server: &Server, limits: &Limits) -> i64 {
    let metrics = &server.engine.metrics;
    let peak = metrics.buffered_request_bytes_peak.get();
    assert!(peak > 0 && peak <= limits.buffered_bytes_max as i64, "peak buffered bytes {peak}, limit {}", limits.buffered_bytes_max);
    assert_eq!(metrics.buffered_request_bytes.get(), 0, "every payload gave its bytes back");
    peak
}

/// A QUIC connection to the server that has not sent a hello.
async fn raw_connection(server: &Server, endpoint: &quinn::Endpoint) -> quinn::Connection {
    let target = target(server);
    endpoint.connect_with(target.client_config, target.addr, &target.server_name).unwrap().await.unwrap()
}

/// Sends `bytes` as the first stream of a connection and reads the hello reply.
async fn first_stream(connection: &quinn::Connection, bytes: &[u8]) -> wire::HelloReplyV1 {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let reply = recv.read_to_end(4096).await.unwrap();
    let (header, payload) = wire::decode_frame(&reply, 4096).unwrap();
    assert_eq!(header.kind, FrameKind::HelloReply);
    wire::read_hello_reply(&aligned(payload)).unwrap()
}

/// The QUIC application close code a connection ended with, and its reason.
async fn close_code(connection: &quinn::Connection) -> (u64, String) {
    match tokio::time::timeout(Duration::from_secs(10), connection.closed()).await.expect("closed within 10 s") {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (close.error_code.into_inner(), String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

/// What the server must answer to `frame` from a terminal of `AGLIE`, by the same checks in
/// process: `Ok(votes)` if it must be stored, else the code of its rejection.
fn expected_outcome(frame: &[u8], now_ms: i64) -> Result<usize, ErrorCode> {
    let (header, payload) = wire::decode_frame(frame, Limits::default().frame_bytes_max).map_err(|r| r.code)?;
    if header.kind != FrameKind::Batch {
        return Err(ErrorCode::MalformedFrame);
    }
    let rules = BatchRules::new(&Limits::default(), AGLIE, now_ms, 15);
    BatchView::validate(&aligned(payload), &rules).map(|view| view.len()).map_err(|r| r.code)
}

/// One hostile frame from a seeded generator, each with a sequence number of its own.
fn hostile_frame(rng: &mut rand::rngs::StdRng, seq: u64, now_ms: i64) -> Vec<u8> {
    let valid = batch_frame(seq, AGLIE, &human_votes(now_ms - 7_200_000, rng.random_range(1..6)));
    let root_seq = valid.len() - 32..valid.len() - 24;
    match rng.random_range(0..5) {
        // Random bytes.
        0 => (0..rng.random_range(0..300)).map(|_| rng.random()).collect(),
        // A valid header and a random payload.
        1 => wire::frame(FrameKind::Batch, &(0..rng.random_range(0..300)).map(|_| rng.random()).collect::<Vec<u8>>()),
        // A valid batch with a few bytes changed (never its sequence number).
        2 => {
            let mut frame = valid;
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(wire::HEADER_BYTES..frame.len());
                if !root_seq.contains(&at) {
                    frame[at] ^= rng.random_range(1..=255u8);
                }
            }
            frame
        }
        // Truncated anywhere, header included.
        3 => valid[..rng.random_range(0..valid.len())].to_vec(),
        // Bytes after the payload.
        _ => [valid.as_slice(), &[0u8; 3]].concat(),
    }
}

#[tokio::test]
async fn random_truncated_and_damaged_frames_are_refused_while_honest_terminals_store_everything() {
    // Proves: random bytes (as a hello and as batches), damaged, truncated and overlong frames
    // each get the code the validator gives them in process, nothing invalid is stored, honest
    // terminals lose nothing, and the byte budget is respected and fully given back.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let dir = tempfile::tempdir().unwrap();
    let honest = add(dir.path(), ALA_DI_STURA, 2);
    let hostile = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let honest_task = honest_fleet(&server, honest, 8);

    // Random bytes where the hello belongs: refused with the header's error, then closed.
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let connection = raw_connection(&server, &endpoint).await;
    let mut garbage: Vec<u8> = (0..64).map(|_| rng.random()).collect();
    garbage[0] = b'X';
    let reply = first_stream(&connection, &garbage).await;
    assert_eq!((reply.status, reply.code), (Status::Rejected as u8, ErrorCode::MalformedFrame as u16));
    assert_eq!(close_code(&connection).await.0, ErrorCode::MalformedFrame as u64);
    // A batch before any hello: not authenticated.
    let connection = raw_connection(&server, &endpoint).await;
    let reply = first_stream(&connection, &batch_frame(1, AGLIE, &human_votes(faccia::clock::now_ms(), 1))).await;
    assert_eq!(reply.code, ErrorCode::NotAuthenticated as u16, "{}", reply.message_text());
    assert_eq!(close_code(&connection).await.0, ErrorCode::NotAuthenticated as u64);

    // On an authenticated connection: 150 hostile frames, each answered as the validator says.
    let session = session(&server, &hostile).await;
    let mut stored = 0;
    for seq in 1..=150 {
        let now = faccia::clock::now_ms();
        let frame = hostile_frame(&mut rng, seq, now);
        let reply = session.send_frame(&frame).await.expect("a reply");
        match expected_outcome(&frame, now) {
            Ok(votes) => {
                assert_eq!(reply.status, Status::Stored as u8, "frame {seq} is valid: {}", reply.message_text());
                stored += votes;
            }
            Err(code) => {
                assert_eq!((reply.status, reply.code), (Status::Rejected as u8, code as u16), "frame {seq}: {}", reply.message_text());
                assert!(!reply.message_text().is_empty());
            }
        }
    }

    let honest_acknowledged = honest_task.await.unwrap();
    assert_eq!(honest_acknowledged, 2 * 8 * 10);
    assert_memory_within(&server, &Limits::default());
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes WHERE municipality = 1003").await, honest_acknowledged as i64);
    assert_eq!(count(dir.path(), &format!("SELECT count(*) FROM votes WHERE terminal = {}", hostile.id)).await, stored as i64);
}

#[tokio::test]
async fn slow_senders_hold_only_their_connections_share_and_time_out() {
    // Proves: streams that announce a large frame and then stall hold at most their
    // connection's share of the byte budget, honest terminals are served meanwhile, and every
    // stalled stream is answered `timeout` after frame_timeout_ms.
    let limits =
        Limits { buffered_bytes_max: 512 * 1024, connection_buffered_bytes_max: 128 * 1024, frame_timeout_ms: 6_000, ..Limits::default() };
    let dir = tempfile::tempdir().unwrap();
    let honest = add(dir.path(), ALA_DI_STURA, 2);
    let hostile = add(dir.path(), AGLIE, 1).remove(0);
    let server = start_with_limits(dir.path(), limits.clone()).await;
    // 4 connections × 8 streams × 64 KiB announced: four times the whole budget.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let session = session(&server, &hostile).await;
        for _ in 0..8 {
            let (mut send, recv) = session.connection.open_bi().await.unwrap();
            send.write_all(&FrameHeader { kind: FrameKind::Batch, payload_bytes: limits.frame_bytes_max }.encode()).await.unwrap();
            send.write_all(&[0u8; 1000]).await.unwrap();
            stalled.push((send, recv));
        }
    }
    // Each connection gets one 64 KiB charge into its 128 KiB share; its other streams wait.
    let share = i64::from(limits.frame_bytes_max) + faccia::limits::REQUEST_OVERHEAD_BYTES as i64;
    let metrics = std::sync::Arc::clone(&server.engine.metrics);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metrics.buffered_request_bytes.get() < 4 * share {
        assert!(tokio::time::Instant::now() < deadline, "the stalled streams were never charged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let honest_acknowledged = honest_fleet(&server, honest, 8).await.unwrap();
    for (_, recv) in &mut stalled {
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(1), recv.read(&mut byte)).await;
        assert!(early.is_err(), "honest terminals were served while every stalled stream was still open");
    }
    for (_, mut recv) in stalled {
        let reply = batch_reply(&tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(4096)).await.unwrap().unwrap());
        assert_eq!((reply.status, reply.code), (Status::Rejected as u8, ErrorCode::Timeout as u16));
        assert!(reply.message_text().contains("frame_timeout_ms"), "{}", reply.message_text());
    }
    let peak = assert_memory_within(&server, &limits);
    assert!(peak >= 4 * share, "the stalled streams held their shares (peak {peak})");
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, honest_acknowledged as i64);
    assert_eq!(honest_acknowledged, 2 * 8 * 10);
}

#[tokio::test]
async fn a_flood_of_connections_from_one_address_is_refused_by_name_while_others_are_served() {
    // Proves: past connections_per_address_max an address's new connections are closed with
    // `too_many_connections` naming the limit, other addresses are served meanwhile, and a slot
    // freed by a closed connection can be used again.
    let limits = Limits { connections_per_address_max: 3, ..Limits::default() };
    let dir = tempfile::tempdir().unwrap();
    let honest = add(dir.path(), ALA_DI_STURA, 2);
    let hostile = add(dir.path(), AGLIE, 1).remove(0);
    let server = start_with_limits(dir.path(), limits).await;
    let honest_task = honest_fleet(&server, honest, 6);
    // Another loopback address: the hostile host is 127.0.0.2, honest terminals 127.0.0.1.
    let flood = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Session::connect(&flood, &target(&server), &hostile).await.expect("within the limit"));
    }
    let flood_target = target(&server);
    let attempts = (0..20).map(|_| Session::connect(&flood, &flood_target, &hostile));
    for attempt in futures::future::join_all(attempts).await {
        match attempt {
            Err(ClientError::Connection(quinn::ConnectionError::ApplicationClosed(close))) => {
                assert_eq!(close.error_code.into_inner(), ErrorCode::TooManyConnections as u64);
                let reason = String::from_utf8_lossy(&close.reason);
                assert!(reason.contains("connections_per_address_max = 3") && reason.contains("127.0.0.2"), "{reason}");
            }
            Err(other) => panic!("expected too_many_connections, got {other}"),
            Ok(_) => panic!("a fourth connection from one address was let in"),
        }
    }
    assert_eq!(honest_task.await.unwrap(), 2 * 6 * 10, "honest terminals on another address were served");
    held.pop().unwrap().connection.close(0u32.into(), b"bye");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        match Session::connect(&flood, &target(&server), &hostile).await {
            Ok(session) => break session,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("the freed slot was not reusable: {error}"),
        }
    };
    let reply = again.send_frame(&batch_frame(1, AGLIE, &human_votes(faccia::clock::now_ms() - 60_000, 3))).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8);
    let label = faccia::metrics::CodeLabel { code: ErrorCode::TooManyConnections.name() };
    // 20, and any attempt of the loop above made before the server saw the close.
    assert!(server.engine.metrics.connections_refused.get_or_create(&label).get() >= 20);
    server.stop().await;
}

#[tokio::test]
async fn a_batch_replayed_on_another_terminals_connection_belongs_to_that_terminal_or_is_refused() {
    // Proves: a batch captured from terminal A and replayed by terminal B is refused when B
    // serves another municipality; replayed by C of A's municipality it is stored as C's own
    // (C's numbering, C's id), and it never touches A's sequence numbers or A's votes.
    let dir = tempfile::tempdir().unwrap();
    let mut aglie = add(dir.path(), AGLIE, 2);
    let (a, c) = (aglie.remove(0), aglie.remove(0));
    let b = add(dir.path(), ALA_DI_STURA, 1).remove(0);
    let honest = add(dir.path(), ALA_DI_STURA, 2);
    let server = start(dir.path()).await;
    let honest_task = honest_fleet(&server, honest.clone(), 4);
    let now = faccia::clock::now_ms();
    let captured = batch_frame(1, AGLIE, &human_votes(now - 600_000, 4));
    let (a_session, b_session, c_session) = (session(&server, &a).await, session(&server, &b).await, session(&server, &c).await);
    assert_eq!(a_session.send_frame(&captured).await.unwrap().status, Status::Stored as u8);
    let replayed = b_session.send_frame(&captured).await.unwrap();
    assert_eq!(rejected(&replayed), ErrorCode::WrongMunicipality);
    assert!(replayed.message_text().contains("001001") && replayed.message_text().contains("001003"), "{}", replayed.message_text());
    assert_eq!(c_session.send_frame(&captured).await.unwrap().status, Status::Stored as u8, "C's own batch 1");
    assert_eq!(c_session.send_frame(&captured).await.unwrap().status, Status::Duplicate as u8);
    assert_eq!(a_session.send_frame(&captured).await.unwrap().status, Status::Duplicate as u8);
    let next = batch_frame(2, AGLIE, &human_votes(now - 300_000, 4));
    assert_eq!(a_session.send_frame(&next).await.unwrap().status, Status::Stored as u8, "A's numbering is its own");
    assert_eq!(honest_task.await.unwrap(), 2 * 4 * 10);
    server.stop().await;
    let per_terminal = |id: u32| format!("SELECT count(*) FROM votes WHERE terminal = {id}");
    assert_eq!(count(dir.path(), &per_terminal(a.id)).await, 8);
    assert_eq!(count(dir.path(), &per_terminal(c.id)).await, 4);
    assert_eq!(count(dir.path(), &per_terminal(b.id)).await, 0);
    for terminal in &honest {
        assert_eq!(count(dir.path(), &per_terminal(terminal.id)).await, 40);
    }
}
