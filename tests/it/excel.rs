//! Excel as the programme's offices use it: `faccia sql` and HTTP `/query` write xlsx that a
//! real reader (calamine) reads back as typed cells — numbers, date-times in Italian time,
//! six-digit ISTAT codes as text, accented names — and CSV that Excel's import reads right
//! (byte-order mark, `;`), or by double-click (`csv-excel`).

use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use calamine::{Data, Range, Reader, Xlsx};
use chrono::{DateTime, NaiveDateTime};
use faccia::terminal::client::Terminal;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};

use crate::common::*;

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

fn faccia(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faccia")).args(args).output().expect("faccia runs")
}

/// `faccia sql` over `data`, which must succeed; its standard output.
fn sql(data: &Path, args: &[&str], query: &str) -> Vec<u8> {
    let mut all = vec!["sql", "--data-dir", data.to_str().unwrap()];
    all.extend_from_slice(args);
    all.push(query);
    let out = faccia(&all);
    assert!(out.status.success(), "faccia sql {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Three days across the end of summer time (25 October 2026, 03:00 → 02:00 in Italy): votes at
/// UTC+2 and at UTC+1.
fn generated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["generate", "--data-dir", data.to_str().unwrap(), "--votes", "1500", "--days", "3", "--end", "2026-10-26", "--seed", "14"];
    let out = faccia(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// The one sheet of an xlsx file, as calamine reads it.
fn sheet(bytes: &[u8]) -> Range<Data> {
    let mut workbook = Xlsx::new(Cursor::new(bytes.to_vec())).expect("an xlsx file calamine opens");
    assert_eq!(workbook.sheet_names(), vec!["faccia".to_string()]);
    workbook.worksheet_range("faccia").expect("the sheet")
}

/// A part of the xlsx container, as text (the sheet XML: panes, filter, widths).
fn part(bytes: &[u8], name: &str) -> String {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes.to_vec())).unwrap();
    let mut text = String::new();
    archive.by_name(name).unwrap().read_to_string(&mut text).unwrap();
    text
}

fn header(range: &Range<Data>) -> Vec<String> {
    range.rows().next().unwrap().iter().map(|c| c.to_string()).collect()
}

/// A numeric cell's value (a number stored as text is a failure).
fn number(cell: &Data) -> f64 {
    match cell {
        Data::Float(v) => *v,
        Data::Int(v) => *v as f64,
        other => panic!("not a number cell: {other:?}"),
    }
}

fn text(cell: &Data) -> &str {
    match cell {
        Data::String(s) => s,
        other => panic!("not a text cell: {other:?}"),
    }
}

/// A CSV answer's records (header first).
fn records(bytes: &[u8], delimiter: u8) -> Vec<Vec<String>> {
    let reader = csv::ReaderBuilder::new().has_headers(false).delimiter(delimiter).from_reader(bytes);
    reader.into_records().map(|r| r.unwrap().iter().map(str::to_string).collect()).collect()
}

#[test]
fn faccia_sql_xlsx_holds_the_csvs_numbers_and_six_digit_codes_as_typed_cells() {
    // Proves: `faccia sql --format xlsx --out FILE` writes a workbook whose header is the
    // columns, whose counts and indices are number cells equal to `--format csv`'s, and whose
    // `istat_code` is the six-digit text (leading zeros kept); a bold header row frozen, an
    // autofilter over the rows, fitted widths.
    let dir = generated();
    let data = dir.path().join("data");
    let query = "SELECT municipality, istat_code, name, votes, csat_pct FROM municipality_index ORDER BY votes DESC, municipality";
    let file = dir.path().join("index.xlsx");
    let stdout = sql(&data, &["--format", "xlsx", "--out", file.to_str().unwrap()], query);
    assert!(stdout.is_empty(), "the workbook went to the file");
    let bytes = std::fs::read(&file).unwrap();
    let range = sheet(&bytes);
    assert_eq!(header(&range), ["municipality", "istat_code", "name", "votes", "csat_pct"]);
    let csv = records(&sql(&data, &["--format", "csv"], query), b',');
    assert_eq!(range.height(), csv.len(), "the same rows");
    assert!(csv.len() > 10, "a dataset with municipalities: {}", csv.len());
    let mut votes = 0.0;
    for (cells, expected) in range.rows().skip(1).zip(&csv[1..]) {
        let municipality = number(&cells[0]);
        assert_eq!(municipality, expected[0].parse::<f64>().unwrap());
        assert_eq!(text(&cells[1]), format!("{:06}", municipality as u32), "the code as six-digit text");
        assert_eq!(text(&cells[1]), expected[1]);
        assert_eq!(text(&cells[2]), expected[2]);
        assert_eq!(number(&cells[3]), expected[3].parse::<f64>().unwrap());
        assert_eq!(number(&cells[4]), expected[4].parse::<f64>().unwrap());
        votes += number(&cells[3]);
    }
    let counted = records(&sql(&data, &["--format", "csv"], "SELECT count(*) AS n FROM counted_votes"), b',');
    assert_eq!(votes, counted[1][0].parse::<f64>().unwrap(), "every counted vote");
    assert!(range.rows().skip(1).any(|r| text(&r[1]).starts_with("00")), "codes with leading zeros are there to keep");

    let xml = part(&bytes, "xl/worksheets/sheet1.xml");
    assert!(xml.contains(r#"ySplit="1""#) && xml.contains(r#"state="frozen""#), "the header row is frozen: {xml:.600}");
    assert!(xml.contains(&format!(r#"<autoFilter ref="A1:E{}"/>"#, csv.len())), "an autofilter over header and rows");
    assert!(xml.contains("<cols>") && xml.contains(r#"customWidth="1""#), "fitted column widths");
    assert!(part(&bytes, "xl/styles.xml").contains("<b/>"), "a bold header font");

    // Piped standard output takes the workbook too; an empty result keeps its header.
    let piped = sql(&data, &["--format", "xlsx"], "SELECT municipality, istat_code FROM municipality_index WHERE votes < 0");
    let empty = sheet(&piped);
    assert_eq!((header(&empty), empty.height()), (vec!["municipality".to_string(), "istat_code".to_string()], 1));
}

#[test]
fn faccia_sql_xlsx_times_are_excel_date_times_in_italian_time_across_summer_time() {
    // Proves: every `ts` cell is an Excel date-time (not text) whose value is the Italian wall
    // clock of the vote, at UTC+2 before 25 October 2026 and UTC+1 after; registry names with
    // accents survive, booleans are booleans, numbers numbers.
    let dir = generated();
    let data = dir.path().join("data");
    let query = "SELECT ts, istat_code, municipality FROM counted_votes ORDER BY ts, municipality";
    let file = dir.path().join("votes.xlsx");
    sql(&data, &["--format", "xlsx", "--out", file.to_str().unwrap()], query);
    let range = sheet(&std::fs::read(&file).unwrap());
    let csv = records(&sql(&data, &["--format", "csv"], query), b',');
    assert_eq!(range.height(), csv.len());
    let offsets: std::collections::BTreeSet<String> = csv[1..].iter().map(|r| r[0][r[0].len() - 6..].to_string()).collect();
    assert_eq!(offsets.into_iter().collect::<Vec<_>>(), ["+01:00", "+02:00"], "votes on both sides of the change");
    for (cells, expected) in range.rows().skip(1).zip(&csv[1..]) {
        let italian: NaiveDateTime =
            DateTime::parse_from_rfc3339(&expected[0]).unwrap().with_timezone(&chrono_tz::Europe::Rome).naive_local();
        let Data::DateTime(cell) = &cells[0] else { panic!("ts is not a date-time cell: {:?}", cells[0]) };
        assert!(cell.is_datetime(), "{cell:?}");
        let shown = cell.as_datetime().unwrap();
        assert!((shown - italian).num_milliseconds().abs() <= 1, "{} shown as {shown}, Italian time {italian}", expected[0]);
        assert_eq!(text(&cells[1]), expected[1]);
    }

    let names = "SELECT municipality, istat_code, name, population, eligible FROM municipalities \
                 WHERE municipality IN (1001, 54013) ORDER BY municipality";
    let file = dir.path().join("names.xlsx");
    sql(&data, &["--format", "xlsx", "--out", file.to_str().unwrap()], names);
    let range = sheet(&std::fs::read(&file).unwrap());
    let rows: Vec<&[Data]> = range.rows().skip(1).collect();
    assert_eq!((text(&rows[0][1]), text(&rows[0][2])), ("001001", "Agliè"));
    assert_eq!((text(&rows[1][1]), text(&rows[1][2])), ("054013", "Città di Castello"));
    assert_eq!(number(&rows[0][3]), 2644.0);
    assert_eq!((&rows[0][4], &rows[1][4]), (&Data::Bool(true), &Data::Bool(false)));
}

#[test]
fn faccia_sql_csv_takes_a_byte_order_mark_and_a_semicolon_and_csv_excel_opens_by_double_click() {
    // Proves: `--csv-bom --csv-delimiter ';'` writes the bytes EF BB BF, then the same records
    // as plain CSV split on `;`; `--format csv-excel` adds decimal commas, Italian times
    // without an offset and codes Excel keeps as text; a wrong value or a misplaced option is
    // refused naming the option.
    let dir = generated();
    let data = dir.path().join("data");
    let query = "SELECT istat_code, name, votes, csat_pct FROM municipality_index ORDER BY municipality";
    let plain = records(&sql(&data, &["--format", "csv"], query), b',');
    let bytes = sql(&data, &["--format", "csv", "--csv-bom", "--csv-delimiter", ";"], query);
    assert_eq!(&bytes[..3], b"\xEF\xBB\xBF");
    assert_eq!(String::from_utf8_lossy(&bytes[3..]).lines().next().unwrap(), "istat_code;name;votes;csat_pct");
    assert_eq!(records(&bytes[3..], b';'), plain);

    let excel = sql(&data, &["--format", "csv-excel"], query);
    assert_eq!(&excel[..3], b"\xEF\xBB\xBF");
    let rows = records(&excel[3..], b';');
    assert_eq!(rows[0], plain[0]);
    for (row, expected) in rows[1..].iter().zip(&plain[1..]) {
        assert_eq!(row[0], format!("=\"{}\"", expected[0]), "the code as a formula Excel keeps as text");
        assert_eq!((&row[1], &row[2]), (&expected[1], &expected[2]));
        assert_eq!(row[3], expected[3].replace('.', ","), "a decimal comma");
    }
    let times = sql(&data, &["--format", "csv-excel"], "SELECT min(ts) AS first FROM votes");
    let first = String::from_utf8_lossy(&times[3..]).lines().nth(1).unwrap().to_string();
    assert!(first.starts_with("2026-10-24 ") && first.len() == 19, "Italian time as Excel reads it: {first}");

    let refused = |args: &[&str], needle: &str| {
        let mut all = vec!["sql", "--data-dir", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = faccia(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{args:?}: {stderr}");
    };
    refused(&["--format", "csv", "--csv-delimiter", "|", "SELECT 1"], "--csv-delimiter");
    refused(&["--format", "json", "--csv-bom", "SELECT 1"], "--csv-bom applies to --format csv");
    refused(&["--format", "csv-excel", "--csv-delimiter", ",", "SELECT 1"], "--csv-delimiter applies to --format csv");
    refused(&["--format", "xlsx"], "give the query");
}

/// One HTTP/1.1 exchange: (status, headers, body).
async fn http(addr: SocketAddr, method: Method, path: &str, token: &str, body: &str) -> (StatusCode, HeaderMap, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn http_query_answers_xlsx_as_an_attachment_and_csv_for_excels_import() {
    // Proves: `/query?format=xlsx` answers a workbook with the spreadsheet content type and as
    // an attachment named faccia.xlsx, with Agliè's code as text and its votes as a number;
    // `format=csv&bom=true&delimiter=semicolon` (or `%3B`) answers a byte-order mark and `;`;
    // a wrong parameter is a 400 naming it.
    let dir = tempfile::tempdir().unwrap();
    let credential = add(dir.path(), AGLIE, 1).remove(0);
    let server = faccia::server::Server::start(dir.path().to_path_buf(), loopback_config()).await.unwrap();
    let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
    let mut terminal = Terminal::new(credential, endpoint, target(&server), 4);
    terminal.enqueue(&human_votes(faccia::clock::now_ms() - 600_000, 30)).unwrap();
    let (acknowledged, _) = deliver(&mut terminal).await;
    terminal.close();
    let addr = server.http_addr.unwrap();
    let token = std::fs::read_to_string(dir.path().join(faccia::analysts::tokens::TOKEN_FILE)).unwrap().trim().to_string();
    let query = "SELECT municipality, istat_code, name, votes FROM municipality_index";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (status, headers, body) = loop {
        let answer = http(addr, Method::POST, "/query?format=xlsx", &token, query).await;
        if answer.0 != StatusCode::OK || sheet(&answer.2).height() == 2 || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], XLSX);
    assert_eq!(headers["content-disposition"], r#"attachment; filename="faccia.xlsx""#);
    let range = sheet(&body);
    assert_eq!(header(&range), ["municipality", "istat_code", "name", "votes"]);
    let row = range.rows().nth(1).expect("Agliè's row");
    assert_eq!((number(&row[0]), text(&row[1]), text(&row[2]), number(&row[3])), (1001.0, "001001", "Agliè", acknowledged as f64));

    for delimiter in ["semicolon", "%3B"] {
        let path = format!("/query?format=csv&bom=true&delimiter={delimiter}");
        let (status, headers, body) = http(addr, Method::POST, &path, &token, query).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
        assert_eq!(&body[..3], b"\xEF\xBB\xBF");
        let rows = records(&body[3..], b';');
        assert_eq!(rows, [vec!["municipality", "istat_code", "name", "votes"], vec!["1001", "001001", "Agliè", &acknowledged.to_string()]]);
    }
    let (_, headers, body) = http(addr, Method::POST, "/query?format=csv-excel", &token, query).await;
    assert_eq!(headers["content-disposition"], r#"attachment; filename="faccia.csv""#);
    assert!(body.starts_with(b"\xEF\xBB\xBFmunicipality;istat_code;name;votes\n1001;\"=\"\"001001\"\"\";Agli"), "{body:?}");

    for (path, needle) in [
        ("/query?format=csv&delimiter=pipe", "delimiter"),
        ("/query?format=csv&bom=yes", "bom"),
        ("/query?format=json&bom=true", "apply to format=csv"),
    ] {
        let (status, _, body) = http(addr, Method::POST, path, &token, query).await;
        let message = String::from_utf8_lossy(&body);
        assert!(status == StatusCode::BAD_REQUEST && message.contains(needle), "{path}: {status} {message}");
    }
    server.stop().await;
}
