//! The bulletin as one self-contained HTML page: inline CSS with a print stylesheet (A4), charts
//! as SVG drawn here, no script, no external URL. Italian numbers and dates by default (72,5 %;
//! 29/11/2026). Every number is a cell of a table the bulletin computed with SQL; the SQL
//! behind each table is on the page (folded; left out of the print). Pure: no I/O.

use std::fmt::Write as _;

use arrow::array::RecordBatch;
use chrono::NaiveDate;

use super::{Bulletin, Lang, integer, month_name, number, text};
use crate::charts::{self, Bar, IndexBar, Numbers, Period};

/// The page's words in both languages.
struct Words {
    lang: Lang,
}

impl Words {
    fn t(&self, it: &'static str, en: &'static str) -> &'static str {
        match self.lang {
            Lang::It => it,
            Lang::En => en,
        }
    }

    fn channel(&self, name: &str) -> String {
        let it = match name {
            "counter" => "sportello",
            "phone" => "telefono",
            "web" => "web",
            "total" => "totale",
            other => other,
        };
        match self.lang {
            Lang::It => it.to_string(),
            Lang::En => name.to_string(),
        }
    }

    fn reason(&self, name: &str) -> String {
        let (it, en) = match name {
            "waiting_time" => ("tempi di attesa", "waiting time"),
            "service" => ("il servizio", "the service"),
            "had_to_come_back" => ("sono dovuto tornare", "had to come back"),
            "other" => ("altro", "other"),
            _ => ("non indicato", "not given"),
        };
        self.t(it, en).to_string()
    }
}

/// Numbers, percentages, money and dates as the language writes them.
fn grouped(n: i64, lang: Lang) -> String {
    let digits = n.unsigned_abs().to_string();
    let separator = if lang == Lang::It { '.' } else { ',' };
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(separator);
        }
        out.push(c);
    }
    if n < 0 { format!("−{out}") } else { out }
}

fn decimal(x: f64, places: usize, lang: Lang) -> String {
    let text = format!("{:.*}", places, x.abs());
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let whole = grouped(whole.parse().unwrap_or(0), lang);
    let sign = if x < 0.0 && text.bytes().any(|b| (b'1'..=b'9').contains(&b)) { "−" } else { "" };
    if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}{}{fraction}", if lang == Lang::It { ',' } else { '.' })
    }
}

fn percent(x: Option<f64>, lang: Lang) -> String {
    match (x, lang) {
        (None, _) => "–".into(),
        (Some(x), Lang::It) => format!("{} %", decimal(x, 1, lang)),
        (Some(x), Lang::En) => format!("{}%", decimal(x, 1, lang)),
    }
}

fn count(x: Option<i64>, lang: Lang) -> String {
    x.map_or_else(|| "–".into(), |x| grouped(x, lang))
}

fn euro(x: i64, lang: Lang) -> String {
    match lang {
        Lang::It => format!("{} €", grouped(x, lang)),
        Lang::En => format!("€{}", grouped(x, lang)),
    }
}

