//! The pages: each is a few SQL statements over the views (`schemas/sql.md`) run through a
//! `Session`, and HTML written around their rows. The numbers a test compares carry `data-`
//! attributes (`data-votes`, `data-csat`, …); the SQL behind each section is shown under it.
//!
//! Dates ("today", "this week", "this month") are Italian days (Europe/Rome), computed here and
//! written into the SQL as literals, so the SQL shown is the SQL run.

use std::fmt::Write as _;

use axum::http::StatusCode;
use chrono::{Datelike, NaiveDate};

use crate::analysts::service::SqlError;
use crate::charts::{self, Bar, HeatCell, IndexBar, Numbers, Period, escape};
use crate::dashboard::data::{Row, Session, count, number, text};

/// The page's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    /// Italian, the default.
    It,
    /// English (`?lang=en`).
    En,
}

impl Lang {
    /// `it` or `en`.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Lang::It => "it",
            Lang::En => "en",
        }
    }

    fn t(self, italian: &'static str, english: &'static str) -> &'static str {
        match self {
            Lang::It => italian,
            Lang::En => english,
        }
    }

    fn numbers(self) -> Numbers {
        match self {
            Lang::It => Numbers::ITALIAN,
            Lang::En => Numbers::ENGLISH,
        }
    }

    /// A reason code's name (`reasons` in schemas/sql.md; NULL: not given).
    fn reason(self, code: Option<f64>) -> &'static str {
        match code.map(|c| c as i64) {
            Some(1) => self.t("tempo di attesa", "waiting time"),
            Some(2) => self.t("il servizio", "the service"),
            Some(3) => self.t("ho dovuto tornare", "had to come back"),
            Some(4) => self.t("altro", "other"),
            _ => self.t("non indicato", "not given"),
        }
    }
}

/// What the visitor asked for.
#[derive(Debug)]
pub(crate) enum Page {
    /// `/`.
    Overview,
    /// `/municipality/{code}`: the code as given.
    Municipality(String),
    /// `/union/{code}`: the code as given.
    Union(String),
    /// `/coverage`.
    Coverage,
    /// `/terminals`.
    Terminals,
}

/// The most rows a list shows (top-N, the rest through SQL): pages stay light.
const LIST_ROWS_MAX: usize = 20;
/// The most terminals the terminals page lists (the silent first).
const TERMINAL_ROWS_MAX: usize = 50;
/// The most alerts the terminals page lists (those firing first).
const ALERT_ROWS_MAX: usize = 50;
/// Days behind the heat map and the reasons of a municipality.
const RECENT_DAYS: i64 = 30;

/// Why a page is not shown.
enum PageError {
    /// 400: the request names something in the wrong format; the message says which.
    BadRequest(String),
    /// 404: the thing named does not exist (or the visitor cannot see it).
    NotFound(String),
    /// 500: a statement failed.
    Sql(SqlError),
}

impl From<SqlError> for PageError {
    fn from(error: SqlError) -> Self {
        PageError::Sql(error)
    }
}

/// Italian days the pages count from.
struct Days {
    today: NaiveDate,
    monday: NaiveDate,
    month: NaiveDate,
    recent: NaiveDate,
}

impl Days {
    fn now() -> Days {
        let today = chrono::Utc::now().with_timezone(&chrono_tz::Europe::Rome).date_naive();
        let monday = today - chrono::Duration::days(i64::from(today.weekday().num_days_from_monday()));
        let month = today.with_day(1).unwrap_or(today);
        Days { today, monday, month, recent: today - chrono::Duration::days(RECENT_DAYS - 1) }
    }
}

