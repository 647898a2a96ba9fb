//! A vote is never lost because of a terminal's clock: implausible times are stored as clock
//! faults (at the receive time, the terminal's time kept, out of the indices), one bad vote never
//! sinks its batch, protocol 2 tells terminals the server's time and faccia's terminal corrects
//! its votes by it, protocol 1 terminals keep working, and a table written before all this is
//! read and appended to.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int8Array, RecordBatch, TimestampMillisecondArray, UInt8Array, UInt16Array, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use faccia::terminal::client::{ServerTarget, Session, Terminal, TerminalVote, batch_frame};
use faccia::terminal::simulate::CLOCK_RESET_MS;
use faccia::wire::Status;

use crate::common::*;

const DAY_MS: i64 = 86_400_000;

/// A session that offers only protocol 1 (ALPN `faccia/1`), as a terminal built before protocol 2.
async fn session_v1(server: &faccia::server::Server, credential: &faccia::registry::Credential) -> Session {
    let tls = faccia::transport::tls::client_config_with_alpn(server.ca_path.as_ref().unwrap(), faccia::wire::ALPN).unwrap();
    let target = ServerTarget::with_tls(server.ingest_addr, "localhost", tls).unwrap();
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    Session::connect(&endpoint, &target, credential).await.expect("a protocol 1 terminal connects")
}

fn metric(server: &faccia::server::Server, line_start: &str) -> String {
    let metrics = server.engine.metrics.render();
    metrics.lines().find(|l| l.starts_with(line_start)).unwrap_or_else(|| panic!("no {line_start} in {metrics}")).to_string()
}

#[tokio::test]
async fn a_protocol_1_terminal_whose_clock_reads_2000_delivers_every_vote_flagged_and_out_of_the_indices() {
    // Proves: a terminal with a dead clock battery (2000-01-01), speaking protocol 1, has every
    // vote stored (none refused), flagged misuse = 4 at the receive time with its own time in
    // terminal_ts; a resent batch is a duplicate; `counted_votes` and the indices leave them
    // out; `clock_summary` counts them; `/metrics` counts them.
    let dir = tempfile::tempdir().unwrap();
    let terminal = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let session = session_v1(&server, &terminal).await;
    assert_eq!(session.server_clock, None, "protocol 1 has no server clock");
    let before = faccia::clock::now_ms();
    let frame = batch_frame(1, AGLIE, &human_votes(CLOCK_RESET_MS + 3_600_000, 10));
    let reply = session.send_frame(&frame).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8, "{}", reply.message_text());
    let again = session.send_frame(&frame).await.unwrap();
    assert_eq!(again.status, Status::Duplicate as u8, "a resent batch of clock faults is not stored twice");
    let after = faccia::clock::now_ms();
    assert_eq!(metric(&server, "faccia_votes_clock_faulted_total"), "faccia_votes_clock_faulted_total 10");
    server.stop().await;

    let d = dir.path();
    assert_eq!(count(d, "SELECT count(*) FROM votes").await, 10);
    assert_eq!(count(d, "SELECT count(*) FROM votes WHERE misuse = 4 AND terminal_ts IS NOT NULL").await, 10);
    let in_window = format!(
        "SELECT count(*) FROM votes WHERE CAST(ts AS BIGINT) BETWEEN {before} AND {after} \
         AND CAST(terminal_ts AS BIGINT) >= {CLOCK_RESET_MS} AND CAST(terminal_ts AS BIGINT) < {}",
        CLOCK_RESET_MS + DAY_MS
    );
    assert_eq!(count(d, &in_window).await, 10, "stored at the receive time, the terminal's time kept");
    assert_eq!(count(d, "SELECT count(*) FROM counted_votes").await, 0);
    assert_eq!(count(d, "SELECT coalesce(sum(votes), 0) FROM service_index").await, 0);
    assert_eq!(count(d, "SELECT coalesce(sum(votes), 0) FROM service_index_hourly").await, 0);
    assert_eq!(count(d, &format!("SELECT faulted_votes FROM clock_summary WHERE terminal = {}", terminal.id)).await, 10);
    let offset = count(d, "SELECT typical_offset_ms FROM clock_summary").await;
    assert!(offset < -26 * 365 * DAY_MS, "the typical offset says the clock is some 26 years behind: {offset}");
}