fn date(text: &str, lang: Lang) -> String {
    match (NaiveDate::parse_from_str(text, "%Y-%m-%d"), lang) {
        (Ok(d), Lang::It) => d.format("%d/%m/%Y").to_string(),
        (Ok(d), Lang::En) => d.format("%-d %b %Y").to_string(),
        (Err(_), _) => text.to_string(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A change in points with its sign, and the z's verdict in words.
fn change(batch: &RecordBatch, row: usize, w: &Words) -> (String, String) {
    let lang = w.lang;
    let pts = number(batch, "change_pts", row);
    let shown = pts.map_or_else(|| "–".into(), |p| format!("{}{}", if p > 0.0 { "+" } else { "" }, decimal(p, 1, lang)));
    let verdict = match (text(batch, "significant", row).as_deref(), number(batch, "z", row)) {
        (Some("true"), Some(z)) => format!("{} (z = {})", w.t("sì", "yes"), decimal(z, 2, lang)),
        (Some("false"), Some(z)) => format!("{} (z = {})", w.t("no", "no"), decimal(z, 2, lang)),
        _ => "–".into(),
    };
    (shown, verdict)
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{font-family:"DejaVu Sans",Verdana,Arial,sans-serif;color:#1d1d1b;margin:0 auto;max-width:960px;padding:24px;line-height:1.4;font-size:14px}
header{border-bottom:4px solid #0b5394;margin-bottom:16px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;color:#0b5394;border-bottom:1px solid #ccd}
.sub{color:#555;margin:0 0 12px}
.figures{display:grid;grid-template-columns:repeat(3,1fr);gap:10px;margin:12px 0}
.figure{border:1px solid #ccd;border-radius:4px;padding:8px 10px}
.figure .n{font-size:26px;font-weight:bold}
.figure .l{color:#444;font-size:12px}
table{border-collapse:collapse;width:100%;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid #dde;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#eef2f8}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.total td{font-weight:bold;border-top:2px solid #889}
.note{color:#555;font-size:12px}
details{margin:4px 0 12px;font-size:12px}
pre{white-space:pre-wrap;background:#f5f5f5;padding:8px;font-size:11px}
svg{display:block;margin:8px 0}
.sig{font-weight:bold}
section{break-inside:auto}
@page{size:A4;margin:15mm 12mm}
@media print{
 body{max-width:none;padding:0;font-size:10.5pt}
 details{display:none}
 h2{break-after:avoid}
 table,svg,.figures{break-inside:avoid}
 tr{break-inside:avoid}
 a{color:inherit;text-decoration:none}
}
"#;

/// The charts' number style for the page's language.
fn numbers(lang: Lang) -> &'static Numbers {
    match lang {
        Lang::It => &Numbers::ITALIAN,
        Lang::En => &Numbers::ENGLISH,
    }
}

/// Labelled bars (`charts::bars`): one per item (label, value, the value as shown).
fn bars(items: &[(String, f64, String)], max: f64, lang: Lang, title: &str) -> String {
    let rows: Vec<Bar> = items.iter().map(|(label, value, note)| Bar { label: label.clone(), value: *value, note: note.clone() }).collect();
    charts::bars(title, &rows, max, numbers(lang))
}

/// A table: header cells (text, numeric) and rows of cells; `total`: the last row is a total.
fn table(head: &[(&str, bool)], rows: &[Vec<String>], total: bool) -> String {
    let mut out = String::from("<table><thead><tr>");
    for (name, numeric) in head {
        let _ = write!(out, "<th{}>{}</th>", if *numeric { " class=\"n\"" } else { "" }, escape(name));
    }
    out.push_str("</tr></thead><tbody>");
    for (i, row) in rows.iter().enumerate() {
        let class = if total && i + 1 == rows.len() { " class=\"total\"" } else { "" };
        let _ = write!(out, "<tr{class}>");
        for (cell, (_, numeric)) in row.iter().zip(head) {
            let _ = write!(out, "<td{}>{}</td>", if *numeric { " class=\"n\"" } else { "" }, escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

fn sql_of(bulletin: &Bulletin, name: &str, w: &Words) -> String {
    let sql = &bulletin.table(name).sql;
    if sql.is_empty() {
        return String::new();
    }
    format!("<details><summary>{}</summary><pre>{}</pre></details>", w.t("La query SQL di questa tabella", "This table's SQL"), escape(sql))
}

/// The page.
///
/// # Errors
/// A table that cannot be read back as one batch (never expected).
pub(crate) fn render(bulletin: &Bulletin, generated: &str) -> anyhow::Result<String> {
    let plan = &bulletin.plan;
    let w = Words { lang: plan.lang };
    let lang = plan.lang;
    let channels = bulletin.table("channels").batch()?;
    let coverage = bulletin.table("coverage").batch()?;
    let services = bulletin.table("services").batch()?;
    let reasons = bulletin.table("reasons").batch()?;
    let settlement = bulletin.table("settlement").batch()?;
    let invoices = bulletin.table("invoices").batch()?;
    let month = month_name(plan.month, lang);
    let scope = plan.scope.title(lang);
    let mut page = format!(
        "<!DOCTYPE html><html lang=\"{code}\"><head><meta charset=\"utf-8\"><title>{title}</title><style>{STYLE}</style></head><body>\
         <header><h1>{title}</h1><p class=\"sub\">{sub}</p></header>",
        code = if lang == Lang::It { "it" } else { "en" },
        title = escape(&format!(
            "{} — {month} — {scope}",
            w.t("Bollettino mensile «Mettiamoci la faccia»", "Monthly bulletin “Mettiamoci la faccia”")
        )),
        sub = escape(&format!(
            "{} {generated}. {}",
            w.t("Prodotto da faccia il", "Produced by faccia on"),
            w.t(
                "Voti contati: esclusi quelli segnalati come uso improprio o con l'orologio del terminale errato.",
                "Counted votes: those flagged as misuse or with a wrong terminal clock are left out."
            )
        )),
    );
    page.push_str(&figures(&channels, &coverage, &invoices, &w));
    page.push_str(&channels_section(bulletin, &channels, &w));
    page.push_str(&coverage_section(bulletin, &coverage, &w));
    page.push_str(&services_section(bulletin, &services, &w));
    page.push_str(&reasons_section(bulletin, &reasons, &w));
    page.push_str(&settlement_section(&settlement, &invoices, &w));
    let _ = write!(
        page,
        "<h2>{}</h2><p class=\"note\">{}</p></body></html>",
        w.t("Note di metodo", "Method"),
        escape(w.t(
            "Media settimanale = voti del mese × 7 / giorni del mese. Quota positivi = facce verdi / voti. Intervallo di Wilson al 95 %: \
             i servizi sono ordinati per il suo limite inferiore, e quelli con meno di 30 voti non hanno posizione. Variazione: \
             differenza in punti dalla quota del mese precedente; è significativa quando il test z a due proporzioni dà |z| ≥ 1,96 (95 %). \
             Copertura = amministrazioni ammissibili (comuni sotto i 5.000 abitanti e unioni di comuni con almeno metà dei membri piccoli) \
             con voti nel mese / ammissibili. Bonus (avviso 2009): 400 € per il primo terminale o kit acquistato sul MePA, +50 € senza \
             firma digitale, +10 € senza PEC (al massimo 460 €), una sola volta per amministrazione; è pagato al fornitore del primo \
             acquisto, nel mese di quell'acquisto. Le tabelle sono anche in CSV e XLSX accanto a questa pagina.",
            "Weekly average = the month's votes × 7 / its days. Positive share = green faces / votes. Wilson 95 % interval: services are \
             ranked by its lower bound, and those with fewer than 30 votes get no rank. Change: points from the previous month's share; \
             significant when the two-proportion z test gives |z| ≥ 1.96 (95 %). Coverage = eligible administrations (comuni under 5,000 \
             inhabitants and unions of comuni with at least half of the members small) with votes in the month / eligible ones. Bonus \
             (2009 notice): 400 € for the first terminal or kit bought on the public e-marketplace, +50 € without a digital signature, \
             +10 € without PEC (460 € at most), once per administration; paid to the supplier of the first purchase, in that purchase's \
             month. The tables are also in CSV and XLSX beside this page."
        ))
    );
    Ok(page)
}

/// The key figures: votes, weekly average, positive share and its change, coverage, bonus.
fn figures(channels: &RecordBatch, coverage: &RecordBatch, invoices: &RecordBatch, w: &Words) -> String {
    let lang = w.lang;
    let total = channels.num_rows().saturating_sub(1);
    let cov = coverage.num_rows().saturating_sub(1);
    let bonus: i64 = (0..invoices.num_rows()).filter_map(|r| integer(invoices, "total_eur", r)).sum();
    let (pts, verdict) = change(channels, total, w);
    let items = [
        (count(integer(channels, "votes", total), lang), w.t("voti nel mese", "votes in the month").to_string()),
        (
            number(channels, "votes_per_week", total).map_or_else(|| "–".into(), |v| decimal(v, 1, lang)),
            w.t("voti a settimana (media)", "votes a week (average)").to_string(),
        ),
        (
            percent(number(channels, "positive_pct", total), lang),
            format!(
                "{} · {} {pts} {} · {} {verdict}",
                w.t("facce verdi ☺", "green faces ☺"),
                w.t("variazione", "change"),
                w.t("punti", "points"),
                w.t("significativa:", "significant:")
            ),
        ),
        (
            count(integer(coverage, "administrations_with_votes", cov), lang),
            w.t("amministrazioni con voti nel mese", "administrations with votes in the month").to_string(),
        ),
        (
            percent(number(coverage, "coverage_pct", cov), lang),
            format!(
                "{} ({} / {})",
                w.t("copertura delle ammissibili", "coverage of the eligible"),
                count(integer(coverage, "eligible_with_votes", cov), lang),
                count(integer(coverage, "eligible", cov), lang)
            ),
        ),
        (euro(bonus, lang), w.t("bonus da fatturare nel mese", "bonus to invoice this month").to_string()),
    ];
    let mut out = String::from("<div class=\"figures\">");
    for (n, l) in items {
        let _ = write!(out, "<div class=\"figure\"><div class=\"n\">{}</div><div class=\"l\">{}</div></div>", escape(&n), escape(&l));
    }
    out.push_str("</div>");
    out
}

fn channels_section(bulletin: &Bulletin, b: &RecordBatch, w: &Words) -> String {
    let lang = w.lang;
    let head = [
        (w.t("Canale", "Channel"), false),
        (w.t("Voti", "Votes"), true),
        (w.t("Media settimanale", "Weekly average"), true),
        (w.t("Positivi ☺", "Positive ☺"), true),
        (w.t("Mese precedente", "Previous month"), true),
        (w.t("Variazione (punti)", "Change (points)"), true),
        (w.t("Significativa", "Significant"), false),
    ];
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for r in 0..b.num_rows() {
        let name = w.channel(&text(b, "channel_name", r).unwrap_or_default());
        let (pts, verdict) = change(b, r, w);
        rows.push(vec![
            name.clone(),
            count(integer(b, "votes", r), lang),
            number(b, "votes_per_week", r).map_or_else(|| "–".into(), |v| decimal(v, 1, lang)),
            percent(number(b, "positive_pct", r), lang),
            percent(number(b, "previous_positive_pct", r), lang),
            pts,
            verdict,
        ]);
        if text(b, "channel", r).is_some() {
            let votes = integer(b, "votes", r).unwrap_or(0);
            items.push((name, votes as f64, format!("{} · {}", grouped(votes, lang), percent(number(b, "positive_pct", r), lang))));
        }
    }
    let max = items.iter().map(|i| i.1).fold(0.0, f64::max);
    // The month against the previous one, all channels together (the total row).
    let total = b.num_rows().saturating_sub(1);
    let month = bulletin.plan.month;
    let period = |label: NaiveDate, pct: &str, votes: &str| Period {
        label: month_name(label, lang),
        value_pct: number(b, pct, total),
        votes: integer(b, votes, total).unwrap_or(0).max(0) as u64,
    };
    let trend = charts::week_over_week(
        w.t("Quota di positivi: questo mese e il precedente", "Positive share: this month and the previous one"),
        &period(month, "positive_pct", "votes"),
        &period(month - chrono::Months::new(1), "previous_positive_pct", "previous_votes"),
        number(b, "z", total),
        numbers(lang),
    );
    format!(
        "<section><h2>1. {}</h2>{}{}{trend}{}</section>",
        w.t("Voti per canale", "Votes by channel"),
        table(&head, &rows, true),
        bars(&items, max, lang, w.t("Voti per canale, con la quota di positivi", "Votes by channel, with the positive share")),
        sql_of(bulletin, "channels", w)
    )
}

fn coverage_section(bulletin: &Bulletin, b: &RecordBatch, w: &Words) -> String {
    let lang = w.lang;
    let head = [
        (w.t("Regione", "Region"), false),
        (w.t("Amministrazioni con voti", "Administrations with votes"), true),
        (w.t("di cui unioni", "of which unions"), true),
        (w.t("Ammissibili", "Eligible"), true),
        (w.t("Ammissibili con voti", "Eligible with votes"), true),
        (w.t("Copertura", "Coverage"), true),
    ];
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for r in 0..b.num_rows() {
        let region = text(b, "region", r).unwrap_or_default();
        let region = if region == "total" { w.t("totale", "total").to_string() } else { region };
        rows.push(vec![
            region.clone(),
            count(integer(b, "administrations_with_votes", r), lang),
            count(integer(b, "unions_with_votes", r), lang),
            count(integer(b, "eligible", r), lang),
            count(integer(b, "eligible_with_votes", r), lang),
            percent(number(b, "coverage_pct", r), lang),
        ]);
        if integer(b, "region_code", r).is_some() {
            let pct = number(b, "coverage_pct", r);
            items.push((region, pct.unwrap_or(0.0), percent(pct, lang)));
        }
    }
    format!(
        "<section><h2>2. {}</h2>{}{}{}</section>",
        w.t("Partecipazione e copertura delle amministrazioni ammissibili", "Participation and coverage of the eligible administrations"),
        table(&head, &rows, true),
        bars(&items, 100.0, lang, w.t("Copertura delle ammissibili per regione", "Coverage of the eligible by region")),
        sql_of(bulletin, "coverage", w)
    )
}

fn services_section(bulletin: &Bulletin, b: &RecordBatch, w: &Words) -> String {
    let lang = w.lang;
    let head = [
        (w.t("Pos.", "Rank"), true),
        (w.t("Servizio", "Service"), false),
        (w.t("Voti", "Votes"), true),
        (w.t("Positivi ☺", "Positive ☺"), true),
        (w.t("Intervallo di Wilson 95 %", "Wilson 95 % interval"), true),
        (w.t("Variazione (punti)", "Change (points)"), true),
        (w.t("Significativa", "Significant"), false),
    ];
    let name_column = if lang == Lang::It { "name_it" } else { "name" };
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for r in 0..b.num_rows() {
        let name = text(b, name_column, r).unwrap_or_default();
        let (low, high) = (number(b, "wilson_low_pct", r), number(b, "wilson_high_pct", r));
        let (pts, verdict) = change(b, r, w);
        rows.push(vec![
            integer(b, "rank", r).map_or_else(|| "–".into(), |x| x.to_string()),
            name.clone(),
            count(integer(b, "votes", r), lang),
            percent(number(b, "csat_pct", r), lang),
            format!("{} – {}", percent(low, lang), percent(high, lang)),
            pts,
            verdict,
        ]);
        if let (Some(low_pct), Some(value_pct), Some(high_pct)) = (low, number(b, "csat_pct", r), high) {
            let votes = integer(b, "votes", r).unwrap_or(0).max(0) as u64;
            items.push(IndexBar { label: name, value_pct, low_pct, high_pct, votes });
        }
    }
    format!(
        "<section><h2>3. {}</h2>{}<p class=\"note\">{}</p>{}{}</section>",
        w.t("Servizi, ordinati per il limite inferiore di Wilson", "Services, ranked by the Wilson lower bound"),
        table(&head, &rows, false),
        escape(w.t(
            "La barra è la quota di positivi, il segmento nero il suo intervallo di confidenza al 95 %: più è stretto, più voti la sostengono.",
            "The bar is the positive share, the black whisker its 95 % confidence interval: the narrower, the more votes behind it."
        )),
        charts::index_bars(
            w.t("Quota di positivi per servizio con l'intervallo di Wilson", "Positive share by service with the Wilson interval"),
            &items,
            numbers(lang)
        ),
        sql_of(bulletin, "services", w)
    )
}

fn reasons_section(bulletin: &Bulletin, b: &RecordBatch, w: &Words) -> String {
    let lang = w.lang;
    let head = [(w.t("Motivo", "Reason"), false), (w.t("Voti rossi ☹", "Red faces ☹"), true), (w.t("Quota", "Share"), true)];
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for r in 0..b.num_rows() {
        let name = w.reason(&text(b, "reason_name", r).unwrap_or_default());
        let pct = number(b, "share_pct", r);
        rows.push(vec![name.clone(), count(integer(b, "negative_votes", r), lang), percent(pct, lang)]);
        items.push((name, pct.unwrap_or(0.0), percent(pct, lang)));
    }
    format!(
        "<section><h2>4. {}</h2>{}{}{}</section>",
        w.t("Motivi dei voti rossi", "Reasons for red faces"),
        table(&head, &rows, false),
        bars(&items, 100.0, lang, w.t("Quota di ciascun motivo tra i voti rossi", "Share of each reason among red faces")),
        sql_of(bulletin, "reasons", w)
    )
}

fn settlement_section(settlement: &RecordBatch, invoices: &RecordBatch, w: &Words) -> String {
    let lang = w.lang;
    let head = [
        (w.t("Fornitore", "Supplier"), false),
        (w.t("Amministrazioni", "Administrations"), true),
        (w.t("Terminali acquistati", "Terminals bought"), true),
        (w.t("Da fatturare", "To invoice"), true),
    ];
    let mut rows: Vec<Vec<String>> = (0..invoices.num_rows())
        .map(|r| {
            vec![
                text(invoices, "supplier", r).unwrap_or_default(),
                count(integer(invoices, "administrations", r), lang),
                count(integer(invoices, "terminals", r), lang),
                euro(integer(invoices, "total_eur", r).unwrap_or(0), lang),
            ]
        })
        .collect();
    let total: i64 = (0..invoices.num_rows()).filter_map(|r| integer(invoices, "total_eur", r)).sum();
    let administrations: i64 = (0..invoices.num_rows()).filter_map(|r| integer(invoices, "administrations", r)).sum();
    let terminals: i64 = (0..invoices.num_rows()).filter_map(|r| integer(invoices, "terminals", r)).sum();
    rows.push(vec![w.t("totale", "total").into(), grouped(administrations, lang), grouped(terminals, lang), euro(total, lang)]);
    let detail_head = [
        (w.t("Fornitore", "Supplier"), false),
        (w.t("Amministrazione", "Administration"), false),
        (w.t("Terminale", "Terminal"), true),
        (w.t("Ordine", "Order"), false),
        (w.t("Acquisto", "Bought"), false),
        (w.t("Firma digitale / PEC", "Digital signature / PEC"), false),
        (w.t("Bonus", "Bonus"), true),
        (w.t("Esito", "Outcome"), false),
    ];
    let yes_no = |v: Option<String>| match v.as_deref() {
        Some("true") => w.t("sì", "yes"),
        Some("false") => w.t("no", "no"),
        _ => "?",
    };
    let detail: Vec<Vec<String>> = (0..settlement.num_rows())
        .map(|r| {
            let kind = if text(settlement, "kind", r).as_deref() == Some("union") { w.t(" (unione)", " (union)") } else { "" };
            let outcome = match text(settlement, "outcome", r).as_deref() {
                Some("bonus") => w.t("bonus riconosciuto", "bonus granted").to_string(),
                Some("already_granted") => format!(
                    "{} {}",
                    w.t("bonus già riconosciuto con il terminale", "bonus already granted with terminal"),
                    integer(settlement, "granted_with_terminal", r).unwrap_or(0)
                ),
                _ => w.t("non ammissibile", "not eligible").to_string(),
            };
            vec![
                text(settlement, "supplier", r).unwrap_or_default(),
                format!(
                    "{} {}{kind}",
                    text(settlement, "administration", r).unwrap_or_default(),
                    text(settlement, "administration_name", r).unwrap_or_default()
                ),
                count(integer(settlement, "terminal", r), lang),
                text(settlement, "order_ref", r).unwrap_or_else(|| "–".into()),
                date(&text(settlement, "bought", r).unwrap_or_default(), lang),
                format!("{} / {}", yes_no(text(settlement, "digital_signature", r)), yes_no(text(settlement, "pec", r))),
                euro(integer(settlement, "bonus_eur", r).unwrap_or(0), lang),
                outcome,
            ]
        })
        .collect();
    let empty = if detail.is_empty() {
        format!("<p class=\"note\">{}</p>", w.t("Nessun acquisto registrato nel mese.", "No purchase recorded in the month."))
    } else {
        String::new()
    };
    format!(
        "<section><h2>5. {}</h2><p class=\"note\">{}</p>{}<h3>{}</h3>{}{empty}</section>",
        w.t("Liquidazione dei bonus ai fornitori", "Bonus settlement per supplier"),
        escape(w.t(
            "Fattura cumulativa mensile di ciascun fornitore: il bonus di un'amministrazione va con il suo primo acquisto registrato \
             (data, poi numero di terminale); gli acquisti successivi non ne ricevono altri.",
            "Each supplier's monthly cumulative invoice: an administration's bonus goes with its first recorded purchase (date, then \
             terminal number); later purchases earn no other."
        )),
        table(&head, &rows, true),
        w.t("Acquisti del mese", "The month's purchases"),
        table(&detail_head, &detail, false),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_each_language_writes_them() {
        assert_eq!(grouped(1_234_567, Lang::It), "1.234.567");
        assert_eq!(grouped(1_234_567, Lang::En), "1,234,567");
        assert_eq!(percent(Some(72.5), Lang::It), "72,5 %");
        assert_eq!(percent(Some(72.5), Lang::En), "72.5%");
        assert_eq!(decimal(-1234.26, 1, Lang::It), "−1.234,3");
        assert_eq!(decimal(-0.01, 1, Lang::It), "0,0");
        assert_eq!(euro(1320, Lang::It), "1.320 €");
        assert_eq!(date("2026-11-29", Lang::It), "29/11/2026");
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }

    #[test]
    fn charts_are_svg_without_any_external_reference() {
        let svg = bars(&[("sportello".into(), 10.0, "10".into())], 10.0, Lang::It, "t");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>") && !svg.contains("href"));
    }
}
