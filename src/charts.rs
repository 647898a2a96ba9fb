//! Charts drawn on the server as SVG text (no script, no external asset): the dashboard's
//! pages and the monthly bulletin inline them in HTML.
//!
//! - `index_bars`: one horizontal bar per group, its satisfaction index (percent), the
//!   Wilson 95 % interval drawn as a whisker over it, and the votes behind it;
//! - `bars`: simple labelled bars (reasons, coverage);
//! - `heat_map`: weekday × hour, 7 × 24 cells, each printing its value and vote count (readable
//!   without colour), with a legend;
//! - `week_over_week`: two bars, this period against the previous one, the change and whether
//!   it is significant;
//! - `face`: a face drawn by its shape (circle smiling, square flat, triangle frowning) and
//!   named by its label, so faces are never told apart by colour alone.
//!
//! Every chart is an `<svg role="img">` with an `aria-label` and a `<title>`; every text that
//! comes from the caller is escaped (`escape`). Numbers are printed by `Numbers` (decimal comma
//! for Italian, point for English). The values a page shows are also written as `data-value`
//! and `data-votes` attributes, so a test can compare them with SQL's.
//!
//! Architecture invariant: a leaf; it knows no stage, no SQL and no language beyond the words
//! its caller passes.

use std::fmt::Write as _;

/// Escapes text for XML and HTML content and double-quoted attributes: `&`, `<`, `>`, `"`, `'`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0; a name never needs them.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// How numbers are printed: Italian (`72,5`) or English (`72.5`), and the words charts need.
#[derive(Debug, Clone, Copy)]
pub struct Numbers {
    /// `true`: a decimal comma and a dot between thousands (Italian); `false`: English.
    pub decimal_comma: bool,
    /// The word after a vote count, plural ("voti", "votes").
    pub votes: &'static str,
    /// Monday … Sunday, short ("lun" … "dom").
    pub weekdays: [&'static str; 7],
    /// What an empty cell or bar says ("nessun voto", "no votes").
    pub no_votes: &'static str,
    /// Words for "significant" and "not significant" (95 %).
    pub significant: [&'static str; 2],
}

impl Numbers {
    /// Italian.
    pub const ITALIAN: Numbers = Numbers {
        decimal_comma: true,
        votes: "voti",
        weekdays: ["lun", "mar", "mer", "gio", "ven", "sab", "dom"],
        no_votes: "nessun voto",
        significant: ["significativo (95 %)", "non significativo"],
    };
    /// English.
    pub const ENGLISH: Numbers = Numbers {
        decimal_comma: false,
        votes: "votes",
        weekdays: ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
        no_votes: "no votes",
        significant: ["significant (95 %)", "not significant"],
    };

    /// `value` with one decimal: `72,5` or `72.5`.
    pub fn one_decimal(&self, value: f64) -> String {
        let text = format!("{value:.1}");
        if self.decimal_comma { text.replace('.', ",") } else { text }
    }

    /// A whole number with thousands separated: `12.345` or `12,345`.
    pub fn count(&self, value: u64) -> String {
        let digits = value.to_string();
        let separator = if self.decimal_comma { '.' } else { ',' };
        let mut out = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(separator);
            }
            out.push(c);
        }
        out
    }
}

/// One group of `index_bars`.
#[derive(Debug, Clone)]
pub struct IndexBar {
    /// The group's name (a service, a municipality), escaped when drawn.
    pub label: String,
    /// The index, percent (0–100), e.g. the views' `csat_pct`.
    pub value_pct: f64,
    /// The Wilson 95 % interval of the same share, percent (`wilson_low_pct`, `wilson_high_pct`).
    pub low_pct: f64,
    /// Upper end of the interval, percent.
    pub high_pct: f64,
    /// The counted votes behind it.
    pub votes: u64,
}

/// Shared geometry of the horizontal bar charts, in SVG user units (pixels at scale 1).
const LABEL_W: f64 = 220.0;
const PLOT_W: f64 = 420.0;
const NOTE_W: f64 = 220.0;
const ROW_H: f64 = 26.0;
const TOP: f64 = 26.0;

fn open_svg(out: &mut String, width: f64, height: f64, title: &str, class: &str) {
    let title = escape(title);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart {class}" role="img" aria-label="{title}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="13"><title>{title}</title>"#
    );
}