#[tokio::test]
async fn a_batch_mixing_good_and_bad_times_stores_both_kinds_and_flags_only_the_bad() {
    // Proves: one vote a day ahead and one 40 days old do not sink the five good votes of their
    // batch: all seven are stored, the good ones unflagged at their own times, the two flagged.
    let dir = tempfile::tempdir().unwrap();
    let terminal = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let session = session(&server, &terminal).await;
    let now = faccia::clock::now_ms();
    let good = human_votes(now - 3_600_000, 5);
    let mut batch = good.clone();
    batch.push(TerminalVote { at_ms: now + DAY_MS, ..votes(0, 1)[0] });
    batch.push(TerminalVote { at_ms: now - 40 * DAY_MS, ..votes(0, 2)[1] });
    let reply = session.send_frame(&batch_frame(1, AGLIE, &batch)).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8, "{}", reply.message_text());
    server.stop().await;

    let d = dir.path();
    assert_eq!(count(d, "SELECT count(*) FROM votes").await, 7);
    let good_times: Vec<String> = good.iter().map(|v| v.at_ms.to_string()).collect();
    let sql = format!(
        "SELECT count(*) FROM votes WHERE misuse = 0 AND terminal_ts IS NULL AND CAST(ts AS BIGINT) IN ({})",
        good_times.join(", ")
    );
    assert_eq!(count(d, &sql).await, 5, "the good votes keep their times, unflagged");
    let sql =
        format!("SELECT count(*) FROM votes WHERE misuse = 4 AND CAST(terminal_ts AS BIGINT) IN ({}, {})", now + DAY_MS, now - 40 * DAY_MS);
    assert_eq!(count(d, &sql).await, 2);
    assert_eq!(count(d, "SELECT count(*) FROM counted_votes").await, 5);
    assert_eq!(count(d, "SELECT sum(votes) FROM service_index").await, 5);
}

#[tokio::test]
async fn a_terminal_that_learned_the_servers_time_stamps_its_votes_correctly() {
    // Proves: faccia's terminal whose device clock reads 2000-01-01 learns the server's time in
    // the protocol 2 hello and corrects both the votes it queued before connecting (never sent)
    // and the votes it stamps afterwards: all stored unflagged, within a minute of the real time.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let mut terminal = Terminal::new(credential, endpoint, target(&server), 4);
    let faults = faccia::terminal::simulate::ClockFaults { reset_after: Some(Duration::ZERO), ..Default::default() };
    terminal.set_device_clock(faults.device_clock());
    assert!(terminal.device_now_ms() < CLOCK_RESET_MS + DAY_MS);
    let before = faccia::clock::now_ms();
    terminal.enqueue(&human_votes(terminal.device_now_ms() - 10 * CITIZEN_GAP_MS, 5)).unwrap();
    assert_eq!(deliver(&mut terminal).await.0, 5);
    let clock = terminal.server_clock().expect("protocol 2 gave the server's clock");
    assert!((clock.server_ms - faccia::clock::now_ms()).abs() < 60_000);
    tokio::time::sleep(Duration::from_millis(20)).await;
    terminal.enqueue(&human_votes(terminal.device_now_ms() - 3 * CITIZEN_GAP_MS, 3)).unwrap();
    assert_eq!(deliver(&mut terminal).await.0, 3);
    let after = faccia::clock::now_ms();
    terminal.close();
    assert_eq!(metric(&server, "faccia_votes_clock_faulted_total"), "faccia_votes_clock_faulted_total 0");
    server.stop().await;

    let d = dir.path();
    assert_eq!(count(d, "SELECT count(*) FROM votes WHERE misuse = 0 AND terminal_ts IS NULL").await, 8);
    let sql = format!("SELECT count(*) FROM votes WHERE CAST(ts AS BIGINT) BETWEEN {} AND {after}", before - 11 * CITIZEN_GAP_MS);
    assert_eq!(count(d, &sql).await, 8, "every vote at the real time it was cast");
}

