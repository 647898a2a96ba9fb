//! Bad input: each kind gets its error code, and the server keeps serving honest terminals.

use faccia::registry::{Credential, Secret};
use faccia::terminal::{ClientError, ServerTarget, Session, Terminal, batch_frame};
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
    let endpoint = faccia::terminal::client_endpoint(server.ingest_addr).unwrap();
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
    let honest_endpoint = faccia::terminal::client_endpoint(server.ingest_addr).unwrap();
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
    // Timestamp far in the future, and far in the past.
    let tomorrow = now + 86_400_000;
    assert_eq!(rejected(&send(raw_batch(1, AGLIE.0, tomorrow, vec![good_vote()])).await), ErrorCode::TimestampInFuture);
    assert_eq!(rejected(&send(raw_batch(1, AGLIE.0, now - 400 * 86_400_000, vec![good_vote()])).await), ErrorCode::TimestampTooOld);
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
    let tls = faccia::tls::client_config_with_alpn(server.ca_path.as_ref().unwrap(), b"h3").unwrap();
    let target = ServerTarget::with_tls(server.ingest_addr, "localhost", tls).unwrap();
    let endpoint = faccia::terminal::client_endpoint(server.ingest_addr).unwrap();
    let error = match Session::connect(&endpoint, &target, &credential).await {
        Err(error) => error,
        Ok(_) => panic!("a wrong ALPN must not connect"),
    };
    let text = faccia::wal::error_chain(&error);
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
        let endpoint = faccia::terminal::client_endpoint(server.ingest_addr).unwrap();
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
