//! Faults: kills at random moments, crashes inside a flush, failed fsyncs, a full disk, lost
//! acknowledgements, a terminal offline for a long time. Nothing acknowledged is lost, nothing
//! is counted twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use faccia::limits::Limits;
use faccia::server::{Hooks, Server};
use faccia::storage::faults::{Fault, Faults};
use faccia::terminal::client::{Event, ServerTarget, Terminal, batch_frame};
use faccia::tools::crashtest::{self, ServerProcess};
use faccia::wire::{ErrorCode, Status};

use crate::common::*;
use crate::proxy::LossyProxy;

#[tokio::test]
async fn random_kills_lose_nothing_and_double_nothing() {
    // Proves: SIGKILL at random moments (during sends, flushes, commits, checkpoints, log
    // rotation, compactions) and crashes inside compactions, round after round, leave every
    // acknowledged vote in the dataset exactly once.
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let plan = crashtest::Plan {
        server_exe: env!("CARGO_BIN_EXE_faccia").into(),
        data_dir: dir.path().to_path_buf(),
        rounds: 6,
        terminals: 8,
        run_ms: (20, 600),
        batch_votes_max: 40,
        in_flight_max: 4,
        seed,
        nodes: 1,
        storage_url: None,
    };
    let report = crashtest::run(&plan).await.unwrap();
    println!("{report:?}");
    assert!(report.votes_acknowledged > 0);
    assert!(report.is_clean(), "seed {seed}: {report:?}");
    assert!(report.compaction_crashes > 0 && report.compactions > 0, "no round reached a compaction: {report:?}");
}

/// Sends `batches` batches of 20 votes from a fresh terminal; returns the votes acknowledged.
async fn send_through(process: &ServerProcess, credential: &faccia::registry::Credential, batches: usize, at_ms: i64) -> usize {
    let endpoint = faccia::terminal::client::client_endpoint(process.addr).unwrap();
    let target = ServerTarget::new(process.addr, "localhost", &process.ca).unwrap();
    let mut terminal = Terminal::new(credential.clone(), endpoint, target, 4);
    for b in 0..batches {
        terminal.enqueue(&votes(at_ms + (b * 20) as i64, 20)).unwrap();
    }
    let (votes, _) = deliver(&mut terminal).await;
    terminal.close();
    votes
}

async fn crash_inside_a_flush_doubles_nothing(point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let addr = SocketAddr::from(([127, 0, 0, 1], crashtest::free_udp_port().unwrap()));
    let config = dir.path().join("busy.toml");
    crashtest::write_busy_config(&config, addr, None).unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_faccia"));
    let mut server = ServerProcess::start(exe, dir.path(), &config, addr, &[("FACCIA_CRASH_POINT", point)]).unwrap();
    let now = faccia::clock::now_ms() - 60_000;
    let acknowledged = send_through(&server, &credential, 10, now).await;
    // The age threshold (300 ms) starts a flush, which stops at the crash point.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the crash point {point} was not reached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "the server aborted at {point}");
    assert!(!parquet_files(dir.path()).is_empty(), "the flush wrote its files before {point}");

    let server = ServerProcess::start(exe, dir.path(), &config, addr, &[]).unwrap();
    let more = send_through(&server, &credential, 3, now + 10_000).await;
    assert!(server.terminate().unwrap().success());
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, (acknowledged + more) as i64, "crash at {point}");
    assert_eq!(count(dir.path(), "SELECT count(DISTINCT (terminal, ts)) FROM votes").await, (acknowledged + more) as i64);
    for rollup in ["vote_counts", "municipality_service_counts"] {
        let sql = format!("SELECT CAST(sum(votes) AS BIGINT) FROM {rollup}");
        assert_eq!(count(dir.path(), &sql).await, (acknowledged + more) as i64, "{rollup} after a crash at {point}");
    }
}

#[tokio::test]
async fn crash_between_parquet_and_checkpoint_doubles_nothing() {
    // Proves: files of a flush that never committed are removed at restart and rewritten from
    // the log, so their votes are counted once.
    crash_inside_a_flush_doubles_nothing("flush.after_parquet").await;
}

#[tokio::test]
async fn crash_between_the_votes_commit_and_the_rollups_doubles_nothing() {
    // Proves: a table left a flush behind the others (the votes committed, the rollups not) is
    // caught up from the log at restart, and the votes table is not written twice.
    crash_inside_a_flush_doubles_nothing("flush.after_votes_commit").await;
}

#[tokio::test]
async fn crash_between_the_commits_and_the_checkpoint_doubles_nothing() {
    // Proves: a flush every table holds is not committed again when the checkpoint lags.
    crash_inside_a_flush_doubles_nothing("flush.after_commits").await;
}

#[tokio::test]
async fn crash_between_checkpoint_and_log_truncation_doubles_nothing() {
    // Proves: log records at or below the committed watermark are not replayed into the buffer.
    crash_inside_a_flush_doubles_nothing("flush.after_checkpoint").await;
}

async fn start_with_faults(dir: &std::path::Path) -> (Server, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let hooks = Hooks { faults: Arc::clone(&faults), ..Hooks::default() };
    (Server::start_with(dir.to_path_buf(), loopback_config(), hooks).await.unwrap(), faults)
}