#[tokio::test]
async fn a_terminal_without_correction_shows_a_mid_run_reset_and_an_old_backlog_as_clock_faults() {
    // Proves: the simulator's faults reach the server as load testers expect: with correction
    // off, a backlog 35 days old and every vote after a reset to 2000-01-01 are clock faults;
    // with correction on, only the backlog is (its votes really are that old).
    let dir = tempfile::tempdir().unwrap();
    let credentials = add(dir.path(), AGLIE, 2);
    let server = start(dir.path()).await;
    for (credential, correction) in credentials.iter().zip([false, true]) {
        let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
        let mut terminal = Terminal::new(credential.clone(), endpoint, target(&server), 4);
        let mut citizens = faccia::terminal::simulate::VoteSimulator::new(1, AGLIE);
        let faults = faccia::terminal::simulate::ClockFaults {
            reset_after: Some(Duration::from_millis(300)),
            backlog_age_ms: Some(35 * DAY_MS),
            correction,
            ..Default::default()
        };
        faults.apply(&mut terminal, &mut citizens, 4).unwrap();
        terminal.enqueue(&human_votes(terminal.device_now_ms() - 5 * CITIZEN_GAP_MS, 2)).unwrap();
        assert_eq!(deliver(&mut terminal).await.0, 4 + 2);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(terminal.device_now_ms() < CLOCK_RESET_MS + DAY_MS, "the device clock was reset");
        terminal.enqueue(&human_votes(terminal.device_now_ms() - 5 * CITIZEN_GAP_MS, 3)).unwrap();
        assert_eq!(deliver(&mut terminal).await.0, 3);
        terminal.close();
    }
    server.stop().await;

    let d = dir.path();
    let faulted = |id: u32| format!("SELECT count(*) FROM votes WHERE misuse = 4 AND terminal = {id}");
    assert_eq!(count(d, &faulted(credentials[0].id)).await, 4 + 3, "uncorrected: the backlog and the votes after the reset");
    assert_eq!(count(d, &faulted(credentials[1].id)).await, 4, "corrected: only the backlog, which is really 35 days old");
    assert_eq!(count(d, "SELECT count(*) FROM votes").await, 2 * 9);
}

