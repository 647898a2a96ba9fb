//! An unclean stop: the server process is killed with SIGKILL and restarted on the same data.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use faccia::terminal::client::{Terminal, batch_frame};
use faccia::wire::Status;

use crate::common::*;

pub(crate) use faccia::tools::process::ServerProcess;

/// A free UDP port on loopback (the kernel's pick; released before the server binds it).
pub(crate) fn free_port() -> u16 {
    faccia::tools::process::free_udp_port().unwrap()
}

/// `faccia serve` as a child process on `dir`, listening on 127.0.0.1:`port` with the default
/// limits (its configuration file is kept in `dir`).
pub(crate) fn start_process(dir: &Path, port: u16) -> ServerProcess {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = dir.join("serve.toml");
    std::fs::write(&config, faccia::tools::process::child_config(addr, "", &[]).unwrap()).unwrap();
    ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_faccia")), dir, &config, addr, &[]).expect("faccia serve starts")
}

#[tokio::test]
async fn killed_server_replays_its_log_and_loses_nothing() {
    // Proves: after SIGKILL, a restart replays the log: every acknowledged vote is counted once,
    // and a batch acknowledged before the kill is recognised as a duplicate after it.
    let dir = tempfile::tempdir().unwrap();
    let credentials = add(dir.path(), AGLIE, 3);
    let port = free_port();
    let server = start_process(dir.path(), port);
    let now = faccia::clock::now_ms();
    let mut acknowledged = 0;
    let endpoint = faccia::terminal::client::client_endpoint(server.addr).unwrap();
    for (t, credential) in credentials.iter().enumerate() {
        let mut terminal = Terminal::new(credential.clone(), endpoint.clone(), server.target().unwrap(), 8);
        for b in 0..20 {
            terminal.enqueue(&votes(now - 600_000 + (t as i64) * 100_000 + b * 1_000, 25)).unwrap();
        }
        acknowledged += deliver(&mut terminal).await.0;
        terminal.close();
    }
    server.kill();
    assert!(parquet_files(dir.path()).is_empty(), "nothing was flushed before the kill");

    let server = start_process(dir.path(), port);
    let endpoint = faccia::terminal::client::client_endpoint(server.addr).unwrap();
    let session = faccia::terminal::client::Session::connect(&endpoint, &server.target().unwrap(), &credentials[0]).await.unwrap();
    assert_eq!(session.last_seq, 20, "the sequence state survived the kill");
    let resent = batch_frame(3, AGLIE, &votes(now - 600_000 + 2_000, 25));
    assert_eq!(session.send_frame(&resent).await.unwrap().status, Status::Duplicate as u8);
    let fresh = batch_frame(21, AGLIE, &votes(now - 1_000, 25));
    assert_eq!(session.send_frame(&fresh).await.unwrap().status, Status::Stored as u8);
    acknowledged += 25;
    session.connection.close(0u32.into(), b"");
    assert!(server.terminate().unwrap().success(), "clean shutdown on SIGTERM");

    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, acknowledged as i64);
    assert_eq!(count(dir.path(), "SELECT count(DISTINCT (terminal, ts)) FROM votes").await, acknowledged as i64);
}

#[tokio::test]
async fn a_restarted_server_resets_the_connections_of_the_killed_one() {
    // Proves: the connection-ID key and the stateless-reset key survive a restart, so the new
    // process answers a packet of a connection the killed one held with a stateless reset (the
    // terminal learns at once that it must reconnect) instead of dropping it (the terminal would
    // wait for its reply or idle timeout).
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let port = free_port();
    let server = start_process(dir.path(), port);
    let mut target = server.target().unwrap();
    target.set_idle_timeout(Duration::from_secs(10));
    let endpoint = faccia::terminal::client::client_endpoint(server.addr).unwrap();
    let session = faccia::terminal::client::Session::connect(&endpoint, &target, &credential).await.unwrap();
    server.kill();
    let restarted = start_process(dir.path(), port);
    let frame = batch_frame(1, AGLIE, &human_votes(faccia::clock::now_ms() - 60_000, 1));
    let error = session.send_frame(&frame).await.unwrap_err();
    assert!(
        matches!(error, faccia::terminal::client::ClientError::Connection(quinn::ConnectionError::Reset)),
        "a stateless reset, not a timeout: {error:?}"
    );
    restarted.kill();
}
