//! The vertical slice: votes sent → acknowledged → in Parquet → counted exactly by SQL.

use std::fs::File;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{TimestampMillisecondType, UInt16Type, UInt32Type};
use faccia::terminal::client::{Terminal, batch_frame};
use faccia::wire::Status;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::reader::FileReader;

use crate::common::*;

#[tokio::test]
async fn votes_sent_are_acknowledged_and_counted_exactly_by_sql() {
    // Proves: every acknowledged vote is in the dataset once, under its terminal's municipality.
    let dir = tempfile::tempdir().unwrap();
    let mut credentials = add(dir.path(), AGLIE, 2);
    credentials.extend(add(dir.path(), ALA_DI_STURA, 1));
    let server = start(dir.path()).await;
    let now = faccia::clock::now_ms();
    let mut acknowledged = 0;
    for (t, credential) in credentials.iter().enumerate() {
        let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
        let mut terminal = Terminal::new(credential.clone(), endpoint, target(&server), 4);
        // People's votes: the service index below counts only votes no misuse rule flags.
        for b in 0..10 {
            terminal.enqueue(&human_votes(now - 3_600_000 + (t * 1000) as i64 + b * 25 * CITIZEN_GAP_MS, 25)).unwrap();
        }
        let (votes, duplicates) = deliver(&mut terminal).await;
        assert_eq!(duplicates, 0);
        acknowledged += votes;
        terminal.close();
    }
    assert_eq!(acknowledged, 750);
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 750);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes WHERE municipality = 1003").await, 250);
    assert_eq!(count(dir.path(), "SELECT count(DISTINCT (terminal, ts)) FROM votes").await, 750);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes WHERE face = -1 AND reason IS NULL").await, 0);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes WHERE misuse <> 0").await, 0);
    assert_eq!(count(dir.path(), "SELECT CAST(sum(votes) AS BIGINT) FROM service_index").await, 750);
}

#[tokio::test]
async fn retransmitted_batch_is_duplicate_and_counted_once() {
    // Proves: a batch sent twice (acknowledgement lost) is stored once and answered "duplicate".
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = start(dir.path()).await;
    let session = session(&server, &credential).await;
    let frame = batch_frame(1, AGLIE, &votes(faccia::clock::now_ms() - 1000, 10));
    let first = session.send_frame(&frame).await.unwrap();
    let second = session.send_frame(&frame).await.unwrap();
    assert_eq!((first.status, second.status), (Status::Stored as u8, Status::Duplicate as u8));
    // Both copies at once: one is stored, the other waits for it and is a duplicate.
    let frame = batch_frame(2, AGLIE, &votes(faccia::clock::now_ms() - 500, 10));
    let (a, b) = tokio::join!(session.send_frame(&frame), session.send_frame(&frame));
    let mut statuses = [a.unwrap().status, b.unwrap().status];
    statuses.sort();
    assert_eq!(statuses, [Status::Stored as u8, Status::Duplicate as u8]);
    server.stop().await;
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 20);
}

fn read_file(path: &std::path::Path) -> Vec<RecordBatch> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    builder.build().unwrap().collect::<Result<_, _>>().unwrap()
}