#[tokio::test]
async fn a_failing_log_stops_acknowledging_says_why_and_resumes() {
    // Proves: while fsyncs fail, batches are answered "retry later" (nothing stored, the
    // metrics say so); once they succeed again the terminal's retries are stored exactly once.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let (server, faults) = start_with_faults(dir.path()).await;
    let session = session(&server, &credential).await;
    let now = faccia::clock::now_ms() - 10_000;
    assert_eq!(session.send_frame(&batch_frame(1, AGLIE, &votes(now, 10))).await.unwrap().status, Status::Stored as u8);
    for fault in [Fault::WalSync, Fault::WalWrite] {
        faults.set(fault, true);
        let reply = session.send_frame(&batch_frame(2, AGLIE, &votes(now + 100, 10))).await.unwrap();
        assert_eq!(reply.status, Status::RetryLater as u8);
        assert_eq!(ErrorCode::from_u16(reply.code), Some(ErrorCode::StorageUnavailable));
        let metrics = server.engine.metrics.render();
        assert!(metrics.contains("faccia_wal_unavailable 1"), "{metrics}");
        assert!(metrics.contains("faccia_batches_retry_later_total{code=\"storage_unavailable\"}"), "{metrics}");
        faults.set(fault, false);
    }
    // The terminal library rides it out by itself: it keeps the batch and resends.
    faults.set(Fault::WalSync, true);
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let mut terminal = Terminal::new(credential.clone(), endpoint, target(&server), 2);
    terminal.connect().await.unwrap();
    terminal.enqueue(&votes(now + 200, 10)).unwrap();
    let mut retries = 0;
    let acknowledged = loop {
        match tokio::time::timeout(Duration::from_secs(20), terminal.next_event()).await.unwrap() {
            Event::RetryLater { .. } => {
                retries += 1;
                if retries == 2 {
                    faults.set(Fault::WalSync, false);
                }
            }
            Event::Acknowledged { votes, duplicate, .. } => break (votes, duplicate),
            _ => {}
        }
    };
    assert_eq!(acknowledged, (10, false));
    assert!(server.engine.metrics.render().contains("faccia_wal_unavailable 0"));
    session.connection.close(0u32.into(), b"");
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 20);
}

#[tokio::test]
async fn a_failing_flush_keeps_the_rows_and_retries() {
    // Proves: when Parquet cannot be written, rows stay in the log and the buffer, the flush is
    // retried, and nothing is lost or doubled when it succeeds.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let (server, faults) = start_with_faults(dir.path()).await;
    faults.set(Fault::ParquetWrite, true);
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let mut terminal = Terminal::new(credential, endpoint, target(&server), 4);
    for b in 0..5 {
        terminal.enqueue(&votes(faccia::clock::now_ms() - 20_000 + b * 100, 20)).unwrap();
    }
    deliver(&mut terminal).await;
    server.engine.request_flush();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.engine.metrics.render().contains("faccia_parquet_flush_errors_total 1") {
        assert!(tokio::time::Instant::now() < deadline, "the flush was attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(parquet_files(dir.path()).is_empty());
    // The store publishes its buffer to readers every 100 ms: the last batch may follow the failed flush.
    let in_memory = || server.engine.memory_snapshot().batches().map(|b| b.num_rows()).sum::<usize>();
    while in_memory() < 100 {
        assert!(tokio::time::Instant::now() < deadline, "the rows stay in memory: {}", in_memory());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_memory(), 100, "nothing doubled in memory");
    faults.set(Fault::ParquetWrite, false);
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 100);
}

#[tokio::test]
async fn a_full_disk_stops_acknowledging_until_space_returns() {
    // Proves, on a real 4 MiB filesystem: when the disk fills, batches are answered "retry
    // later"; when space is freed, the same batches are stored once. Needs permission to mount
    // a tmpfs: without it the test fails in CI and, elsewhere, says loudly that it did not run.
    let mount = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        cannot_run("a_full_disk_stops_acknowledging_until_space_returns", "cannot mount a 4 MiB tmpfs (needs root or CAP_SYS_ADMIN)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.path().to_path_buf());
    let dir = mount.path().join("data");
    let credential = add(&dir, AGLIE, 1).remove(0);
    // The terminal fills the disk as fast as it can, far faster than people vote.
    let server = start_with_limits(&dir, Limits { votes_per_terminal_per_minute_max: u32::MAX, ..Limits::default() }).await;
    let session = session(&server, &credential).await;
    let filler = mount.path().join("filler");
    let now = faccia::clock::now_ms() - 30_000;
    let mut seq = 0;
    let mut full = false;
    std::fs::write(&filler, vec![0u8; 3 * 1024 * 1024]).unwrap();
    for _ in 0..2000 {
        seq += 1;
        let reply = session.send_frame(&batch_frame(seq, AGLIE, &votes(now + seq as i64 * 100, 80))).await.unwrap();
        if reply.status == Status::RetryLater as u8 {
            assert_eq!(ErrorCode::from_u16(reply.code), Some(ErrorCode::StorageUnavailable));
            full = true;
            break;
        }
        assert_eq!(reply.status, Status::Stored as u8);
    }
    assert!(full, "the disk filled up");
    std::fs::remove_file(&filler).unwrap();
    let reply = session.send_frame(&batch_frame(seq, AGLIE, &votes(now + seq as i64 * 100, 80))).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8, "stored once space returned");
    session.connection.close(0u32.into(), b"");
    server.stop().await;
    assert_eq!(count(&dir, "SELECT count(*) FROM votes").await, seq as i64 * 80);
}

#[tokio::test]
async fn a_lost_acknowledgement_is_resent_and_counted_once() {
    // Proves: when the reply to a stored batch is lost on the network, the terminal resends it
    // on a new connection, the server answers "duplicate", and SQL counts it once.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let proxy = LossyProxy::start(server.ingest_addr).await;
    let mut target = ServerTarget::new(proxy.addr, "localhost", server.ca_path.as_ref().unwrap()).unwrap();
    target.set_idle_timeout(Duration::from_secs(2));
    let endpoint = faccia::terminal::client::client_endpoint(proxy.addr).unwrap();
    let mut terminal = Terminal::new(credential, endpoint, target, 1);
    terminal.set_ack_timeout(Duration::from_millis(800));
    terminal.connect().await.unwrap();
    proxy.drop_replies.store(true, std::sync::atomic::Ordering::SeqCst);
    terminal.enqueue(&votes(faccia::clock::now_ms() - 5_000, 25)).unwrap();
    // The terminal sends the batch, the server stores it, the reply never arrives.
    let lost = tokio::time::timeout(Duration::from_secs(10), terminal.next_event()).await.unwrap();
    assert!(matches!(lost, Event::Disconnected { .. }), "the reply was lost: {lost:?}");
    assert_eq!(server.engine.metrics.batches_stored.get(), 1, "the server stored the batch");
    proxy.drop_replies.store(false, std::sync::atomic::Ordering::SeqCst);
    let acknowledged = loop {
        match tokio::time::timeout(Duration::from_secs(20), terminal.next_event()).await.unwrap() {
            Event::Acknowledged { votes, duplicate, .. } => break (votes, duplicate),
            Event::Fatal(error) => panic!("{error}"),
            _ => {}
        }
    };
    assert_eq!(acknowledged, (25, true), "the resent copy is a duplicate");
    terminal.close();
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 25);
}