/// Renders `page`: its status and HTML.
pub(crate) async fn render(session: &Session<'_>, lang: Lang, page: Page) -> (StatusCode, String) {
    let days = Days::now();
    let mut body = String::with_capacity(32 * 1024);
    let (title, result) = match &page {
        Page::Overview => (lang.t("Panoramica", "Overview").to_string(), overview(session, lang, &days, &mut body).await),
        Page::Municipality(code) => (
            format!("{} {code}", lang.t("Comune", "Municipality")),
            place(session, lang, &days, Place::municipality(code), &mut body).await,
        ),
        Page::Union(code) => {
            (format!("{} {code}", lang.t("Unione", "Union")), place(session, lang, &days, Place::union(code), &mut body).await)
        }
        Page::Coverage => (lang.t("Copertura", "Coverage").to_string(), coverage(session, lang, &days, &mut body).await),
        Page::Terminals => (lang.t("Terminali", "Terminals").to_string(), terminals(session, lang, &days, &mut body).await),
    };
    let status = match result {
        Ok(()) => StatusCode::OK,
        Err(error) => {
            body.clear();
            let (status, message) = match error {
                PageError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
                PageError::NotFound(message) => (StatusCode::NOT_FOUND, message),
                PageError::Sql(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("SQL: {error}")),
            };
            let _ =
                write!(body, r#"<h1>{}</h1><p class="error" data-status="{}">{}</p>"#, status.as_u16(), status.as_u16(), escape(&message));
            status
        }
    };
    (status, layout(lang, &title, &body, true))
}

/// The login form, with `error` when a token was refused.
pub(crate) fn login(lang: Lang, error: Option<&str>) -> String {
    let mut body = String::new();
    let _ = write!(body, "<h1>{}</h1>", lang.t("Accesso", "Sign in"));
    if let Some(error) = error {
        let _ = write!(body, r#"<p class="error">{}</p>"#, escape(error));
    }
    let _ = write!(
        body,
        r#"<form method="post" action="/login"><label for="token">{}</label><input type="password" id="token" name="token" autocomplete="current-password" required> <button type="submit">{}</button></form><p class="note">{}</p>"#,
        lang.t("Token dell'analista", "Analyst token"),
        lang.t("Entra", "Sign in"),
        lang.t(
            "Il token è quello di faccia serve (DATA_DIR/analyst-token o la configurazione); resta in un cookie di questo sito.",
            "The token is faccia serve's (DATA_DIR/analyst-token or the configuration); it stays in a cookie of this site."
        ),
    );
    layout(lang, lang.t("Accesso", "Sign in"), &body, false)
}

fn layout(lang: Lang, title: &str, body: &str, signed_in: bool) -> String {
    let other = match lang {
        Lang::It => r#"<a href="?lang=en" hreflang="en">English</a>"#,
        Lang::En => r#"<a href="?lang=it" hreflang="it">Italiano</a>"#,
    };
    let nav = if signed_in {
        format!(
            r#"<a href="/">{}</a><a href="/coverage">{}</a><a href="/terminals">{}</a>"#,
            lang.t("Panoramica", "Overview"),
            lang.t("Copertura", "Coverage"),
            lang.t("Terminali", "Terminals")
        )
    } else {
        String::new()
    };
    let logout = if signed_in { format!(r#" · <a href="/logout">{}</a>"#, lang.t("Esci", "Sign out")) } else { String::new() };
    let refresh = if signed_in { r#"<meta http-equiv="refresh" content="30">"# } else { "" };
    let now = chrono::Utc::now().with_timezone(&chrono_tz::Europe::Rome);
    let stamp = match lang {
        Lang::It => now.format("%d/%m/%Y %H:%M:%S").to_string(),
        Lang::En => now.format("%Y-%m-%d %H:%M:%S").to_string(),
    };
    format!(
        r#"<!doctype html><html lang="{code}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">{refresh}<title>{title} · faccia</title><style>{css}</style></head><body><header><span class="brand">faccia</span>{nav}<span class="right">{other}{logout}</span></header><main>{body}</main><footer>{updated} {stamp} ({zone}) · {every}</footer></body></html>"#,
        code = lang.code(),
        title = escape(title),
        css = include_str!("style.css"),
        updated = lang.t("Aggiornato il", "Updated"),
        zone = lang.t("ora italiana", "Italian time"),
        every = lang.t("la pagina si aggiorna ogni 30 s", "the page refreshes every 30 s"),
    )
}

/// Opens `<table class="{class}">` with its header row: (title, numeric: right-aligned).
fn table_head(out: &mut String, class: &str, head: &[(&str, bool)]) {
    let _ = write!(out, r#"<table class="{class}"><tr>"#);
    for (title, numeric) in head {
        let _ = write!(out, "<th{}>{title}</th>", if *numeric { r#" class="n""# } else { "" });
    }
    out.push_str("</tr>");
}

/// A section's SQL, one click away.
fn show_sql(out: &mut String, sql: &str) {
    let _ = write!(out, "<details><summary>SQL</summary><pre>{}</pre></details>", escape(sql));
}

fn day(lang: Lang, date: NaiveDate) -> String {
    match lang {
        Lang::It => date.format("%d/%m/%Y").to_string(),
        Lang::En => date.format("%Y-%m-%d").to_string(),
    }
}

/// A timestamp as SQL gives it in JSON (`2026-11-30T19:10:05.123+01:00`): day and minute.
fn moment(lang: Lang, ts: &str) -> String {
    let Some(date) = ts.get(..10).and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()) else { return ts.to_string() };
    format!("{} {}", day(lang, date), ts.get(11..16).unwrap_or(""))
}

fn pct(lang: Lang, value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_string(), |v| format!("{} %", lang.numbers().one_decimal(v)))
}

fn service_name(lang: Lang, row: &Row) -> String {
    match lang {
        Lang::It => text(row, "name_it"),
        Lang::En => text(row, "name"),
    }
}

const SERVICE_INDEX_SQL: &str = "SELECT i.service, s.name_it, s.name, i.votes, i.csat_pct, i.wilson_low_pct, i.wilson_high_pct \
FROM service_index i JOIN services s ON s.service = i.service ORDER BY i.wilson_low_pct DESC, i.service";

const TREND_SQL: &str = "SELECT t.service, s.name_it, s.name, t.period, t.votes, t.csat_pct, t.previous_votes, \
t.previous_csat_pct, t.change_pts, t.z, t.significant FROM service_trend_weekly t JOIN services s ON s.service = t.service \
WHERE t.period = (SELECT max(period) FROM service_trend_weekly) ORDER BY t.service";

const WEEK_TOTAL_SQL: &str = "WITH w AS (SELECT week, sum(votes) AS votes, sum(positive) AS positive FROM service_index_weekly GROUP BY week), \
c AS (SELECT * FROM w ORDER BY week DESC LIMIT 1) \
SELECT c.votes, round(csat(c.positive, c.votes), 1) AS csat_pct, p.votes AS previous_votes, \
round(csat(p.positive, p.votes), 1) AS previous_csat_pct, change_z(c.positive, c.votes, p.positive, p.votes) AS z \
FROM c LEFT JOIN w p ON p.week = c.week - INTERVAL '7 days'";

/// `alerts_sql` without its limit.
const ALERTS_SQL: &str = "SELECT a.alert_id, a.rule, a.state, a.istat_code, m.name AS municipality_name, a.service, s.name_it, s.name, \
a.terminal, a.fired_at, a.resolved_at, a.value, a.threshold, a.message FROM alerts a \
LEFT JOIN municipalities m ON m.istat_code = a.istat_code LEFT JOIN services s ON s.service = a.service \
ORDER BY a.state = 'firing' DESC, a.fired_at DESC";

const REASONS_SQL: &str = "SELECT reason, count(*) AS negative_votes, round(share_pct(count(*), sum(count(*)) OVER ()), 1) AS share_pct \
FROM counted_votes WHERE face = -1 GROUP BY reason ORDER BY negative_votes DESC, reason";

async fn overview(session: &Session<'_>, lang: Lang, days: &Days, out: &mut String) -> Result<(), PageError> {
    let numbers = lang.numbers();
    let _ = write!(out, "<h1>{}</h1>", lang.t("Soddisfazione per servizio", "Satisfaction by service"));
    let _ = write!(
        out,
        r#"<p class="note">{}</p>"#,
        lang.t(
            "Indice: quota di facce verdi (CSAT, %) sui voti contati; la barra nera è l'intervallo di Wilson al 95 %. Ordinati per limite inferiore.",
            "Index: share of green faces (CSAT, %) among counted votes; the black whisker is the Wilson 95 % interval. Ranked by its lower bound."
        )
    );
    let rows = session.rows(SERVICE_INDEX_SQL).await?;
    let bars: Vec<IndexBar> = rows
        .iter()
        .map(|r| IndexBar {
            label: service_name(lang, r),
            value_pct: number(r, "csat_pct").unwrap_or(0.0),
            low_pct: number(r, "wilson_low_pct").unwrap_or(0.0),
            high_pct: number(r, "wilson_high_pct").unwrap_or(0.0),
            votes: count(r, "votes"),
        })
        .collect();
    out.push_str(&charts::index_bars(lang.t("Indice per servizio", "Index by service"), &bars, &numbers));
    out.push_str(r#"<table class="services">"#);
    let _ = write!(
        out,
        r#"<tr><th>{}</th><th class="n">{}</th><th class="n">CSAT</th><th class="n">Wilson 95 %</th></tr>"#,
        lang.t("Servizio", "Service"),
        lang.t("Voti", "Votes")
    );
    for r in &rows {
        let _ = write!(
            out,
            r#"<tr data-service="{}"><td>{}</td><td class="n" data-votes="{}">{}</td><td class="n" data-csat="{}">{}</td><td class="n">{} – {}</td></tr>"#,
            escape(&text(r, "service")),
            escape(&service_name(lang, r)),
            count(r, "votes"),
            numbers.count(count(r, "votes")),
            text(r, "csat_pct"),
            pct(lang, number(r, "csat_pct")),
            pct(lang, number(r, "wilson_low_pct")),
            pct(lang, number(r, "wilson_high_pct")),
        );
    }
    out.push_str("</table>");
    show_sql(out, SERVICE_INDEX_SQL);

    week_over_week(session, lang, out).await?;
    reasons(session, lang, REASONS_SQL, lang.t("Motivi delle facce rosse", "Reasons for red faces"), out).await?;
    places(session, lang, days, out).await
}

async fn week_over_week(session: &Session<'_>, lang: Lang, out: &mut String) -> Result<(), PageError> {
    let numbers = lang.numbers();
    let _ = write!(out, "<h2>{}</h2>", lang.t("Settimana su settimana", "Week over week"));
    if let Some(total) = session.rows(WEEK_TOTAL_SQL).await?.first() {
        let current = Period {
            label: lang.t("ultima settimana", "latest week").into(),
            value_pct: number(total, "csat_pct"),
            votes: count(total, "votes"),
        };
        let previous = Period {
            label: lang.t("settimana prima", "week before").into(),
            value_pct: number(total, "previous_csat_pct"),
            votes: count(total, "previous_votes"),
        };
        out.push_str(&charts::week_over_week(lang.t("Tutti i servizi", "All services"), &current, &previous, number(total, "z"), &numbers));
    }
    show_sql(out, WEEK_TOTAL_SQL);
    let rows = session.rows(TREND_SQL).await?;
    let _ = write!(
        out,
        r#"<table class="trend"><tr><th>{}</th><th class="n">{}</th><th class="n">CSAT</th><th class="n">{}</th><th class="n">{}</th><th>{}</th></tr>"#,
        lang.t("Servizio", "Service"),
        lang.t("Voti", "Votes"),
        lang.t("settimana prima", "week before"),
        lang.t("variazione (punti)", "change (points)"),
        lang.t("significatività", "significance"),
    );
    for r in &rows {
        let significant = r.get("significant").and_then(serde_json::Value::as_bool).unwrap_or(false);
        let change =
            number(r, "change_pts").map_or("—".into(), |c| format!("{}{}", if c > 0.0 { "+" } else { "" }, numbers.one_decimal(c)));
        let verdict = if number(r, "z").is_none() {
            "—".to_string()
        } else if significant {
            format!(r#"<span class="sig">{}</span>"#, numbers.significant[0])
        } else {
            numbers.significant[1].to_string()
        };
        let _ = write!(
            out,
            r#"<tr data-service="{}"><td>{}</td><td class="n" data-votes="{}">{}</td><td class="n" data-csat="{}">{}</td><td class="n">{}</td><td class="n" data-change="{}">{}</td><td>{}</td></tr>"#,
            escape(&text(r, "service")),
            escape(&service_name(lang, r)),
            count(r, "votes"),
            numbers.count(count(r, "votes")),
            text(r, "csat_pct"),
            pct(lang, number(r, "csat_pct")),
            pct(lang, number(r, "previous_csat_pct")),
            text(r, "change_pts"),
            change,
            verdict,
        );
    }
    out.push_str("</table>");
    show_sql(out, TREND_SQL);
    Ok(())
}

/// Reasons for red faces as bars; `sql` returns `reason`, `negative_votes`, `share_pct`.
async fn reasons(session: &Session<'_>, lang: Lang, sql: &str, title: &str, out: &mut String) -> Result<(), PageError> {
    let numbers = lang.numbers();
    let _ = write!(out, "<h2>{}</h2>", escape(title));
    let rows = session.rows(sql).await?;
    let bars: Vec<Bar> = rows
        .iter()
        .map(|r| {
            let share = number(r, "share_pct").unwrap_or(0.0);
            Bar {
                label: lang.reason(number(r, "reason")).to_string(),
                value: share,
                note: format!("{} % · {} {}", numbers.one_decimal(share), numbers.count(count(r, "negative_votes")), numbers.votes),
            }
        })
        .collect();
    let mut chart = charts::bars(title, &bars, 100.0, &numbers);
    // The counts for a test: one marker per reason, in the chart's order.
    for r in &rows {
        let _ =
            write!(out, r#"<span hidden data-reason="{}" data-votes="{}"></span>"#, escape(&text(r, "reason")), count(r, "negative_votes"));
    }
    out.push_str(&std::mem::take(&mut chart));
    show_sql(out, sql);
    Ok(())
}

/// The comuni and unions with votes, as links (built from what the session sees).
async fn places(session: &Session<'_>, lang: Lang, days: &Days, out: &mut String) -> Result<(), PageError> {
    let numbers = lang.numbers();
    let sql = format!(
        "SELECT istat_code, name, province, votes, csat_pct FROM municipality_index ORDER BY votes DESC, istat_code LIMIT {LIST_ROWS_MAX}"
    );
    let rows = session.rows(&sql).await?;
    let _ = write!(out, "<h2>{}</h2>", lang.t("Comuni con più voti", "Comuni with the most votes"));
    let _ = write!(
        out,
        r#"<table class="municipalities"><tr><th>{}</th><th>{}</th><th class="n">{}</th><th class="n">CSAT</th></tr>"#,
        lang.t("Comune", "Municipality"),
        lang.t("Provincia", "Province"),
        lang.t("Voti", "Votes")
    );
    for r in &rows {
        let code = text(r, "istat_code");
        let _ = write!(
            out,
            r#"<tr data-municipality="{c}"><td><a href="/municipality/{c}">{}</a> <small>{c}</small></td><td>{}</td><td class="n" data-votes="{}">{}</td><td class="n" data-csat="{}">{}</td></tr>"#,
            escape(&text(r, "name")),
            escape(&text(r, "province")),
            count(r, "votes"),
            numbers.count(count(r, "votes")),
            text(r, "csat_pct"),
            pct(lang, number(r, "csat_pct")),
            c = escape(&code),
        );
    }
    out.push_str("</table>");
    show_sql(out, &sql);
    let unions = format!(
        "SELECT union_code, name, votes FROM union_coverage WHERE terminals_active > 0 ORDER BY votes DESC, union_code LIMIT {LIST_ROWS_MAX}"
    );
    let rows = session.rows(&unions).await?;
    if !rows.is_empty() {
        let _ = write!(out, "<h2>{}</h2><ul>", lang.t("Unioni di comuni", "Unions of comuni"));
        for r in &rows {
            let code = escape(&text(r, "union_code"));
            let _ = write!(
                out,
                r#"<li data-union="{code}"><a href="/union/{code}">{}</a> · <span data-votes="{}">{}</span> {}</li>"#,
                escape(&text(r, "name")),
                count(r, "votes"),
                numbers.count(count(r, "votes")),
                numbers.votes
            );
        }
        out.push_str("</ul>");
    }
    let _ = write!(out, r#"<p class="note">{} {}</p>"#, lang.t("Oggi è", "Today is"), day(lang, days.today));
    Ok(())
}

/// A comune or a union: its name, the SQL condition on `counted_votes`/`votes` (alias `v`)
/// and on `terminals` (alias `t`) that selects it.
struct Place {
    code: String,
    union: bool,
    error: Option<String>,
}

impl Place {
    fn municipality(code: &str) -> Place {
        let ok = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
        let error = (!ok).then(|| format!("municipality code {code:?}: it must be the six-digit ISTAT code, e.g. 001003"));
        Place { code: code.to_string(), union: false, error }
    }

    fn union(code: &str) -> Place {
        let ok = !code.is_empty() && code.len() <= 32 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let error = (!ok).then(|| format!("union code {code:?}: 1 to 32 characters among A-Z, a-z, 0-9, _ and -"));
        Place { code: code.to_string(), union: true, error }
    }

    /// The condition on votes (`v`); the code is checked, so it is safe as a literal.
    fn votes(&self) -> String {
        if self.union {
            format!("v.terminal IN (SELECT terminal FROM terminals WHERE union_code = '{}')", self.code)
        } else {
            format!("v.istat_code = '{}'", self.code)
        }
    }

    fn terminals(&self) -> String {
        if self.union {
            format!("t.union_code = '{}'", self.code)
        } else {
            format!("t.istat_code = '{}' AND t.union_code IS NULL", self.code)
        }
    }
}

async fn place(session: &Session<'_>, lang: Lang, days: &Days, place: Place, out: &mut String) -> Result<(), PageError> {
    if let Some(error) = place.error {
        return Err(PageError::BadRequest(error));
    }
    let numbers = lang.numbers();
    let header_sql = if place.union {
        format!("SELECT name, region, members FROM union_coverage WHERE union_code = '{}'", place.code)
    } else {
        format!("SELECT name, province, region, population FROM municipalities WHERE istat_code = '{}'", place.code)
    };
    let Some(header) = session.rows(&header_sql).await?.into_iter().next() else {
        let what = if place.union {
            lang.t("Nessuna unione con codice", "No union with code")
        } else {
            lang.t("Nessun comune con codice ISTAT", "No municipality with ISTAT code")
        };
        return Err(PageError::NotFound(format!("{what} {}", place.code)));
    };
    let detail = if place.union {
        format!("{} · {} {}", text(&header, "region"), count(&header, "members"), lang.t("comuni membri", "member comuni"))
    } else {
        format!(
            "{} ({}) · {} · {} {}",
            text(&header, "province"),
            text(&header, "region"),
            place.code,
            numbers.count(count(&header, "population")),
            lang.t("abitanti", "inhabitants")
        )
    };
    let _ = write!(
        out,
        r#"<h1 data-code="{}">{}</h1><p class="note">{}</p>"#,
        escape(&place.code),
        escape(&text(&header, "name")),
        escape(&detail)
    );

    let (today, monday) = (days.today, days.monday);
    let services_sql = format!(
        "SELECT v.service, s.name_it, s.name, count(*) FILTER (WHERE v.date = DATE '{today}') AS votes_today, \
round(csat_of(v.face) FILTER (WHERE v.date = DATE '{today}'), 1) AS csat_today_pct, count(*) AS votes_week, \
round(csat_of(v.face), 1) AS csat_pct, round(wilson_lower_of(v.face), 1) AS wilson_low_pct, round(wilson_upper_of(v.face), 1) AS wilson_high_pct \
FROM counted_votes v JOIN services s ON s.service = v.service WHERE {} AND v.date >= DATE '{monday}' \
GROUP BY v.service, s.name_it, s.name ORDER BY v.service",
        place.votes()
    );
    let rows = session.rows(&services_sql).await?;
    let _ = write!(out, "<h2>{} {}</h2>", lang.t("Oggi e questa settimana, dal", "Today and this week, from"), day(lang, monday));
    let bars: Vec<IndexBar> = rows
        .iter()
        .map(|r| IndexBar {
            label: service_name(lang, r),
            value_pct: number(r, "csat_pct").unwrap_or(0.0),
            low_pct: number(r, "wilson_low_pct").unwrap_or(0.0),
            high_pct: number(r, "wilson_high_pct").unwrap_or(0.0),
            votes: count(r, "votes_week"),
        })
        .collect();
    out.push_str(&charts::index_bars(lang.t("Indice di questa settimana per servizio", "This week's index by service"), &bars, &numbers));
    let _ = write!(
        out,
        r#"<table class="services"><tr><th>{}</th><th class="n">{}</th><th class="n">{}</th><th class="n">{}</th><th class="n">{}</th></tr>"#,
        lang.t("Servizio", "Service"),
        lang.t("voti oggi", "votes today"),
        lang.t("CSAT oggi", "CSAT today"),
        lang.t("voti settimana", "votes this week"),
        lang.t("CSAT settimana", "CSAT this week"),
    );
    for r in &rows {
        let _ = write!(
            out,
            r#"<tr data-service="{}"><td>{}</td><td class="n" data-votes-today="{}">{}</td><td class="n">{}</td><td class="n" data-votes="{}">{}</td><td class="n" data-csat="{}">{}</td></tr>"#,
            escape(&text(r, "service")),
            escape(&service_name(lang, r)),
            count(r, "votes_today"),
            numbers.count(count(r, "votes_today")),
            pct(lang, number(r, "csat_today_pct")),
            count(r, "votes_week"),
            numbers.count(count(r, "votes_week")),
            text(r, "csat_pct"),
            pct(lang, number(r, "csat_pct")),
        );
    }
    out.push_str("</table>");
    show_sql(out, &services_sql);

    let recent = days.recent;
    let heat_sql = format!(
        "SELECT local_weekday(v.ts) AS weekday, local_hour(v.ts) AS hour, count(*) AS votes, round(csat_of(v.face), 1) AS csat_pct \
FROM counted_votes v WHERE {} AND v.date >= DATE '{recent}' GROUP BY 1, 2 ORDER BY 1, 2",
        place.votes()
    );
    let cells: Vec<HeatCell> = session
        .rows(&heat_sql)
        .await?
        .iter()
        .map(|r| HeatCell {
            weekday: count(r, "weekday") as u8,
            hour: count(r, "hour") as u8,
            value_pct: number(r, "csat_pct").unwrap_or(0.0),
            votes: count(r, "votes"),
        })
        .collect();
    let _ = write!(
        out,
        "<h2>{} {}</h2>",
        lang.t("Giorno e ora (CSAT %, voti), dal", "Weekday and hour (CSAT %, votes), from"),
        day(lang, recent)
    );
    out.push_str(&charts::heat_map(lang.t("Mappa giorno × ora", "Weekday × hour map"), &cells, &numbers));
    show_sql(out, &heat_sql);

    let reasons_sql = format!(
        "SELECT v.reason, count(*) AS negative_votes, round(share_pct(count(*), sum(count(*)) OVER ()), 1) AS share_pct \
FROM counted_votes v WHERE {} AND v.face = -1 AND v.date >= DATE '{recent}' GROUP BY v.reason ORDER BY negative_votes DESC, v.reason",
        place.votes()
    );
    reasons(session, lang, &reasons_sql, lang.t("Motivi delle facce rosse (30 giorni)", "Reasons for red faces (30 days)"), out).await?;

    let terminals_sql = format!(
        "SELECT t.terminal, t.label, t.active, max(v.ts) AS last_seen, count(v.terminal) FILTER (WHERE v.date = DATE '{today}') AS votes_today, \
count(v.terminal) FILTER (WHERE v.misuse <> 0) AS flagged_votes FROM terminals t LEFT JOIN votes v ON v.terminal = t.terminal \
WHERE {} GROUP BY t.terminal, t.label, t.active ORDER BY t.terminal LIMIT {TERMINAL_ROWS_MAX}",
        place.terminals()
    );
    let rows = session.rows(&terminals_sql).await?;
    let _ = write!(out, "<h2>{}</h2>", lang.t("Terminali", "Terminals"));
    terminal_table(lang, &rows, false, out);
    show_sql(out, &terminals_sql);
    Ok(())
}

fn terminal_table(lang: Lang, rows: &[Row], with_place: bool, out: &mut String) {
    let numbers = lang.numbers();
    let mut head = vec![(lang.t("Terminale", "Terminal"), false)];
    if with_place {
        head.push((lang.t("Comune", "Municipality"), false));
    }
    head.extend([
        (lang.t("Etichetta", "Label"), false),
        (lang.t("Ultimo voto", "Last seen"), false),
        (lang.t("voti oggi", "votes today"), true),
        (lang.t("voti segnalati (abuso)", "flagged votes (misuse)"), true),
    ]);
    table_head(out, "terminals", &head);
    for r in rows {
        let last = text(r, "last_seen");
        let last = if last.is_empty() { lang.t("mai", "never").to_string() } else { moment(lang, &last) };
        let active = r.get("active").and_then(serde_json::Value::as_bool).unwrap_or(true);
        let revoked = if active { "" } else { lang.t(" (revocato)", " (revoked)") };
        let place = if with_place {
            let code = escape(&text(r, "istat_code"));
            format!(r#"<td><a href="/municipality/{code}">{}</a></td>"#, escape(&text(r, "municipality_name")))
        } else {
            String::new()
        };
        let flagged = count(r, "flagged_votes");
        let _ = write!(
            out,
            r#"<tr data-terminal="{t}"><td>{t}{revoked}</td>{place}<td>{}</td><td>{}</td><td class="n" data-votes-today="{}">{}</td><td class="n" data-flagged="{flagged}">{}{}</td></tr>"#,
            escape(&text(r, "label")),
            escape(&last),
            count(r, "votes_today"),
            numbers.count(count(r, "votes_today")),
            numbers.count(flagged),
            if flagged > 0 { " ⚠" } else { "" },
            t = escape(&text(r, "terminal")),
        );
    }
    out.push_str("</table>");
}

async fn coverage(session: &Session<'_>, lang: Lang, days: &Days, out: &mut String) -> Result<(), PageError> {
    let numbers = lang.numbers();
    let month = days.month;
    let regions_sql = format!(
        "SELECT r.region_code, r.region, r.eligible, r.with_terminals, r.coverage_pct, r.unions_eligible, r.unions_with_terminals, r.bonus_eur, \
coalesce(m.with_votes, 0) AS with_votes_month FROM coverage_by_region r LEFT JOIN coverage_by_region_month m \
ON m.region_code = r.region_code AND m.month = DATE '{month}' ORDER BY r.region_code"
    );
    let rows = session.rows(&regions_sql).await?;
    let _ = write!(out, "<h1>{}</h1>", lang.t("Copertura del programma", "Programme coverage"));
    let _ = write!(
        out,
        r#"<p class="note">{}</p>"#,
        lang.t(
            "Amministrazioni idonee (comuni sotto i 5.000 abitanti), quelle con un terminale attivo, quelle con voti questo mese, e il bonus impegnato. Nessuna mappa: non c'è un confine dei comuni con licenza compatibile in un registro di pacchetti.",
            "Eligible administrations (comuni under 5,000 inhabitants), those with an active terminal, those with votes this month, and the bonus committed. No map: no boundary dataset with a compatible licence is on a package registry."
        )
    );
    let bars: Vec<Bar> = rows
        .iter()
        .map(|r| Bar {
            label: text(r, "region"),
            value: number(r, "coverage_pct").unwrap_or(0.0),
            note: format!(
                "{} % · {}/{}",
                numbers.one_decimal(number(r, "coverage_pct").unwrap_or(0.0)),
                count(r, "with_terminals"),
                count(r, "eligible")
            ),
        })
        .collect();
    out.push_str(&charts::bars(
        lang.t("Comuni idonei con un terminale, per regione", "Eligible comuni with a terminal, by region"),
        &bars,
        100.0,
        &numbers,
    ));
    let _ = write!(
        out,
        r#"<table class="regions"><tr><th>{}</th><th class="n">{}</th><th class="n">{}</th><th class="n">{}</th><th class="n">{}</th><th class="n">{}</th></tr>"#,
        lang.t("Regione", "Region"),
        lang.t("idonei", "eligible"),
        lang.t("con terminale", "with a terminal"),
        lang.t("con voti nel mese", "with votes this month"),
        lang.t("unioni con terminale", "unions with a terminal"),
        lang.t("bonus impegnato", "bonus committed"),
    );
    for r in &rows {
        let _ = write!(
            out,
            r#"<tr data-region="{}"><td>{}</td><td class="n" data-eligible="{}">{}</td><td class="n" data-with-terminals="{}">{}</td><td class="n" data-with-votes-month="{}">{}</td><td class="n">{}/{}</td><td class="n" data-bonus="{}">{} €</td></tr>"#,
            escape(&text(r, "region_code")),
            escape(&text(r, "region")),
            count(r, "eligible"),
            numbers.count(count(r, "eligible")),
            count(r, "with_terminals"),
            numbers.count(count(r, "with_terminals")),
            count(r, "with_votes_month"),
            numbers.count(count(r, "with_votes_month")),
            count(r, "unions_with_terminals"),
            count(r, "unions_eligible"),
            count(r, "bonus_eur"),
            numbers.count(count(r, "bonus_eur")),
        );
    }
    out.push_str("</table>");
    show_sql(out, &regions_sql);

    let provinces_sql = format!(
        "SELECT region, province, count(*) FILTER (WHERE eligible) AS eligible, count(*) FILTER (WHERE eligible AND terminals_active > 0) AS with_terminals, \
count(*) FILTER (WHERE eligible AND last_day >= DATE '{month}') AS with_votes_month, coalesce(sum(bonus_eur) FILTER (WHERE terminals_active > 0), 0) AS bonus_eur \
FROM administration_coverage GROUP BY region, province ORDER BY with_terminals DESC, province LIMIT {LIST_ROWS_MAX}"
    );
    let rows = session.rows(&provinces_sql).await?;
    let _ = write!(out, "<h2>{}</h2>", lang.t("Province con più terminali", "Provinces with the most terminals"));
    let max = rows.iter().map(|r| count(r, "eligible")).max().unwrap_or(0) as f64;
    let bars: Vec<Bar> = rows
        .iter()
        .map(|r| Bar {
            label: format!("{} ({})", text(r, "province"), text(r, "region")),
            value: count(r, "with_terminals") as f64,
            note: format!("{}/{} · {} €", count(r, "with_terminals"), count(r, "eligible"), numbers.count(count(r, "bonus_eur"))),
        })
        .collect();
    let _ = max;
    let top = rows.iter().map(|r| count(r, "with_terminals")).max().unwrap_or(0) as f64;
    out.push_str(&charts::bars(
        lang.t("Comuni idonei con un terminale, per provincia", "Eligible comuni with a terminal, by province"),
        &bars,
        top,
        &numbers,
    ));
    for r in &rows {
        let _ = write!(
            out,
            r#"<span hidden data-province="{}" data-eligible="{}" data-with-terminals="{}" data-with-votes-month="{}" data-bonus="{}"></span>"#,
            escape(&text(r, "province")),
            count(r, "eligible"),
            count(r, "with_terminals"),
            count(r, "with_votes_month"),
            count(r, "bonus_eur"),
        );
    }
    show_sql(out, &provinces_sql);
    Ok(())
}

async fn terminals(session: &Session<'_>, lang: Lang, days: &Days, out: &mut String) -> Result<(), PageError> {
    let today = days.today;
    let sql = format!(
        "SELECT t.terminal, t.istat_code, m.name AS municipality_name, t.label, t.active, max(v.ts) AS last_seen, \
count(v.terminal) FILTER (WHERE v.date = DATE '{today}') AS votes_today, count(v.terminal) FILTER (WHERE v.misuse <> 0) AS flagged_votes \
FROM terminals t JOIN municipalities m ON m.istat_code = t.istat_code LEFT JOIN votes v ON v.terminal = t.terminal \
GROUP BY t.terminal, t.istat_code, m.name, t.label, t.active ORDER BY last_seen ASC NULLS FIRST, t.terminal LIMIT {TERMINAL_ROWS_MAX}"
    );
    let rows = session.rows(&sql).await?;
    let _ = write!(out, "<h1>{}</h1>", lang.t("Terminali", "Terminals"));
    let _ = write!(
        out,
        r#"<p class="note">{} {TERMINAL_ROWS_MAX}.</p>"#,
        lang.t("I più silenziosi per primi; al massimo", "The most silent first; at most")
    );
    alerts(session, lang, out).await?;
    let _ = write!(out, "<h2>{}</h2>", lang.t("Ultimo contatto", "Last seen"));
    terminal_table(lang, &rows, true, out);
    show_sql(out, &sql);
    Ok(())
}

/// The alerts firing now, then the latest resolved ones: what a rule saw, where, since when.
/// The state is written as a word with a sign (●, ✓), never told by colour alone.
async fn alerts(session: &Session<'_>, lang: Lang, out: &mut String) -> Result<(), PageError> {
    let sql = format!("{ALERTS_SQL} LIMIT {ALERT_ROWS_MAX}");
    let rows = session.rows(&sql).await?;
    let firing = rows.iter().filter(|r| text(r, "state") == "firing").count();
    let _ = write!(out, r#"<section class="alerts" id="alerts" data-firing="{firing}"><h2>{}</h2>"#, lang.t("Allarmi", "Alerts"));
    if rows.is_empty() {
        let _ = write!(out, r#"<p class="note">{}</p>"#, lang.t("Nessun allarme.", "No alerts."));
    } else {
        let _ = write!(
            out,
            r#"<p class="note">{} {firing}. {} {ALERT_ROWS_MAX}.</p>"#,
            lang.t("In corso:", "Firing:"),
            lang.t("Prima quelli in corso, poi i più recenti; al massimo", "Firing first, then the latest; at most"),
        );
        let head = [
            (lang.t("Stato", "State"), false),
            (lang.t("Regola", "Rule"), false),
            (lang.t("Comune", "Municipality"), false),
            (lang.t("Servizio o terminale", "Service or terminal"), false),
            (lang.t("valore / soglia", "value / threshold"), true),
            (lang.t("dal", "since"), false),
            (lang.t("risolto il", "resolved"), false),
        ];
        table_head(out, "alerts", &head);
        for r in &rows {
            let state = text(r, "state");
            let (sign, word) = match state.as_str() {
                "firing" => ("●", lang.t("in corso", "firing")),
                _ => ("✓", lang.t("risolto", "resolved")),
            };
            let subject = match (text(r, "terminal").as_str(), service_name(lang, r)) {
                ("", service) => service,
                (terminal, _) => format!("{} {terminal}", lang.t("terminale", "terminal")),
            };
            let measured = match (number(r, "value"), number(r, "threshold")) {
                (Some(value), Some(threshold)) => {
                    format!("{} / {}", lang.numbers().one_decimal(value), lang.numbers().one_decimal(threshold))
                }
                (Some(value), None) => lang.numbers().one_decimal(value),
                _ => "—".to_string(),
            };
            let _ = write!(
                out,
                r#"<tr data-alert="{id}" data-rule="{rule}" data-state="{state}" data-municipality="{code}"><td class="state {state}">{sign} {word}</td><td title="{message}">{}</td><td>{}</td><td>{}</td><td class="n">{measured}</td><td>{}</td><td>{}</td></tr>"#,
                rule_name(lang, &text(r, "rule")),
                escape(&text(r, "municipality_name")),
                escape(&subject),
                moment(lang, &text(r, "fired_at")),
                moment(lang, &text(r, "resolved_at")),
                id = escape(&text(r, "alert_id")),
                rule = escape(&text(r, "rule")),
                state = escape(&state),
                code = escape(&text(r, "istat_code")),
                message = escape(&text(r, "message")),
            );
        }
        out.push_str("</table>");
    }
    show_sql(out, &sql);
    out.push_str("</section>");
    Ok(())
}

/// A rule's name for a person (the `alerts.rule` values of `schemas/sql.md`).
fn rule_name(lang: Lang, rule: &str) -> String {
    match rule {
        "red_share" => lang.t("Molte facce rosse", "Many red faces"),
        "terminal_silent" => lang.t("Terminale silenzioso", "Terminal silent"),
        "misuse_burst" => lang.t("Raffica di voti sospetti", "Misuse burst"),
        "clock_fault" => lang.t("Orologio del terminale errato", "Terminal clock wrong"),
        other => other,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_checked_before_any_sql() {
        assert!(Place::municipality("001003").error.is_none());
        for bad in ["1003", "00100a", "0010033", "001003' OR '1'='1"] {
            let error = Place::municipality(bad).error.expect("refused");
            assert!(error.contains("six-digit ISTAT code"), "{error}");
        }
        assert!(Place::union("UM-STURA").error.is_none());
        assert!(Place::union("UM STURA").error.expect("refused").contains("1 to 32 characters"));
        assert!(Place::union(&"A".repeat(33)).error.is_some());
    }

    #[test]
    fn timestamps_read_as_italian_or_english() {
        assert_eq!(moment(Lang::It, "2026-11-30T19:10:05.123+01:00"), "30/11/2026 19:10");
        assert_eq!(moment(Lang::En, "2026-11-30T19:10:05.123+01:00"), "2026-11-30 19:10");
        assert_eq!(moment(Lang::It, "garbage"), "garbage");
    }
}
