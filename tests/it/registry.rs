//! The registry as the country changes it: `faccia registry import` of a newer ISTAT list in
//! ISTAT's own layout (Latin-1, `;`, ISTAT's header), made here from the shipped 2020 list with
//! a merger (Agliè and Ala di Stura into a new comune) and a renumbering (the 107 comuni of
//! province SU under new codes, as Sardinia's 2026 codes); terminals of a suppressed comune
//! keep delivering and their votes join the successor in the views.

use std::path::Path;
use std::process::{Command, Output};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, UInt32Type};
use faccia::model::IstatCode;
use faccia::terminal::client::Terminal;

use crate::common::*;

/// The merger's new comune.
const AGLIE_STURA: IstatCode = IstatCode(1320);
/// Arbus (SU), renumbered into the new province 118.
const ARBUS: IstatCode = IstatCode(111_001);
const ARBUS_2026: IstatCode = IstatCode(118_001);

/// ISTAT's header of the 2020 list (two cells span two lines, as ISTAT writes them); the
/// population column, which newer editions lack, is last and optional here.
const HEADER: &str = "Codice Regione;\"Codice dell'Unità territoriale sovracomunale \n(valida a fini statistici)\";Codice Provincia (Storico)(1);\
Progressivo del Comune (2);Codice Comune formato alfanumerico;Denominazione (Italiana e straniera);Denominazione in italiano;\
Denominazione altra lingua;Codice Ripartizione Geografica;Ripartizione geografica;Denominazione regione;\"Denominazione dell'Unità \
territoriale sovracomunale \n(valida a fini statistici)\";Flag Comune capoluogo di provincia/città metropolitana/libero consorzio;\
Sigla automobilistica;Codice Comune formato numerico";
const POPULATION: &str = ";Popolazione legale 2011 (09/10/2011)";

/// A comune as `data/comuni.csv` has it.
struct Comune {
    code: u32,
    name: String,
    province: String,
    region_code: u8,
    region: String,
    area: String,
    population: u32,
}

fn shipped() -> Vec<Comune> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/comuni.csv");
    csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(|r| {
            let r = r.unwrap();
            Comune {
                code: r[0].parse().unwrap(),
                name: r[1].to_string(),
                province: r[2].to_string(),
                region_code: r[3].parse().unwrap(),
                region: r[4].to_string(),
                area: r[5].to_string(),
                population: r[6].parse().unwrap(),
            }
        })
        .collect()
}

/// The 2026 list: the shipped one with Agliè and Ala di Stura merged into `AGLIE_STURA` and
/// province SU renumbered to 118 (`MD`).
fn edition_2026() -> Vec<Comune> {
    let mut list: Vec<Comune> = shipped().into_iter().filter(|c| c.code != 1001 && c.code != 1003).collect();
    for c in list.iter_mut().filter(|c| c.province == "SU") {
        c.code = 118_000 + c.code % 1000;
        c.province = "MD".into();
    }
    list.push(Comune {
        code: AGLIE_STURA.0,
        name: "Agliè Stura".into(),
        province: "TO".into(),
        region_code: 1,
        region: "Piemonte".into(),
        area: "Nord-ovest".into(),
        population: 3_200,
    });
    list
}

/// `list` in ISTAT's layout, Latin-1 bytes (with the 2011 population column when `population`).
fn istat_bytes(list: &[Comune], population: bool) -> Vec<u8> {
    let mut text = String::from(HEADER);
    if population {
        text.push_str(POPULATION);
    }
    text.push_str("\r\n");
    for c in list {
        let code = format!("{:06}", c.code);
        let thousands =
            if c.population >= 1000 { format!("{}.{:03}", c.population / 1000, c.population % 1000) } else { c.population.to_string() };
        text.push_str(&format!(
            "{:02};{};{};{};{code};{name};{name};;1;{};{};Provincia;0;{};{}",
            c.region_code,
            &code[..3],
            &code[..3],
            &code[3..],
            c.area,
            c.region,
            c.province,
            c.code,
            name = c.name
        ));
        if population {
            text.push_str(&format!(";{thousands}"));
        }
        text.push_str("\r\n");
    }
    text.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')).collect()
}