#[tokio::test]
async fn an_offline_terminal_keeps_its_backlog_on_disk_and_delivers_it_once() {
    // Proves: a terminal that cannot reach the server (and is itself restarted meanwhile) keeps
    // its batches on disk, never renumbers them, and delivers every one exactly once.
    let dir = tempfile::tempdir().unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), ALA_DI_STURA, 1).remove(0);
    let addr = SocketAddr::from(([127, 0, 0, 1], crashtest::free_udp_port().unwrap()));
    let ca = {
        // The development CA exists once the data directory has been served once.
        let server = Server::start(dir.path().to_path_buf(), faccia::config::Config { listen: addr, ..loopback_config() }).await.unwrap();
        let ca = server.ca_path.clone().unwrap();
        server.stop().await;
        ca
    };
    let offline_since = faccia::clock::now_ms() - 3 * 3_600_000;
    let mut target = ServerTarget::new(addr, "localhost", &ca).unwrap();
    target.set_idle_timeout(Duration::from_secs(1));
    {
        let endpoint = faccia::terminal::client::client_endpoint(addr).unwrap();
        let mut terminal = Terminal::with_outbox(credential.clone(), endpoint, target.clone(), 4, outbox.path()).unwrap();
        for b in 0..30 {
            // Three hours of votes, one batch every six minutes.
            terminal.enqueue(&votes(offline_since + b * 360_000, 10)).unwrap();
        }
        let event = tokio::time::timeout(Duration::from_secs(10), terminal.next_event()).await.unwrap();
        assert!(matches!(event, Event::Disconnected { .. }), "no server: {event:?}");
    } // the terminal is switched off with its backlog on disk
    let server = Server::start(dir.path().to_path_buf(), faccia::config::Config { listen: addr, ..loopback_config() }).await.unwrap();
    let endpoint = faccia::terminal::client::client_endpoint(addr).unwrap();
    let mut terminal = Terminal::with_outbox(credential, endpoint, target, 4, outbox.path()).unwrap();
    assert_eq!(terminal.unacknowledged(), 30);
    let (delivered, duplicates) = deliver(&mut terminal).await;
    assert_eq!((delivered, duplicates), (300, 0));
    terminal.enqueue(&votes(faccia::clock::now_ms() - 1000, 10)).unwrap();
    let acknowledged = loop {
        if let Event::Acknowledged { seq, duplicate, .. } = terminal.next_event().await {
            break (seq, duplicate);
        }
    };
    assert_eq!(acknowledged, (31, false), "numbering continues after the backlog");
    terminal.close();
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 310);
    assert_eq!(
        std::fs::read_dir(outbox.path()).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "batch")).count(),
        0
    );
}
