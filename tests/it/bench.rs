//! The load generator against a spawned server: its report adds up, the cross-check passes,
//! and a SIGKILL restart in the middle of the run is ridden out.

use std::time::Duration;

use faccia::tools::bench::{self, Plan, Target};

fn plan(dir: &std::path::Path) -> Plan {
    Plan {
        target: Target::Spawn { exe: env!("CARGO_BIN_EXE_faccia").into(), config: None, data_dir: Some(dir.join("data")) },
        terminals: Some(30),
        municipalities: Some(10),
        batch_votes: 16,
        in_flight: 2,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        rate: None,
        endpoints: 2,
        connect_concurrency: 8,
        connect_rate: 500.0,
        restart_at: None,
        json: None,
        plot: None,
        seed: 7,
        progress: false,
        clock: Default::default(),
    }
}

#[tokio::test]
async fn closed_loop_report_cross_checks_with_server_and_sql() {
    // Proves: what the generator saw acknowledged equals the server's counters and SQL.
    let dir = tempfile::tempdir().unwrap();
    let report = bench::run(&plan(dir.path())).await.unwrap();
    assert_eq!(report.terminals, 30);
    assert_eq!(report.municipalities, 10);
    assert!(report.votes_acknowledged > 0 && report.latency.count > 0, "{report:?}");
    assert_eq!(report.votes_acknowledged % 16, 0, "whole batches of 16");
    assert_eq!(report.sql_votes, Some(report.votes_acknowledged));
    assert_eq!(report.server_votes_stored, Some(report.votes_acknowledged));
    assert!(report.cross_check.starts_with("ok"), "{}", report.cross_check);
    assert!(report.latency.p50_us <= report.latency.p99_us && report.latency.p99_us <= report.latency.max_us);
    let text = bench::render(&report);
    assert!(text.contains("latency p99") && text.contains("cross-check"), "{text}");
    let svg = dir.path().join("latency.svg");
    bench::plot(&report, &svg).unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(json["votes_acknowledged"].as_u64(), Some(report.votes_acknowledged));
}

#[tokio::test]
async fn open_loop_with_a_restart_loses_nothing() {
    // Proves: Poisson arrivals at a set rate are delivered; after a SIGKILL and restart every
    // terminal reconnects and catches up, and SQL still counts exactly what was acknowledged.
    let dir = tempfile::tempdir().unwrap();
    let plan =
        Plan { rate: Some(3000.0), restart_at: Some(Duration::from_millis(1200)), duration: Duration::from_secs(3), ..plan(dir.path()) };
    let report = bench::run(&plan).await.unwrap();
    assert!(report.cross_check.starts_with("ok"), "{}", report.cross_check);
    assert_eq!(report.sql_votes, Some(report.votes_acknowledged));
    let storm = report.storm.expect("the server was restarted");
    assert_eq!(storm.terminals_caught_up, 30, "{storm:?}");
}

#[tokio::test]
async fn clock_faults_are_stored_and_counted_in_the_report() {
    // Proves: terminals holding a backlog 35 days old, whose clocks run an hour ahead and then
    // jump to 2000-01-01 mid-run, lose nothing: no rejection, the cross-check passes, and the
    // report counts exactly the backlog as clock faults (the rest is corrected by the terminal
    // library from the server's clock).
    let dir = tempfile::tempdir().unwrap();
    let clock = faccia::terminal::simulate::ClockFaults {
        skew_ms: 3_600_000,
        reset_after: Some(Duration::from_millis(1500)),
        backlog_age_ms: Some(35 * 86_400_000),
        correction: true,
    };
    let report = bench::run(&Plan { clock, ..plan(dir.path()) }).await.unwrap();
    assert!(report.cross_check.starts_with("ok"), "{}", report.cross_check);
    assert!(!report.errors.keys().any(|k| k.contains("rejected")), "{:?}", report.errors);
    assert_eq!(report.sql_votes_clock_faulted, Some(30 * 16), "one backlog batch of 16 votes per terminal");
    assert!(bench::render(&report).contains("clock faults"));
}