/// ISTAT's variations: Agliè and Ala di Stura suppressed (ES) into `AGLIE_STURA`.
fn variations_bytes() -> Vec<u8> {
    let text = "Anno;Tipo variazione;Codice Regione;Codice Istat del Comune;Denominazione Comune;\
Codice Istat del Comune associato alla variazione o nuovo codice Istat del Comune;\
Denominazione Comune associata alla variazione o nuova denominazione;Provvedimento e Documento;\
Contenuto del provvedimento;Data decorrenza validità amministrativa\r\n\
2026;CS;01;001320;Agliè Stura;;;L.R. 1/2025;Istituzione;01/01/2026\r\n\
2026;ES;01;001001;Agliè;001320;Agliè Stura;L.R. 1/2025;Fusione;01/01/2026\r\n\
2026;ES;01;001003;Ala di Stura;001320;Agliè Stura;L.R. 1/2025;Fusione;01/01/2026\r\n";
    text.chars().map(|c| u8::try_from(u32::from(c)).unwrap()).collect()
}

fn faccia(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faccia")).arg("registry").arg("--data-dir").arg(dir).args(args).output().expect("faccia runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes the 2026 list and its variations into `dir` and imports them with the binary.
fn import_2026(data: &Path, files: &Path, population: bool) -> Output {
    let list = files.join("Elenco-comuni-italiani-al-01_01_2026.csv");
    std::fs::write(&list, istat_bytes(&edition_2026(), population)).unwrap();
    let variations = files.join("variazioni.csv");
    std::fs::write(&variations, variations_bytes()).unwrap();
    faccia(data, &["import", list.to_str().unwrap(), "--variations", variations.to_str().unwrap()])
}

async fn rows(dir: &Path, sql: &str) -> Vec<RecordBatch> {
    let ctx = faccia::query::context(dir).await.unwrap();
    faccia::query::run(&ctx, sql).await.unwrap()
}

async fn text_of(dir: &Path, sql: &str) -> String {
    let ctx = faccia::query::context(dir).await.unwrap();
    let batches = faccia::query::run(&ctx, sql).await.unwrap();
    let column = arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Utf8).unwrap();
    column.as_string::<i32>().value(0).to_string()
}

#[tokio::test]
async fn an_import_maps_a_merger_and_a_renumbering_to_their_successors() {
    // Proves: an ISTAT list (Latin-1, ';', ISTAT's header, no population column) and ISTAT's
    // variations become the data directory's edition: a merger and 107 renumberings recorded as
    // successors, the new comune's population the sum of its predecessors', the edition shown in
    // SQL and by `faccia registry list`, and a suppressed code refused for new terminals.
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let shipped = shipped();
    let su = shipped.iter().filter(|c| c.province == "SU").count() as i64;
    let imported = import_2026(data.path(), files.path(), false);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    let report = text(&imported.stderr);
    assert!(report.contains(&format!("2 suppressed by a merger, {su} renumbered")), "{report}");
    assert!(report.contains("001001") && report.contains("001320") && report.contains("merger"), "{report}");

    let dir = data.path();
    assert_eq!(count(dir, "SELECT count(*) FROM municipalities").await, shipped.len() as i64 - 1);
    assert_eq!(count(dir, "SELECT count(*) FROM municipalities WHERE edition = DATE '2026-01-01'").await, shipped.len() as i64 - 1);
    let pair = shipped.iter().filter(|c| c.code == 1001 || c.code == 1003).map(|c| i64::from(c.population)).sum::<i64>();
    assert_eq!(count(dir, "SELECT CAST(population AS BIGINT) FROM municipalities WHERE municipality = 1320").await, pair);
    assert_eq!(text_of(dir, "SELECT name FROM municipalities WHERE municipality = 1320").await, "Agliè Stura", "Latin-1 read");
    let arbus = shipped.iter().find(|c| c.code == ARBUS.0).unwrap().population;
    assert_eq!(
        count(dir, &format!("SELECT CAST(population AS BIGINT) FROM municipalities WHERE municipality = {}", ARBUS_2026.0)).await,
        i64::from(arbus)
    );
    assert_eq!(count(dir, "SELECT count(*) FROM municipalities WHERE province = 'SU'").await, 0);

    assert_eq!(count(dir, "SELECT count(*) FROM registry_editions").await, 2);
    assert_eq!(text_of(dir, "SELECT edition FROM registry_editions WHERE current").await, "2026-01-01");
    assert_eq!(text_of(dir, "SELECT source FROM registry_editions WHERE current").await, "Elenco-comuni-italiani-al-01_01_2026.csv");
    assert_eq!(count(dir, "SELECT CAST(suppressed AS BIGINT) FROM registry_editions WHERE current").await, 2);
    assert_eq!(count(dir, "SELECT CAST(renumbered AS BIGINT) FROM registry_editions WHERE current").await, su);
    assert_eq!(count(dir, "SELECT CAST(new AS BIGINT) FROM registry_editions WHERE current").await, su + 1);
    assert_eq!(count(dir, "SELECT count(*) FROM registry_editions WHERE imported_at IS NOT NULL").await, 1);

    assert_eq!(count(dir, "SELECT count(*) FROM municipality_successors WHERE kind = 'merger' AND current = 1320").await, 2);
    assert_eq!(count(dir, "SELECT count(*) FROM municipality_successors WHERE kind = 'renumbering'").await, su);
    assert_eq!(
        text_of(dir, &format!("SELECT current_istat_code FROM municipality_successors WHERE municipality = {}", ARBUS.0)).await,
        "118001"
    );
    assert_eq!(text_of(dir, "SELECT date FROM municipality_successors WHERE municipality = 1003").await, "2026-01-01");

    let list = faccia(dir, &["list"]);
    let listed = text(&list.stdout);
    assert!(list.status.success() && listed.contains("2020-01-01") && listed.contains("built in"), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("2026-01-01") && l.contains(&format!("{}", shipped.len() - 1))), "{listed}");

    let refused = Command::new(env!("CARGO_BIN_EXE_faccia"))
        .args(["terminals", "--data-dir"])
        .arg(dir)
        .args(["add", "--municipality", "001001"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("its successor is 001320"), "{}", text(&refused.stderr));
    // A second import of the same edition is refused: editions only move forward.
    let again = import_2026(dir, files.path(), false);
    assert!(!again.status.success() && text(&again.stderr).contains("not newer than"), "{}", text(&again.stderr));
}