#[tokio::test]
async fn parquet_is_partitioned_by_day_sorted_and_self_describing() {
    // Proves: files land in votes/date=YYYY-MM-DD/, sorted by municipality, service, time, with
    // zstd, statistics, a page index and the declared sort order.
    let dir = tempfile::tempdir().unwrap();
    let credentials = [add(dir.path(), ALA_DI_STURA, 1).remove(0), add(dir.path(), AGLIE, 1).remove(0)];
    let server = start(dir.path()).await;
    let now = faccia::clock::now_ms();
    let day_ms = 86_400_000;
    for credential in &credentials {
        let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
        let mut terminal = Terminal::new(credential.clone(), endpoint, target(&server), 2);
        terminal.enqueue(&votes(now - day_ms - 3_600_000, 40)).unwrap();
        terminal.enqueue(&votes(now - 120_000, 40)).unwrap();
        deliver(&mut terminal).await;
    }
    server.stop().await;
    let files = parquet_files(dir.path());
    let dates: std::collections::BTreeSet<String> =
        files.iter().map(|f| f.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned()).collect();
    let expected: std::collections::BTreeSet<String> = [now - day_ms - 3_600_000, now - 120_000]
        .into_iter()
        .map(|t| format!("date={}", faccia::storage::buffer::partition_date(t)))
        .collect();
    assert_eq!(dates, expected);
    let mut total = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(name.starts_with("part-") && name.ends_with(".parquet"), "{name}");
        let batches = read_file(file);
        let keys: Vec<(u32, u16, i64)> = batches
            .iter()
            .flat_map(|b| {
                let m = b.column(0).as_primitive::<UInt32Type>().values().to_vec();
                let s = b.column(1).as_primitive::<UInt16Type>().values().to_vec();
                let t = b.column(2).as_primitive::<TimestampMillisecondType>().values().to_vec();
                (0..b.num_rows()).map(move |i| (m[i], s[i], t[i]))
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "rows sorted in {name}");
        total += keys.len();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(File::open(file).unwrap()).unwrap();
        let metadata = reader.metadata();
        let row_group = metadata.row_group(0);
        assert!(
            row_group
                .columns()
                .iter()
                .all(|c| c.compression() == Compression::ZSTD(Default::default()) || matches!(c.compression(), Compression::ZSTD(_)))
        );
        assert!(row_group.column(0).statistics().is_some(), "statistics on");
        assert!(row_group.column(0).column_index_offset().is_some(), "page index on");
        assert_eq!(row_group.sorting_columns().map(|s| s.len()), Some(4), "sort order declared");
    }
    assert_eq!(total, 160);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM votes").await, 160);
    let today = faccia::storage::buffer::partition_date(now - 120_000);
    assert_eq!(count(dir.path(), &format!("SELECT count(*) FROM votes WHERE date = DATE '{today}'")).await, 80);
}

#[tokio::test]
async fn a_terminal_resumes_its_tls_session_after_a_server_restart() {
    // Proves: the session tickets a server issues open after a restart (their key is kept in
    // the data directory), so a reconnecting fleet resumes instead of running full handshakes;
    // and that resumption does not skip the terminal's credential.
    let dir = tempfile::tempdir().unwrap();
    let credentials = add(dir.path(), ALA_DI_STURA, 2);
    let first = start(dir.path()).await;
    let addr = first.ingest_addr;
    let target = target(&first).with_own_sessions();
    let endpoint = faccia::terminal::client::client_endpoint(addr).unwrap();
    let session = faccia::terminal::client::Session::connect(&endpoint, &target, &credentials[0]).await.unwrap();
    assert_eq!(first.engine.metrics.tls_sessions_resumed.get(), 0, "a first connection has nothing to resume");
    drop(session);
    first.stop().await;

    let second = faccia::server::Server::start(dir.path().to_path_buf(), faccia::config::Config { listen: addr, ..loopback_config() })
        .await
        .unwrap();
    let session = faccia::terminal::client::Session::connect(&endpoint, &target, &credentials[0]).await.unwrap();
    assert_eq!(second.engine.metrics.tls_sessions_resumed.get(), 1, "the restarted server opened the ticket");
    drop(session);
    // A resumed session is still asked for the credential: a wrong secret is refused.
    let mut impostor = credentials[1].clone();
    impostor.secret = credentials[0].secret.clone();
    let refused = faccia::terminal::client::Session::connect(&endpoint, &target, &impostor).await;
    assert!(refused.is_err(), "a resumed session with a wrong credential is refused");
    assert!(second.engine.metrics.tls_sessions_resumed.get() >= 2);
    second.stop().await;
}
