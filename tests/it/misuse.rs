//! Misuse flags: presses no person could make are stored, flagged with their rule, and left
//! out of the indices; people's votes are never flagged; a replayed log keeps the flags.

use faccia::ingest::misuse::Rule;
use faccia::model::{Channel, Face};
use faccia::terminal::client::{TerminalVote, batch_frame};
use faccia::wire::Status;

use crate::common::*;
use crate::crash::{free_port, start_process};

/// The three kinds of misuse, in three batches: 10 presses 200 ms apart (9 flagged debounce),
/// 5 identical presses 2 s apart (4 flagged repeat), 45 presses in one minute (15 flagged burst).
fn misuse_batches(now_ms: i64) -> Vec<Vec<TerminalVote>> {
    let t0 = now_ms - 7_200_000;
    let smash: Vec<TerminalVote> =
        votes(0, 10).into_iter().enumerate().map(|(i, v)| TerminalVote { at_ms: t0 + i as i64 * 200, ..v }).collect();
    let same = TerminalVote { at_ms: 0, service: 3, face: Face::Positive, channel: Channel::Counter, reason: None };
    let repeat = (0..5).map(|i| TerminalVote { at_ms: t0 + 600_000 + i * 2_000, ..same }).collect();
    let minute = (t0 + 1_200_000).div_euclid(60_000) * 60_000;
    let burst = votes(0, 45).into_iter().enumerate().map(|(i, v)| TerminalVote { at_ms: minute + 500 + i as i64 * 1_200, ..v }).collect();
    vec![smash, repeat, burst]
}

const EXPECTED: [(u8, i64); 3] = [(Rule::Debounce as u8, 9), (Rule::Repeat as u8, 4), (Rule::Burst as u8, 15)];

async fn assert_flags(dir: &std::path::Path, terminal: u32) {
    for (rule, flagged) in EXPECTED {
        let sql = format!("SELECT count(*) FROM votes WHERE terminal = {terminal} AND misuse = {rule}");
        assert_eq!(count(dir, &sql).await, flagged, "rule {rule}");
    }
    let counted = format!("SELECT count(*) FROM votes WHERE terminal = {terminal} AND misuse = 0");
    assert_eq!(count(dir, &counted).await, 1 + 1 + 30);
}

#[tokio::test]
async fn misuse_is_stored_flagged_by_rule_and_left_out_of_the_index() {
    // Proves: debounce, repeat and burst votes are all stored (none dropped), each with its
    // rule's id; people's votes beside them are not flagged; the index counts counted votes only.
    let dir = tempfile::tempdir().unwrap();
    let people = add(dir.path(), ALA_DI_STURA, 1).remove(0);
    let smasher = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let now = faccia::clock::now_ms();
    let people_session = session(&server, &people).await;
    for b in 0..4 {
        let frame = batch_frame(b + 1, ALA_DI_STURA, &human_votes(now - 10_800_000 + b as i64 * 10 * CITIZEN_GAP_MS, 10));
        assert_eq!(people_session.send_frame(&frame).await.unwrap().status, Status::Stored as u8);
    }
    let smasher_session = session(&server, &smasher).await;
    for (seq, batch) in misuse_batches(now).iter().enumerate() {
        let reply = smasher_session.send_frame(&batch_frame(seq as u64 + 1, AGLIE, batch)).await.unwrap();
        assert_eq!(reply.status, Status::Stored as u8, "flagged votes are stored, never refused");
    }
    let metrics = server.engine.metrics.render();
    assert!(metrics.contains("faccia_votes_flagged_total{rule=\"burst\"} 15"), "{metrics}");
    server.stop().await;

    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 40 + 60);
    assert_eq!(count(dir.path(), &format!("SELECT count(*) FROM votes WHERE terminal = {} AND misuse <> 0", people.id)).await, 0);
    assert_flags(dir.path(), smasher.id).await;
    assert_eq!(count(dir.path(), "SELECT CAST(sum(votes) AS BIGINT) FROM service_index").await, 40 + 32);
}

#[tokio::test]
async fn flags_decided_before_a_crash_are_replayed_unchanged() {
    // Proves: flags are written in the log with the batch, so a server killed before any flush
    // replays the same flags (the detector's history is not what decides them after a restart).
    let dir = tempfile::tempdir().unwrap();
    let smasher = add(dir.path(), AGLIE, 1).remove(0);
    let port = free_port();
    let process = start_process(dir.path(), port);
    let endpoint = faccia::terminal::client::client_endpoint(process.addr).unwrap();
    let session = faccia::terminal::client::Session::connect(&endpoint, &process.target().unwrap(), &smasher).await.unwrap();
    for (seq, batch) in misuse_batches(faccia::clock::now_ms()).iter().enumerate() {
        assert_eq!(session.send_frame(&batch_frame(seq as u64 + 1, AGLIE, batch)).await.unwrap().status, Status::Stored as u8);
    }
    process.kill();
    assert!(parquet_files(dir.path()).is_empty(), "nothing was flushed before the kill");
    let server = start(dir.path()).await;
    server.stop().await;
    assert_flags(dir.path(), smasher.id).await;
}