#[tokio::test]
async fn terminals_of_a_suppressed_comune_keep_delivering_and_count_under_the_successor() {
    // Proves: after an import made while the server runs, terminals registered in a merged and
    // in a renumbered comune still connect and deliver (QUIC on loopback), a terminal of the new
    // comune joins them, and the views group every vote under the comune that exists now while
    // `votes` and `municipality_index_as_voted` keep the code as voted.
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let dir = data.path();
    let aglie = add(dir, AGLIE, 1).remove(0);
    let arbus = add(dir, ARBUS, 1).remove(0);
    let server = start(dir).await;
    let now = faccia::clock::now_ms();
    let send = |credential: faccia::registry::Credential, at: i64, n: usize| {
        let server = &server;
        async move {
            let endpoint = faccia::terminal::client::client_endpoint(server.ingest_addr).unwrap();
            let mut terminal = Terminal::new(credential, endpoint, target(server), 4);
            terminal.enqueue(&human_votes(at, n)).unwrap();
            let (votes, _) = deliver(&mut terminal).await;
            terminal.close();
            votes
        }
    };
    assert_eq!(send(aglie.clone(), now - 7_200_000, 10).await, 10);
    assert_eq!(send(arbus.clone(), now - 7_200_000, 5).await, 5);

    let imported = import_2026(dir, files.path(), true);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    // A terminal of the new comune: its registration makes the server reload its directory
    // under the new edition.
    let stura = add(dir, AGLIE_STURA, 1).remove(0);
    // The server re-reads its directory every 2 s.
    tokio::time::sleep(std::time::Duration::from_millis(4_500)).await;
    assert_eq!(send(aglie, now - 3_600_000, 20).await, 20, "a terminal of a suppressed comune keeps delivering");
    assert_eq!(send(arbus, now - 3_600_000, 5).await, 5, "a terminal of a renumbered comune keeps delivering");
    assert_eq!(send(stura, now - 3_600_000, 7).await, 7);
    server.stop().await;

    assert_eq!(count(dir, "SELECT count(*) FROM votes WHERE municipality = 1001").await, 30, "votes keep their registration code");
    assert_eq!(count(dir, "SELECT votes FROM municipality_index WHERE municipality = 1320").await, 37);
    assert_eq!(count(dir, "SELECT count(*) FROM municipality_index WHERE municipality = 1001").await, 0);
    assert_eq!(count(dir, &format!("SELECT votes FROM municipality_index WHERE municipality = {}", ARBUS_2026.0)).await, 10);
    assert_eq!(text_of(dir, "SELECT province FROM municipality_index WHERE municipality = 118001").await, "MD");
    assert_eq!(count(dir, "SELECT votes FROM municipality_index_as_voted WHERE municipality = 1001").await, 30);
    assert_eq!(
        count(dir, "SELECT CAST(current_municipality AS BIGINT) FROM municipality_index_as_voted WHERE municipality = 1001").await,
        1320
    );
    assert_eq!(text_of(dir, "SELECT name FROM municipality_index_as_voted WHERE municipality = 1001").await, "Agliè");
    assert_eq!(count(dir, "SELECT CAST(sum(votes) AS BIGINT) FROM municipality_index").await, 47);
    assert_eq!(count(dir, "SELECT CAST(sum(votes) AS BIGINT) FROM province_index WHERE province = 'MD'").await, 10);
    assert_eq!(count(dir, "SELECT CAST(terminals_active AS BIGINT) FROM administration_coverage WHERE municipality = 1320").await, 2);
    assert_eq!(count(dir, "SELECT votes FROM administration_coverage WHERE municipality = 1320").await, 37);
    assert_eq!(
        count(dir, "SELECT CAST(population AS BIGINT) FROM municipalities WHERE municipality = 1320").await,
        3_200,
        "the list's population"
    );
    // The Sardinian votes keep their region in the region rollup.
    let region = rows(dir, "SELECT region_code, votes FROM region_index WHERE region_code = 20").await;
    assert_eq!(region[0].column(1).as_primitive::<Int64Type>().value(0), 10);
    let ranking = rows(dir, "SELECT DISTINCT municipality FROM municipality_service_ranking ORDER BY 1").await;
    let codes: Vec<u32> = ranking.iter().flat_map(|b| b.column(0).as_primitive::<UInt32Type>().values().to_vec()).collect();
    assert_eq!(codes, [AGLIE_STURA.0, ARBUS_2026.0]);
}