/// The percent axis of the bar charts: ticks at 0, 25, 50, 75, 100.
fn percent_axis(out: &mut String, x0: f64, height: f64, numbers: &Numbers) {
    for tick in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let x = x0 + PLOT_W * tick / 100.0;
        let _ = write!(
            out,
            r##"<line x1="{x}" y1="{y1}" x2="{x}" y2="{height}" stroke="#ccc" stroke-width="1"/><text x="{x}" y="{ty}" text-anchor="middle" font-size="11" fill="#555">{} %</text>"##,
            numbers.count(tick as u64),
            y1 = TOP - 4.0,
            ty = TOP - 8.0,
        );
    }
}

/// Horizontal index bars: per group the index as a bar, its Wilson 95 % interval as a whisker
/// (the interval of Wilson 1927, "Probable inference…", as `wilson_lower`/`wilson_upper`
/// compute it), and the value and vote count printed at the right. An empty `rows` draws a
/// line saying there are no votes.
pub fn index_bars(title: &str, rows: &[IndexBar], numbers: &Numbers) -> String {
    let height = TOP + ROW_H * rows.len().max(1) as f64 + 8.0;
    let width = LABEL_W + PLOT_W + NOTE_W;
    let mut out = String::with_capacity(600 + rows.len() * 700);
    open_svg(&mut out, width, height, title, "index-bars");
    percent_axis(&mut out, LABEL_W, height - 4.0, numbers);
    if rows.is_empty() {
        let _ = write!(out, r#"<text x="{LABEL_W}" y="{}">{}</text>"#, TOP + 17.0, escape(numbers.no_votes));
    }
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let scale = |pct: f64| LABEL_W + PLOT_W * pct.clamp(0.0, 100.0) / 100.0;
        let (x_value, x_low, x_high) = (scale(row.value_pct), scale(row.low_pct), scale(row.high_pct));
        let mid = y + ROW_H / 2.0;
        let value = numbers.one_decimal(row.value_pct);
        let (low, high) = (numbers.one_decimal(row.low_pct), numbers.one_decimal(row.high_pct));
        let label = escape(&row.label);
        let _ = write!(
            out,
            r##"<g class="row" data-label="{label}" data-value="{vpct}" data-low="{lpct}" data-high="{hpct}" data-votes="{votes}"><title>{label}: {value} % [{low}–{high}], {vc} {vw}</title><text x="{lx}" y="{ty}" text-anchor="end">{label}</text><rect x="{LABEL_W}" y="{by}" width="{bw:.1}" height="14" fill="#4a78b5"/><line x1="{x_low:.1}" y1="{mid}" x2="{x_high:.1}" y2="{mid}" stroke="#111" stroke-width="2"/><line x1="{x_low:.1}" y1="{wt}" x2="{x_low:.1}" y2="{wb}" stroke="#111" stroke-width="2"/><line x1="{x_high:.1}" y1="{wt}" x2="{x_high:.1}" y2="{wb}" stroke="#111" stroke-width="2"/><text x="{nx}" y="{ty}"><tspan font-weight="bold">{value} %</tspan> <tspan font-size="11" fill="#444">[{low}–{high}] · {vc} {vw}</tspan></text></g>"##,
            vpct = row.value_pct,
            lpct = row.low_pct,
            hpct = row.high_pct,
            votes = row.votes,
            vc = numbers.count(row.votes),
            vw = escape(numbers.votes),
            lx = LABEL_W - 8.0,
            ty = mid + 4.5,
            by = mid - 7.0,
            bw = x_value - LABEL_W,
            wt = mid - 6.0,
            wb = mid + 6.0,
            nx = LABEL_W + PLOT_W + 8.0,
        );
    }
    out.push_str("</svg>");
    out
}

/// One bar of `bars`.
#[derive(Debug, Clone)]
pub struct Bar {
    /// What the bar is (a reason, a region), escaped when drawn.
    pub label: String,
    /// Its length against the chart's `max`, in the caller's unit.
    pub value: f64,
    /// The text printed after the bar (the value with its unit, a count …), escaped.
    pub note: String,
}