/// The votes table as the release before clock faults wrote it: eight columns, no `terminal_ts`,
/// one file of three votes at `at_ms` (today in Italy).
async fn write_old_votes_table(dir: &std::path::Path, at_ms: i64) {
    let rome = Some("Europe/Rome".into());
    let schema = Arc::new(Schema::new(vec![
        Field::new("municipality", DataType::UInt32, false),
        Field::new("service", DataType::UInt16, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, rome.clone()), false),
        Field::new("face", DataType::Int8, false),
        Field::new("channel", DataType::UInt8, false),
        Field::new("reason", DataType::UInt8, true),
        Field::new("terminal", DataType::UInt32, false),
        Field::new("misuse", DataType::UInt8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(vec![AGLIE.0; 3])),
        Arc::new(UInt16Array::from(vec![1, 2, 3])),
        Arc::new(TimestampMillisecondArray::from(vec![at_ms, at_ms + 7_000, at_ms + 14_000]).with_timezone_opt(rome)),
        Arc::new(Int8Array::from(vec![1, 0, -1])),
        Arc::new(UInt8Array::from(vec![0, 0, 0])),
        Arc::new(UInt8Array::from(vec![None, None, Some(1)])),
        Arc::new(UInt32Array::from(vec![99; 3])),
        Arc::new(UInt8Array::from(vec![0, 0, 0])),
    ];
    let rows = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
    let date = chrono::DateTime::from_timestamp_millis(at_ms).unwrap().with_timezone(&chrono_tz::Europe::Rome).date_naive();
    let relative = format!("date={date}/part-old-0000000000000001-0000000000000001.parquet");
    let path = dir.join("votes").join(&relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&rows).unwrap();
    writer.close().unwrap();
    std::fs::write(&path, &bytes).unwrap();

    use deltalake::kernel::{Action, Add, DataType as DeltaType, PrimitiveType, StructField};
    let primitive = |name: &str, t: PrimitiveType, nullable: bool| StructField::new(name, DeltaType::Primitive(t), nullable);
    let columns = vec![
        primitive("municipality", PrimitiveType::Long, false),
        primitive("service", PrimitiveType::Integer, false),
        primitive("ts", PrimitiveType::Timestamp, false),
        primitive("face", PrimitiveType::Byte, false),
        primitive("channel", PrimitiveType::Short, false),
        primitive("reason", PrimitiveType::Short, true),
        primitive("terminal", PrimitiveType::Long, false),
        primitive("misuse", PrimitiveType::Short, false),
        primitive("date", PrimitiveType::Date, false),
    ];
    let add = Add {
        path: relative,
        partition_values: std::collections::HashMap::from([("date".to_string(), Some(date.to_string()))]),
        size: bytes.len() as i64,
        modification_time: at_ms,
        data_change: true,
        stats: Some(r#"{"numRecords":3}"#.to_string()),
        ..Add::default()
    };
    let url = url::Url::from_directory_path(dir.join("votes")).unwrap();
    deltalake::DeltaTableBuilder::from_url(url)
        .unwrap()
        .build()
        .unwrap()
        .create()
        .with_table_name("votes")
        .with_columns(columns)
        .with_partition_columns(["date"])
        .with_actions(vec![Action::Add(add)])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_votes_table_written_before_clock_faults_is_read_appended_to_and_compacted() {
    // Proves: a votes table from the release before `terminal_ts` (no such column in its schema
    // nor in its file) is opened by the server, which adds the column to the table's schema in
    // one commit; old votes read with terminal_ts null, new ones (a clock fault among them) are
    // appended, and compacting the day merges the old file with the new.
    let dir = tempfile::tempdir().unwrap();
    let now = faccia::clock::now_ms();
    write_old_votes_table(dir.path(), now - 60_000).await;
    let terminal = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let session = session(&server, &terminal).await;
    let mut batch = human_votes(now - 30 * 60_000, 2);
    batch.push(TerminalVote { at_ms: now + DAY_MS, ..votes(0, 1)[0] });
    let reply = session.send_frame(&batch_frame(1, AGLIE, &batch)).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8, "{}", reply.message_text());
    server.stop().await;

    let d = dir.path();
    let table = deltalake::open_table(url::Url::from_directory_path(d.join("votes")).unwrap()).await.unwrap();
    let schema = table.snapshot().unwrap().schema();
    assert!(schema.fields().any(|f| f.name() == "terminal_ts" && f.is_nullable()), "the table's schema gained terminal_ts");
    let check = |label: &'static str| async move {
        assert_eq!(count(d, "SELECT count(*) FROM votes").await, 6, "{label}");
        assert_eq!(count(d, "SELECT count(*) FROM votes WHERE terminal = 99 AND terminal_ts IS NULL AND misuse = 0").await, 3, "{label}");
        assert_eq!(count(d, "SELECT count(*) FROM votes WHERE misuse = 4 AND terminal_ts IS NOT NULL").await, 1, "{label}");
        assert_eq!(count(d, "SELECT count(*) FROM counted_votes").await, 5, "{label}");
    };
    check("after appending").await;
    let compact = std::process::Command::new(env!("CARGO_BIN_EXE_faccia")).args(["compact", "--rewrite", "-d"]).arg(d).output().unwrap();
    assert!(compact.status.success(), "{}", String::from_utf8_lossy(&compact.stderr));
    check("after compacting").await;
}

#[tokio::test]
async fn clock_faults_are_read_from_the_log_and_replayed_at_their_receive_time() {
    // Proves: the clock-fault decision and the receive time travel in the log record: a server
    // killed before any flush leaves them for `faccia sql`'s log-tail read, and its replay after
    // a restart stores them at the same receive time, not at the replay's.
    let dir = tempfile::tempdir().unwrap();
    let terminal = add(dir.path(), AGLIE, 1).remove(0);
    let process = crate::crash::start_process(dir.path(), crate::crash::free_port());
    let endpoint = faccia::terminal::client::client_endpoint(process.addr).unwrap();
    let session = Session::connect(&endpoint, &process.target().unwrap(), &terminal).await.unwrap();
    let before = faccia::clock::now_ms();
    let reply = session.send_frame(&batch_frame(1, AGLIE, &human_votes(CLOCK_RESET_MS, 4))).await.unwrap();
    assert_eq!(reply.status, Status::Stored as u8, "{}", reply.message_text());
    let after = faccia::clock::now_ms();
    process.kill();
    assert!(parquet_files(dir.path()).is_empty(), "nothing was flushed before the kill");
    let received = format!(
        "SELECT count(*) FROM votes WHERE misuse = 4 AND CAST(ts AS BIGINT) BETWEEN {before} AND {after} AND CAST(terminal_ts AS BIGINT) < {}",
        CLOCK_RESET_MS + DAY_MS
    );
    assert_eq!(count(dir.path(), &received).await, 4, "read from the log tail");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let server = start(dir.path()).await;
    server.stop().await;
    assert!(!parquet_files(dir.path()).is_empty(), "replayed and flushed");
    assert_eq!(count(dir.path(), &received).await, 4, "replayed at the receive time");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 4);
}