#[tokio::test]
async fn a_malformed_import_names_its_line_and_field_and_changes_nothing() {
    // Proves: a list that is not ISTAT's layout (comma-separated), a bad code, a comune that
    // vanished with no successor, and a missing edition each stop the import with an error that
    // names the line, field or comune; nothing is written.
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let dir = data.path();
    let write = |name: &str, bytes: Vec<u8>| {
        let path = files.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let refused = |args: &[&str], expected: &[&str]| {
        let out = faccia(dir, args);
        let error = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        for e in expected {
            assert!(error.contains(e), "{args:?}: {e:?} not in {error}");
        }
        assert!(!dir.join("registry").join("catalog.json").exists(), "{args:?} wrote the registry");
    };

    let commas = String::from_utf8_lossy(&istat_bytes(&edition_2026(), true)).replace(';', ",");
    let path = write("istat20260101.csv", commas.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')).collect());
    refused(&["import", &path], &["line 1", "';'-separated", "Codice Regione"]);

    let mut list = edition_2026();
    list[4].code = 1_234_567;
    // The header spans three lines (two quoted cells hold a line break): row 5 is on line 8.
    let path = write("istat20260101.csv", istat_bytes(&list, true));
    refused(&["import", &path], &["istat20260101.csv line 8", "Codice Comune formato alfanumerico", "1234567"]);

    let path = write("istat20260101.csv", istat_bytes(&edition_2026(), true));
    refused(&["import", &path], &["001001", "Agliè", "--variations"]);

    let path = write("comuni.csv", istat_bytes(&edition_2026(), true));
    refused(&["import", &path], &["--edition"]);
    refused(&["import", &path, "--edition", "2026-13-01"], &["--edition", "YYYY-MM-DD"]);
    refused(&["import", &path, "--edition", "2019-01-01"], &["2019-01-01", "not newer than", "2020-01-01"]);

    assert_eq!(count(dir, "SELECT count(*) FROM registry_editions").await, 1);
    assert_eq!(count(dir, "SELECT count(*) FROM municipality_successors").await, 0);
    assert_eq!(count(dir, "SELECT count(*) FROM municipalities WHERE edition = DATE '2020-01-01'").await, shipped().len() as i64);
}
