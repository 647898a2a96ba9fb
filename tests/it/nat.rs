//! Terminals behind a NAT: the source port of a connection changes while it is open.

use std::sync::atomic::Ordering;
use std::time::Duration;

use faccia::config::Config;
use faccia::server::Server;
use faccia::terminal::client::{Event, ServerTarget, Terminal};

use crate::common::*;
use crate::proxy::RebindingRelay;

#[tokio::test]
async fn a_terminal_behind_a_rebinding_nat_keeps_one_connection_whatever_the_number_of_sockets() {
    // Proves: with several ingest sockets sharing the port, a connection whose source port
    // changes every 400 ms (a NAT mapping expiring) keeps its endpoint: the server accepts one
    // connection, the terminal never reconnects, and every vote is stored once. Before packets
    // were steered by connection ID, the kernel's address hash sent each rebound packet to a
    // random socket (3 in 4 here), whose endpoint answered with a stateless reset.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = Server::start(dir.path().to_path_buf(), Config { ingest_sockets: 4, ..loopback_config() }).await.unwrap();
    let relay = RebindingRelay::start(server.ingest_addr, Duration::from_millis(400)).await;
    let target = ServerTarget::new(relay.addr, "localhost", server.ca_path.as_ref().unwrap()).unwrap();
    let endpoint = faccia::terminal::client::client_endpoint(relay.addr).unwrap();
    let mut terminal = Terminal::new(credential, endpoint, target, 2);
    terminal.connect().await.unwrap();
    let start_ms = faccia::clock::now_ms() - 60_000;
    let (mut sent, mut acknowledged, mut disconnects) = (0, 0, 0);
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut next_batch = tokio::time::Instant::now();
    while tokio::time::Instant::now() < until {
        if tokio::time::Instant::now() >= next_batch {
            terminal.enqueue(&votes(start_ms + sent as i64, 5)).unwrap();
            sent += 5;
            next_batch += Duration::from_millis(150);
        }
        match tokio::time::timeout_at(next_batch, terminal.next_event()).await {
            Ok(Event::Acknowledged { votes, .. }) => acknowledged += votes,
            Ok(Event::Disconnected { .. }) => disconnects += 1,
            Ok(Event::Fatal(error)) => panic!("{error}"),
            Ok(Event::Rejected { rejection, .. }) => panic!("{rejection}"),
            _ => {}
        }
    }
    let (rest, duplicates) = deliver(&mut terminal).await;
    acknowledged += rest;
    let rebinds = relay.rebinds.load(Ordering::SeqCst);
    assert!(rebinds >= 10, "the relay changed its port {rebinds} times");
    assert_eq!((disconnects, duplicates), (0, 0), "the terminal lost its connection after {rebinds} rebinds");
    assert_eq!(server.engine.metrics.connections_accepted.get(), 1, "one connection for the whole run");
    assert_eq!(acknowledged, sent);
    terminal.close();
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, sent as i64);
}
