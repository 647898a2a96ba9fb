//! `faccia bulletin` as the programme office runs it: a generated month of votes, terminals
//! registered with their purchases through the CLI, the bulletin written; every number of its
//! CSV files compared with SQL run independently (the views, or counts over `counted_votes`),
//! the workbook read back with calamine, a sample of the page checked, and the settlement's
//! bonus rule (once per administration, 460 € ceiling, a union, two suppliers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use calamine::{Data, Reader, Xlsx};

fn faccia(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faccia")).args(args).output().expect("faccia runs")
}

fn ok(args: &[&str]) -> String {
    let out = faccia(args);
    assert!(out.status.success(), "faccia {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(args: &[&str]) -> String {
    let out = faccia(args);
    assert!(!out.status.success(), "faccia {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

type Rows = Vec<HashMap<String, String>>;

/// A `csv-excel` file as rows by column name: byte-order mark, `;`, `="001001"` for codes.
fn csv(path: &Path) -> Rows {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = text.strip_prefix('\u{feff}').expect("a byte-order mark");
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(';').map(String::from).collect();
    let unquote = |v: &str| v.trim_matches('"').replace("=\"\"", "").replace("\"\"", "");
    lines.map(|l| header.iter().cloned().zip(l.split(';').map(unquote)).collect()).collect()
}

/// SQL run in this process over `data` (`query::context`, what `faccia sql` opens), as text.
async fn sql(data: &Path, query: &str) -> Rows {
    let ctx = faccia::query::context(data).await.unwrap();
    let batches = faccia::query::run(&ctx, query).await.unwrap_or_else(|e| panic!("{query}: {e}"));
    let mut rows = Vec::new();
    for b in &batches {
        let columns: Vec<_> = b.columns().iter().map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap()).collect();
        for r in 0..b.num_rows() {
            rows.push(
                b.schema()
                    .fields()
                    .iter()
                    .zip(&columns)
                    .map(|(f, c)| {
                        let c = c.as_string::<i32>();
                        (f.name().clone(), if c.is_null(r) { String::new() } else { c.value(r).to_string() })
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// A number as either file writes it (`67,5` or `67.5`); NaN for an empty cell.
fn num(text: &str) -> f64 {
    if text.is_empty() { f64::NAN } else { text.replace(',', ".").parse().unwrap_or_else(|_| panic!("a number: {text:?}")) }
}

/// Asserts the two rows agree on `columns` as numbers (empty = empty).
fn same(what: &str, ours: &HashMap<String, String>, theirs: &HashMap<String, String>, columns: &[&str]) {
    for c in columns {
        let (a, b) = (&ours[*c], &theirs[*c]);
        assert!(a.is_empty() && b.is_empty() || (num(a) - num(b)).abs() < 1e-9, "{what}, {c}: bulletin {a:?}, SQL {b:?}");
    }
}

fn by(rows: &Rows, key: &str) -> HashMap<String, HashMap<String, String>> {
    rows.iter().map(|r| (r[key].clone(), r.clone())).collect()
}

/// Two months of generated votes, and terminals with purchases registered through the CLI.
fn dataset() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    ok(&["generate", "--data-dir", d, "--votes", "20000", "--days", "61", "--end", "2026-11-30", "--seed", "29"]);
    // Albiano d'Ivrea (1,791 inhabitants): no digital signature, no PEC: 460 €.
    ok(&["administrations", "--data-dir", d, "set", "001004", "--digital-signature", "no", "--pec", "no"]);
    ok(&["unions", "--data-dir", d, "add", "--code", "UM-TEST", "--name", "Unione di prova", "--members", "001003,001002", "--pec", "no"]);
    let add = |m: &str, extra: &[&str]| {
        let mut args = vec!["terminals", "--data-dir", d, "add", "--municipality", m];
        args.extend_from_slice(extra);
        ok(&args);
    };
    add("001004", &["--supplier", "Alfa Srl", "--order", "ODA:101", "--bought", "2026-11-03"]); // 1: 460 €
    add("001004", &["--supplier", "Beta Spa", "--order", "RdO:202", "--bought", "2026-11-20"]); // 2: second, other supplier
    add("001001", &["--supplier", "Alfa Srl", "--order", "ODA:103", "--bought", "2026-10-15"]); // 3: October's bonus
    add("001001", &["--supplier", "Beta Spa", "--order", "ODA:104", "--bought", "2026-11-05"]); // 4: a month later: nothing
    add("001003", &["--union", "UM-TEST", "--supplier", "Beta Spa", "--order", "RdO:105", "--bought", "2026-11-12"]); // 5: the union's
    add("001002", &["--union", "UM-TEST", "--supplier", "Beta Spa", "--order", "RdO:106", "--bought", "2026-11-13"]); // 6: nothing
    add("001006", &[]); // 7: Almese (6,303 inhabitants), recorded later
    ok(&["terminals", "--data-dir", d, "set", "7", "--supplier", "Gamma", "--order", "oda:9", "--bought", "2026-11-25"]);
    (dir, data)
}

fn bulletin(data: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["bulletin", "--data-dir", data.to_str().unwrap(), "--month", "2026-11", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(&args)
}

const MONTH: &str = "date >= DATE '2026-11-01' AND date < DATE '2026-12-01'";
const PREVIOUS: &str = "date >= DATE '2026-10-01' AND date < DATE '2026-11-01'";

#[tokio::test(flavor = "multi_thread")]
async fn the_bulletins_numbers_are_the_views_numbers() {
    // Proves (invariant 29): every number of the bulletin's CSV files equals SQL run
    // independently — the views `service_index_monthly` and `service_trend_monthly`, counts over
    // `counted_votes`, `coverage_by_region_month` — the workbook holds the same tables, the page
    // shows them in Italian with inline SVG and nothing external, and the settlement follows the
    // bonus rule: once per administration (a second terminal earns nothing, that month or
    // later), 460 € without signature and PEC, a union as one administration, the first
    // purchase's supplier paid.
    let (dir, data) = dataset();
    let out = dir.path().join("out");
    let printed = bulletin(&data, &out, &[]);
    let file = |name: &str| out.join(format!("bollettino-2026-11{name}"));
    for name in ["channels", "coverage", "services", "reasons", "settlement", "invoices"] {
        assert!(printed.contains(&format!("bollettino-2026-11-{name}.csv")), "{printed}");
    }

    // Channels: votes, weekly average, positive share, against raw counts; change and z with
    // the index functions over the raw counts of both months.
    let channels = by(&csv(&file("-channels.csv")), "channel_name");
    let counts = format!(
        "WITH c AS (SELECT coalesce(ch.name, 'total') AS channel_name,
                    count(*) FILTER (WHERE {MONTH}) AS votes, count(*) FILTER (WHERE {MONTH} AND face = 1) AS positive,
                    count(*) FILTER (WHERE {PREVIOUS}) AS pv, count(*) FILTER (WHERE {PREVIOUS} AND face = 1) AS pp
                    FROM counted_votes v LEFT JOIN channels ch ON ch.channel = v.channel GROUP BY ROLLUP(ch.name))
         SELECT channel_name, votes, positive, round(votes * 7.0 / 30, 1) AS votes_per_week,
                round(100.0 * positive / votes, 1) AS positive_pct, pv AS previous_votes,
                round(100.0 * pp / pv, 1) AS previous_positive_pct,
                round(100.0 * positive / votes - 100.0 * pp / pv, 1) AS change_pts, round(change_z(positive, votes, pp, pv), 2) AS z
         FROM c"
    );
    let expected = sql(&data, &counts).await;
    assert_eq!(expected.len(), 4, "three channels and the total");
    for row in &expected {
        let ours = &channels[&row["channel_name"]];
        let columns = ["votes", "positive", "votes_per_week", "positive_pct", "previous_votes", "previous_positive_pct", "change_pts", "z"];
        same(&row["channel_name"], ours, row, &columns);
    }

    // Services: the view of monthly indices and the view of monthly trends, row by row.
    let services = csv(&file("-services.csv"));
    let monthly = by(&sql(&data, "SELECT * FROM service_index_monthly WHERE month = DATE '2026-11-01'").await, "service");
    let trend = by(&sql(&data, "SELECT * FROM service_trend_monthly WHERE period = DATE '2026-11-01'").await, "service");
    assert_eq!(services.len(), monthly.len());
    for s in &services {
        let what = format!("service {}", s["service"]);
        same(
            &what,
            s,
            &monthly[&s["service"]],
            &["votes", "positive", "neutral", "negative", "csat_pct", "wilson_low_pct", "wilson_high_pct"],
        );
        let t = &trend[&s["service"]];
        same(&what, s, t, &["previous_votes", "change_pts", "z"]);
        assert_eq!(s["significant"], t["significant"], "{what}");
    }
    let lows: Vec<f64> = services.iter().filter(|s| !s["rank"].is_empty()).map(|s| num(&s["wilson_low_pct"])).collect();
    assert!(lows.len() >= 10 && lows.windows(2).all(|w| w[0] >= w[1]), "ranked by the Wilson lower bound: {lows:?}");

    // Reasons for red faces, against raw counts.
    let reasons = by(&csv(&file("-reasons.csv")), "reason_name");
    let raw = sql(
        &data,
        &format!(
            "SELECT coalesce(r.name, 'not given') AS reason_name, count(*) AS negative_votes,
                    round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS share_pct
             FROM counted_votes v LEFT JOIN reasons r ON r.reason = v.reason WHERE {MONTH} AND face = -1 GROUP BY 1"
        ),
    )
    .await;
    assert_eq!(raw.len(), reasons.len());
    for row in &raw {
        same(&row["reason_name"], &reasons[&row["reason_name"]], row, &["negative_votes", "share_pct"]);
    }

    // Coverage: comuni with votes against raw counts; eligible ones against the view by region
    // and month, plus the eligible unions with votes of their own terminals.
    let coverage = by(&csv(&file("-coverage.csv")), "region");
    let comuni = by(
        &sql(
            &data,
            &format!(
                "SELECT m.region, count(DISTINCT v.municipality) AS comuni_with_votes
                 FROM counted_votes v JOIN municipalities m ON m.municipality = v.municipality WHERE {MONTH} GROUP BY m.region"
            ),
        )
        .await,
        "region",
    );
    let view = sql(&data, "SELECT region, eligible, with_votes FROM coverage_by_region_month WHERE month = DATE '2026-11-01'").await;
    let unions = by(
        &sql(
            &data,
            &format!(
                "SELECT u.region, count(*) FILTER (WHERE u.eligible) AS eligible,
                        count(DISTINCT w.union_code) FILTER (WHERE u.eligible) AS with_votes
                 FROM unions u LEFT JOIN (SELECT DISTINCT t.union_code FROM counted_votes c JOIN terminals t ON t.terminal = c.terminal
                                          WHERE c.{MONTH}) w ON w.union_code = u.union_code GROUP BY u.region"
            ),
        )
        .await,
        "region",
    );
    assert_eq!(view.len(), 20, "every region has votes in the generated month");
    let (mut eligible, mut with_votes) = (0.0, 0.0);
    for row in &view {
        let ours = &coverage[&row["region"]];
        same(&row["region"], ours, &comuni[&row["region"]], &["comuni_with_votes"]);
        let extra = unions.get(&row["region"]).map_or((0.0, 0.0), |u| (num(&u["eligible"]), num(&u["with_votes"])));
        assert_eq!(num(&ours["eligible"]), num(&row["eligible"]) + extra.0, "{}", row["region"]);
        assert_eq!(num(&ours["eligible_with_votes"]), num(&row["with_votes"]) + extra.1, "{}", row["region"]);
        eligible += num(&ours["eligible"]);
        with_votes += num(&ours["eligible_with_votes"]);
    }
    let total = &coverage["total"];
    assert_eq!((num(&total["eligible"]), num(&total["eligible_with_votes"])), (eligible, with_votes));
    assert!((num(&total["coverage_pct"]) - (1000.0 * with_votes / eligible).round() / 10.0).abs() < 1e-9);

    // The settlement: November's purchases with what each earns, and each supplier's invoice.
    let settlement = by(&csv(&file("-settlement.csv")), "terminal");
    let albiano = sql(&data, "SELECT bonus_eur FROM administrations WHERE istat_code = '001004'").await;
    let union = sql(&data, "SELECT bonus_eur FROM unions WHERE union_code = 'UM-TEST'").await;
    assert_eq!(albiano[0]["bonus_eur"], "460", "no signature and no PEC: the ceiling");
    assert_eq!(union[0]["bonus_eur"], "410");
    let line = |t: &str| (settlement[t]["supplier"].as_str(), settlement[t]["bonus_eur"].as_str(), settlement[t]["outcome"].as_str());
    assert_eq!(line("1"), ("Alfa Srl", albiano[0]["bonus_eur"].as_str(), "bonus"));
    assert_eq!(line("2"), ("Beta Spa", "0", "already_granted"), "a second terminal, another supplier, the same month");
    assert_eq!(settlement["2"]["granted_with_terminal"], "1");
    assert!(!settlement.contains_key("3"), "bought in October: October's settlement");
    assert_eq!(line("4"), ("Beta Spa", "0", "already_granted"), "a second terminal a month later");
    assert_eq!(line("5"), ("Beta Spa", union[0]["bonus_eur"].as_str(), "bonus"));
    assert_eq!((line("6"), settlement["6"]["administration"].as_str()), (("Beta Spa", "0", "already_granted"), "UM-TEST"));
    assert_eq!(line("7"), ("Gamma", "0", "not_eligible"));
    assert_eq!(settlement["7"]["order_ref"], "ODA:9");
    let invoices = by(&csv(&file("-invoices.csv")), "supplier");
    let invoice = |s: &str| (num(&invoices[s]["administrations"]), num(&invoices[s]["terminals"]), num(&invoices[s]["total_eur"]));
    assert_eq!(invoice("Alfa Srl"), (1.0, 1.0, 460.0));
    assert_eq!(invoice("Beta Spa"), (1.0, 4.0, 410.0));
    assert_eq!(invoice("Gamma"), (0.0, 1.0, 0.0));
    let october = dir.path().join("october");
    let d = data.to_str().unwrap();
    ok(&["bulletin", "--data-dir", d, "--month", "2026-10", "--out", october.to_str().unwrap()]);
    let october = by(&csv(&october.join("bollettino-2026-10-settlement.csv")), "terminal");
    assert_eq!((october.len(), october["3"]["bonus_eur"].as_str(), october["3"]["outcome"].as_str()), (1, "400", "bonus"));

    // The purchase columns of the `terminals` table.
    let t7 =
        sql(&data, "SELECT supplier, order_kind, order_number, CAST(bought AS VARCHAR) AS bought FROM terminals WHERE terminal = 7").await;
    assert_eq!(
        (&*t7[0]["supplier"], &*t7[0]["order_kind"], &*t7[0]["order_number"], &*t7[0]["bought"]),
        ("Gamma", "ODA", "9", "2026-11-25")
    );

    // The workbook: a sheet per table, the same cells.
    let mut workbook: Xlsx<_> = calamine::open_workbook(file(".xlsx")).unwrap();
    assert_eq!(workbook.sheet_names(), ["channels", "coverage", "services", "reasons", "settlement", "invoices"]);
    let sheet = workbook.worksheet_range("channels").unwrap();
    let total_votes = num(&channels["total"]["votes"]);
    assert_eq!(sheet.get_value((4, 1)), Some(&Data::String("total".into())));
    assert_eq!(sheet.get_value((4, 2)), Some(&Data::Float(total_votes)));
    let sheet = workbook.worksheet_range("invoices").unwrap();
    let alfa = (1..sheet.height() as u32).find(|r| sheet.get_value((*r, 0)) == Some(&Data::String("Alfa Srl".into()))).unwrap();
    assert_eq!(sheet.get_value((alfa, 4)), Some(&Data::Float(460.0)));

    // The page: Italian numbers from the tables, inline SVG, nothing external.
    let page = std::fs::read_to_string(file(".html")).unwrap();
    let italian = |n: f64| {
        let digits = (n as i64).to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push('.');
            }
            out.push(c);
        }
        out
    };
    assert!(page.contains(&format!(">{}<", italian(total_votes))), "the month's votes, Italian style");
    assert!(page.contains(&format!("{} %", channels["total"]["positive_pct"])), "the positive share as 67,5 %");
    assert!(page.contains(&format!("{} %", coverage["total"]["coverage_pct"])));
    assert!(page.contains(&services[0]["name_it"]), "the first-ranked service");
    assert!(page.contains(&format!("{} €", invoice("Alfa Srl").2 + invoice("Beta Spa").2)), "the month's bonus total");
    assert!(page.contains("<svg") && page.contains("@page") && page.contains("@media print"));
    assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="));
    assert_eq!(page.matches("http").count(), page.matches("http://www.w3.org/2000/svg").count(), "no external URL");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_region_or_a_municipality_restricts_every_number_and_bad_flags_are_named() {
    // Proves: --region and --municipality restrict the votes, the coverage and the settlement
    // in SQL (the totals equal counts over that scope alone), --lang en writes the page in
    // English, and an unknown region or code, a bad month, order or date are errors naming the
    // flag and the accepted form.
    let (dir, data) = dataset();
    let d = data.to_str().unwrap();
    let region = dir.path().join("piemonte");
    bulletin(&data, &region, &["--region", "piemonte", "--lang", "en"]);
    let channels = by(&csv(&region.join("bollettino-2026-11-channels.csv")), "channel_name");
    let count = sql(&data, &format!("SELECT count(*) AS votes FROM counted_votes v JOIN municipalities m ON m.municipality = v.municipality WHERE m.region = 'Piemonte' AND v.{MONTH}")).await;
    same("Piemonte", &channels["total"], &count[0], &["votes"]);
    let coverage = csv(&region.join("bollettino-2026-11-coverage.csv"));
    assert_eq!(coverage.iter().map(|r| r["region"].as_str()).collect::<Vec<_>>(), ["Piemonte", "total"]);
    let page = std::fs::read_to_string(region.join("bollettino-2026-11.html")).unwrap();
    assert!(page.contains("Monthly bulletin") && page.contains("Piemonte") && !page.contains("Bollettino mensile"));

    // The municipality with the most votes this month.
    let top = sql(&data, &format!("SELECT istat_code, count(*) AS votes FROM counted_votes WHERE {MONTH} GROUP BY istat_code ORDER BY votes DESC, istat_code LIMIT 1")).await;
    let one = dir.path().join("one");
    bulletin(&data, &one, &["--municipality", &top[0]["istat_code"]]);
    let channels = by(&csv(&one.join("bollettino-2026-11-channels.csv")), "channel_name");
    same("one municipality", &channels["total"], &top[0], &["votes"]);
    let reasons = csv(&one.join("bollettino-2026-11-reasons.csv"));
    let red: f64 = reasons.iter().map(|r| num(&r["negative_votes"])).sum();
    let expected = sql(
        &data,
        &format!("SELECT count(*) AS n FROM counted_votes WHERE {MONTH} AND face = -1 AND istat_code = '{}'", top[0]["istat_code"]),
    )
    .await;
    assert_eq!(red, num(&expected[0]["n"]));
    let albiano = dir.path().join("albiano");
    bulletin(&data, &albiano, &["--municipality", "001004"]);
    let settlement = csv(&albiano.join("bollettino-2026-11-settlement.csv"));
    assert_eq!(settlement.iter().map(|r| r["terminal"].as_str()).collect::<Vec<_>>(), ["1", "2"], "only the purchases standing there");

    let out = dir.path().join("refused");
    let o = out.to_str().unwrap();
    let e = refused(&["bulletin", "--data-dir", d, "--month", "2026-11", "--region", "Atlantide", "--out", o]);
    assert!(e.contains("--region \"Atlantide\" is not a region of the registry; the regions are: Abruzzo"), "{e}");
    let e = refused(&["bulletin", "--data-dir", d, "--month", "2026-11", "--municipality", "999999", "--out", o]);
    assert!(e.contains("--municipality 999999 is not a municipality of the registry"), "{e}");
    let e = refused(&["bulletin", "--data-dir", d, "--month", "2026-11", "--municipality", "Ala", "--out", o]);
    assert!(e.contains("--municipality \"Ala\" is not an ISTAT code (six digits"), "{e}");
    let e = refused(&["bulletin", "--data-dir", d, "--month", "11/2026", "--out", o]);
    assert!(e.contains("--month \"11/2026\" is not a month: give YYYY-MM"), "{e}");
    let e = refused(&["terminals", "--data-dir", d, "add", "--municipality", "001004", "--order", "MEPA:1"]);
    assert!(e.contains("--order \"MEPA:1\" is not an order: give ODA:NUMBER (direct order) or RdO:NUMBER"), "{e}");
    let e = refused(&["terminals", "--data-dir", d, "set", "1", "--bought", "03/11/2026"]);
    assert!(e.contains("--bought \"03/11/2026\" is not a date: give YYYY-MM-DD"), "{e}");
    let e = refused(&["terminals", "--data-dir", d, "set", "99", "--supplier", "Alfa"]);
    assert!(e.contains("terminal 99 is not registered"), "{e}");
    let e = refused(&["terminals", "--data-dir", d, "set", "1"]);
    assert!(e.contains("give what to record: --supplier NAME"), "{e}");
    assert!(!out.exists(), "nothing written after an error");
}