/// Simple labelled horizontal bars, lengths `value / max` (a `max` of 0 or less draws empty
/// bars), each with its `note` printed after it.
pub fn bars(title: &str, rows: &[Bar], max: f64, numbers: &Numbers) -> String {
    let height = 8.0 + ROW_H * rows.len().max(1) as f64;
    let width = LABEL_W + PLOT_W + NOTE_W;
    let mut out = String::with_capacity(400 + rows.len() * 400);
    open_svg(&mut out, width, height, title, "bars");
    if rows.is_empty() {
        let _ = write!(out, r#"<text x="{LABEL_W}" y="21">{}</text>"#, escape(numbers.no_votes));
    }
    for (i, row) in rows.iter().enumerate() {
        let y = 4.0 + ROW_H * i as f64;
        let share = if max > 0.0 { (row.value / max).clamp(0.0, 1.0) } else { 0.0 };
        let label = escape(&row.label);
        let note = escape(&row.note);
        let _ = write!(
            out,
            r##"<g class="row" data-label="{label}" data-value="{value}"><title>{label}: {note}</title><text x="{lx}" y="{ty}" text-anchor="end">{label}</text><rect x="{LABEL_W}" y="{by}" width="{bw:.1}" height="14" fill="#4a78b5"/><rect x="{LABEL_W}" y="{by}" width="{PLOT_W}" height="14" fill="none" stroke="#bbb"/><text x="{nx}" y="{ty}">{note}</text></g>"##,
            value = row.value,
            lx = LABEL_W - 8.0,
            ty = y + ROW_H / 2.0 + 4.5,
            by = y + ROW_H / 2.0 - 7.0,
            bw = PLOT_W * share,
            nx = LABEL_W + PLOT_W + 8.0,
        );
    }
    out.push_str("</svg>");
    out
}

/// One cell of `heat_map`.
#[derive(Debug, Clone, Copy)]
pub struct HeatCell {
    /// ISO weekday, 1 (Monday) … 7 (Sunday), Italian time.
    pub weekday: u8,
    /// Hour of the day, 0–23, Italian time.
    pub hour: u8,
    /// The index, percent (0–100).
    pub value_pct: f64,
    /// The counted votes in the cell.
    pub votes: u64,
}

/// The heat map's five classes: upper bounds (percent) and fills, light to dark blue (one hue,
/// so it reads in grey too), with the text colour that stays readable on each.
const HEAT_CLASSES: [(f64, &str, &str); 5] = [
    (20.0, "#eff3ff", "#000"),
    (40.0, "#bdd7e7", "#000"),
    (60.0, "#6baed6", "#000"),
    (80.0, "#3182bd", "#fff"),
    (100.0, "#08519c", "#fff"),
];

fn heat_class(value_pct: f64) -> usize {
    HEAT_CLASSES.iter().position(|(upper, _, _)| value_pct < *upper).unwrap_or(HEAT_CLASSES.len() - 1)
}

/// A weekday × hour heat map (7 rows, 24 columns, Italian time): each cell with votes prints
/// its index (whole percent) and, smaller, its vote count, and is filled by the index's class;
/// an empty cell prints "·". A legend below names the classes. Cells outside 1–7 × 0–23 are
/// ignored; a cell given twice keeps the last.
pub fn heat_map(title: &str, cells: &[HeatCell], numbers: &Numbers) -> String {
    const LEFT: f64 = 44.0;
    const CELL_W: f64 = 34.0;
    const CELL_H: f64 = 32.0;
    const HEAD: f64 = 18.0;
    let mut grid = [[None::<HeatCell>; 24]; 7];
    for cell in cells {
        if (1..=7).contains(&cell.weekday) && cell.hour < 24 {
            grid[usize::from(cell.weekday - 1)][usize::from(cell.hour)] = Some(*cell);
        }
    }
    let width = LEFT + CELL_W * 24.0 + 4.0;
    let grid_bottom = HEAD + CELL_H * 7.0;
    let height = grid_bottom + 40.0;
    let mut out = String::with_capacity(30_000);
    open_svg(&mut out, width, height, title, "heat-map");
    for hour in 0..24 {
        let x = LEFT + CELL_W * f64::from(hour) + CELL_W / 2.0;
        let _ = write!(out, r##"<text x="{x}" y="13" text-anchor="middle" font-size="11" fill="#555">{hour}</text>"##);
    }
    for (day, row) in grid.iter().enumerate() {
        let y = HEAD + CELL_H * day as f64;
        let _ = write!(out, r#"<text x="4" y="{}" font-size="12">{}</text>"#, y + CELL_H / 2.0 + 4.0, escape(numbers.weekdays[day]));
        for (hour, cell) in row.iter().enumerate() {
            let x = LEFT + CELL_W * hour as f64;
            let Some(cell) = cell else {
                let _ = write!(
                    out,
                    r##"<rect x="{x}" y="{y}" width="{CELL_W}" height="{CELL_H}" fill="#fff" stroke="#ddd"/><text x="{cx}" y="{cy}" text-anchor="middle" fill="#999">·</text>"##,
                    cx = x + CELL_W / 2.0,
                    cy = y + CELL_H / 2.0 + 4.0,
                );
                continue;
            };
            let (_, fill, ink) = HEAT_CLASSES[heat_class(cell.value_pct)];
            let value = cell.value_pct.round() as i64;
            let _ = write!(
                out,
                r##"<g class="cell" data-weekday="{wd}" data-hour="{hour}" data-value="{vp}" data-votes="{votes}"><title>{day_name} {hour}:00 — {vt} %, {vc} {vw}</title><rect x="{x}" y="{y}" width="{CELL_W}" height="{CELL_H}" fill="{fill}" stroke="#fff"/><text x="{cx}" y="{ty}" text-anchor="middle" font-size="12" fill="{ink}">{value}</text><text x="{cx}" y="{ny}" text-anchor="middle" font-size="9" fill="{ink}">{vc}</text></g>"##,
                wd = cell.weekday,
                vp = cell.value_pct,
                votes = cell.votes,
                day_name = escape(numbers.weekdays[day]),
                vt = numbers.one_decimal(cell.value_pct),
                vc = numbers.count(cell.votes),
                vw = escape(numbers.votes),
                cx = x + CELL_W / 2.0,
                ty = y + 14.0,
                ny = y + 26.0,
            );
        }
    }
    // The legend: the five classes with their ranges, and how to read a cell.
    let y = grid_bottom + 12.0;
    let mut lower = 0.0;
    for (i, (upper, fill, ink)) in HEAT_CLASSES.iter().enumerate() {
        let x = LEFT + 90.0 * i as f64;
        let _ = write!(
            out,
            r##"<rect x="{x}" y="{y}" width="86" height="18" fill="{fill}" stroke="#999"/><text x="{tx}" y="{ty}" text-anchor="middle" font-size="11" fill="{ink}">{lo}–{hi} %</text>"##,
            tx = x + 43.0,
            ty = y + 13.0,
            lo = lower as u64,
            hi = *upper as u64,
        );
        lower = *upper;
    }
    let _ = write!(
        out,
        r##"<text x="{x}" y="{ty}" font-size="11" fill="#333">% / {vw}</text>"##,
        x = LEFT + 90.0 * 5.0 + 6.0,
        ty = y + 13.0,
        vw = escape(numbers.votes),
    );
    out.push_str("</svg>");
    out
}

/// One period of `week_over_week`.
#[derive(Debug, Clone)]
pub struct Period {
    /// Its name ("questa settimana", "23/11/2026"), escaped when drawn.
    pub label: String,
    /// The index, percent; `None` when the period had no votes.
    pub value_pct: Option<f64>,
    /// The counted votes in the period.
    pub votes: u64,
}

/// A small comparison: this period's and the previous period's index as two bars, the change
/// in points, and whether it is significant (`z`, the two-proportion test `change_z` of the
/// views, |z| ≥ 1.96 at 95 %; `None` when either period had no votes).
pub fn week_over_week(title: &str, current: &Period, previous: &Period, z: Option<f64>, numbers: &Numbers) -> String {
    // Wide enough for the note after the bar ("66,7 % · 15.312 voti" at 11 px).
    const W: f64 = 460.0;
    const PLOT: f64 = 160.0;
    const LEFT: f64 = 130.0;
    let mut out = String::with_capacity(2_000);
    open_svg(&mut out, W, 88.0, title, "week-over-week");
    for (i, period) in [previous, current].iter().enumerate() {
        let y = 4.0 + 24.0 * i as f64;
        let label = escape(&period.label);
        let (width, note, value) = match period.value_pct {
            Some(v) => (
                PLOT * v.clamp(0.0, 100.0) / 100.0,
                format!("{} % · {} {}", numbers.one_decimal(v), numbers.count(period.votes), numbers.votes),
                v.to_string(),
            ),
            None => (0.0, numbers.no_votes.to_string(), String::new()),
        };
        let fill = if i == 1 { "#4a78b5" } else { "#a9a9a9" };
        let _ = write!(
            out,
            r##"<g class="period" data-value="{value}" data-votes="{votes}"><text x="{lx}" y="{ty}" text-anchor="end" font-size="12">{label}</text><rect x="{LEFT}" y="{y}" width="{width:.1}" height="16" fill="{fill}"/><rect x="{LEFT}" y="{y}" width="{PLOT}" height="16" fill="none" stroke="#bbb"/><text x="{nx}" y="{ty}" font-size="11">{note}</text></g>"##,
            votes = period.votes,
            lx = LEFT - 6.0,
            ty = y + 12.5,
            nx = LEFT + PLOT + 6.0,
            note = escape(&note),
        );
    }
    let change = match (current.value_pct, previous.value_pct) {
        (Some(now), Some(before)) => {
            let delta = now - before;
            let arrow = if delta > 0.0 {
                "▲"
            } else if delta < 0.0 {
                "▼"
            } else {
                "="
            };
            let sign = if delta > 0.0 { "+" } else { "" };
            let verdict = match z {
                Some(z) if z.abs() >= 1.96 => numbers.significant[0],
                _ => numbers.significant[1],
            };
            format!("{arrow} {sign}{} pt · {verdict}", numbers.one_decimal(delta))
        }
        _ => "—".to_string(),
    };
    let _ = write!(out, r#"<text class="change" x="{LEFT}" y="72" font-size="12">{}</text>"#, escape(&change));
    out.push_str("</svg>");
    out
}

/// A face drawn by its shape and named by its label, `size` pixels square: positive (+1) a
/// circle that smiles, neutral (0) a square with a straight mouth, negative (−1) a triangle
/// that frowns; the colour only repeats what shape and label say. Any other `face` is drawn as
/// neutral. `label` is escaped.
pub fn face(face: i8, label: &str, size: u32) -> String {
    let label = escape(label);
    let (outline, mouth, fill) = match face {
        1 => (
            r##"<circle cx="12" cy="12" r="10.5""##,
            r##"<path d="M7 13.5 Q12 18.5 17 13.5" fill="none" stroke="#000" stroke-width="1.8"/>"##,
            "#5fb760",
        ),
        -1 => (
            r##"<path d="M12 1.5 L23 22 L1 22 Z""##,
            r##"<path d="M8.5 19 Q12 15.5 15.5 19" fill="none" stroke="#000" stroke-width="1.8"/>"##,
            "#e0584f",
        ),
        _ => (
            r##"<rect x="1.5" y="1.5" width="21" height="21""##,
            r##"<line x1="7.5" y1="16" x2="16.5" y2="16" stroke="#000" stroke-width="1.8"/>"##,
            "#f2c94c",
        ),
    };
    let eyes_y = if face == -1 { 14.0 } else { 9.5 };
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="face" role="img" aria-label="{label}" viewBox="0 0 24 24" width="{size}" height="{size}"><title>{label}</title>{outline} fill="{fill}" stroke="#000" stroke-width="1.2"/><circle cx="8.5" cy="{eyes_y}" r="1.4"/><circle cx="15.5" cy="{eyes_y}" r="1.4"/>{mouth}</svg>"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small well-formedness check of the XML the charts write: every tag closes in order,
    /// attributes are quoted, text holds no raw `<` and only the five entities and numeric
    /// references; returns the element names in document order.
    fn check_xml(text: &str) -> Result<Vec<String>, String> {
        let (mut stack, mut names) = (Vec::<String>::new(), Vec::new());
        let mut rest = text;
        while let Some(start) = rest.find('<') {
            check_text(&rest[..start])?;
            let end = rest[start..].find('>').ok_or("an unclosed tag")? + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
                if open != name {
                    return Err(format!("</{name}> closes <{open}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name: String = tag.chars().take_while(|c| !c.is_whitespace()).collect();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-') {
                return Err(format!("a bad element name {name:?}"));
            }
            check_attributes(&tag[name.len()..])?;
            names.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
            if stack.is_empty() && !rest.is_empty() {
                return Err("text after the root element".into());
            }
        }
        check_text(rest)?;
        if let Some(open) = stack.pop() {
            return Err(format!("<{open}> is never closed"));
        }
        Ok(names)
    }

    fn check_attributes(mut text: &str) -> Result<(), String> {
        loop {
            text = text.trim_start();
            if text.is_empty() {
                return Ok(());
            }
            let eq = text.find('=').ok_or(format!("an attribute without a value: {text:?}"))?;
            let value = text[eq + 1..].strip_prefix('"').ok_or(format!("an unquoted attribute: {text:?}"))?;
            let close = value.find('"').ok_or("an unterminated attribute")?;
            check_text(&value[..close])?;
            text = &value[close + 1..];
        }
    }

    fn check_text(text: &str) -> Result<(), String> {
        if text.contains('<') {
            return Err(format!("a raw < in {text:?}"));
        }
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
            let known = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].contains(&entity) || entity.starts_with("&#");
            if !known {
                return Err(format!("a raw & in {text:?}"));
            }
        }
        Ok(())
    }

    fn accessible(svg: &str, title: &str) {
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.contains(r#"role="img""#));
        assert!(svg.contains(&format!(r#"aria-label="{}""#, escape(title))));
        assert!(svg.contains(&format!("<title>{}</title>", escape(title))));
    }

    const HOSTILE: &str = "Sant'Angelo <b>&</b> \"Ufficio\"";

    #[test]
    fn index_bars_draw_the_interval_and_the_votes_and_escape_names() {
        let rows = [
            IndexBar { label: "Anagrafe".into(), value_pct: 72.5, low_pct: 65.1, high_pct: 79.0, votes: 1234 },
            IndexBar { label: HOSTILE.into(), value_pct: 10.0, low_pct: 0.0, high_pct: 40.2, votes: 3 },
        ];
        let svg = index_bars("Indice per servizio", &rows, &Numbers::ITALIAN);
        let names = check_xml(&svg).expect("well-formed");
        accessible(&svg, "Indice per servizio");
        assert_eq!(names.iter().filter(|n| *n == "g").count(), 2);
        // One bar and three whisker lines per row.
        assert!(svg.contains(r#"data-value="72.5" data-low="65.1" data-high="79" data-votes="1234""#));
        assert!(svg.contains("72,5 %") && svg.contains("[65,1–79,0] · 1.234 voti"), "{svg}");
        assert!(!svg.contains("<b>") && svg.contains("Sant&#39;Angelo &lt;b&gt;&amp;&lt;/b&gt; &quot;Ufficio&quot;"));
        // The whisker of the first row spans 65.1 % to 79.0 % of the plot.
        let x = |pct: f64| format!("{:.1}", LABEL_W + PLOT_W * pct / 100.0);
        assert!(svg.contains(&format!(r#"x1="{}" y1="{}" x2="{}""#, x(65.1), TOP + ROW_H / 2.0, x(79.0))), "{svg}");
        let english = index_bars("Index", &rows, &Numbers::ENGLISH);
        assert!(english.contains("72.5 %") && english.contains("1,234 votes"));
        let empty = index_bars("Index", &[], &Numbers::ENGLISH);
        check_xml(&empty).expect("well-formed");
        assert!(empty.contains("no votes"));
    }

    #[test]
    fn bars_are_proportional_to_the_maximum() {
        let rows = [
            Bar { label: "tempo di attesa".into(), value: 40.0, note: "40,0 %".into() },
            Bar { label: HOSTILE.into(), value: 10.0, note: "10 < 20".into() },
        ];
        let svg = bars("Motivi", &rows, 80.0, &Numbers::ITALIAN);
        check_xml(&svg).expect("well-formed");
        accessible(&svg, "Motivi");
        assert!(svg.contains(&format!(r#"width="{:.1}""#, PLOT_W / 2.0)), "{svg}");
        assert!(svg.contains(&format!(r#"width="{:.1}""#, PLOT_W / 8.0)), "{svg}");
        assert!(svg.contains("10 &lt; 20"));
        let zero = bars("Motivi", &rows, 0.0, &Numbers::ITALIAN);
        assert!(zero.contains(r#"width="0.0""#));
    }

    #[test]
    fn heat_map_has_168_cells_each_printing_value_and_count_and_a_legend() {
        let cells = [
            HeatCell { weekday: 1, hour: 9, value_pct: 72.4, votes: 15 },
            HeatCell { weekday: 7, hour: 23, value_pct: 5.0, votes: 2 },
            HeatCell { weekday: 8, hour: 9, value_pct: 50.0, votes: 1 },
            HeatCell { weekday: 1, hour: 24, value_pct: 50.0, votes: 1 },
        ];
        let svg = heat_map("Mappa", &cells, &Numbers::ITALIAN);
        let names = check_xml(&svg).expect("well-formed");
        accessible(&svg, "Mappa");
        // 168 cells and 5 legend swatches; two cells with votes (the bad ones are ignored).
        assert_eq!(names.iter().filter(|n| *n == "rect").count(), 168 + 5);
        assert_eq!(svg.matches(r#"class="cell""#).count(), 2);
        assert!(svg.contains(r#"data-weekday="1" data-hour="9" data-value="72.4" data-votes="15""#));
        assert!(svg.contains(">72</text>") && svg.contains(">15</text>"), "the value and count are printed");
        assert!(svg.contains("lun 9:00 — 72,4 %, 15 voti"));
        assert!(svg.contains("0–20 %") && svg.contains("80–100 %"));
        assert_eq!(heat_class(0.0), 0);
        assert_eq!(heat_class(79.9), 3);
        assert_eq!(heat_class(100.0), 4);
    }

    #[test]
    fn week_over_week_says_the_change_and_its_significance() {
        let now = Period { label: "questa settimana".into(), value_pct: Some(60.0), votes: 100 };
        let before = Period { label: "settimana prima".into(), value_pct: Some(45.0), votes: 100 };
        let svg = week_over_week("Settimana", &now, &before, Some(2.12), &Numbers::ITALIAN);
        check_xml(&svg).expect("well-formed");
        accessible(&svg, "Settimana");
        assert!(svg.contains("▲ +15,0 pt · significativo (95 %)"), "{svg}");
        let down = week_over_week("Week", &before, &now, Some(-1.5), &Numbers::ENGLISH);
        assert!(down.contains("▼ -15.0 pt · not significant"), "{down}");
        let none = Period { label: "x".into(), value_pct: None, votes: 0 };
        let empty = week_over_week("Week", &now, &none, None, &Numbers::ENGLISH);
        check_xml(&empty).expect("well-formed");
        assert!(empty.contains("no votes") && empty.contains(">—<"));
    }

    #[test]
    fn faces_differ_by_shape_and_label() {
        let (happy, neutral, sad) = (face(1, "positivo", 20), face(0, "neutro", 20), face(-1, HOSTILE, 20));
        for svg in [&happy, &neutral, &sad] {
            check_xml(svg).expect("well-formed");
        }
        assert!(happy.contains("<circle cx=\"12\"") && neutral.contains("<rect") && sad.contains("<path d=\"M12 1.5"));
        assert!(happy.contains(r#"aria-label="positivo""#) && sad.contains("&lt;b&gt;"));
    }

    #[test]
    fn numbers_follow_the_language() {
        assert_eq!(Numbers::ITALIAN.one_decimal(72.46), "72,5");
        assert_eq!(Numbers::ITALIAN.count(1_234_567), "1.234.567");
        assert_eq!(Numbers::ENGLISH.count(999), "999");
        assert_eq!(Numbers::ENGLISH.count(1000), "1,000");
        assert_eq!(Numbers::ENGLISH.one_decimal(-0.04), "-0.0");
    }

    #[test]
    fn the_checker_catches_broken_xml() {
        assert!(check_xml("<svg><g></svg>").is_err());
        assert!(check_xml("<svg a=b/>").is_err());
        assert!(check_xml("<svg>a & b</svg>").is_err());
        assert!(check_xml("<svg><title>ok &amp; fine</title></svg>").is_ok());
    }
}
