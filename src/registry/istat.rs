//! ISTAT's own files, as ISTAT publishes them: the list of comuni ("Elenco dei codici e delle
//! denominazioni delle unità territoriali", <https://www.istat.it/classificazione/codici-dei-comuni-delle-province-e-delle-regioni/>)
//! and the administrative variations ("Variazioni amministrative e territoriali dei comuni dal
//! 1991"). Both are Latin-1, `;`-separated, with ISTAT's Italian header (which has quoted
//! cells spanning two lines); columns are found by their header name, so editions that add,
//! drop or move columns (newer lists lack "Popolazione legale 2011") read the same. Pure: the
//! caller reads the bytes.

use crate::model::IstatCode;

use super::RegistryError;

/// Columns of the list that an import needs, as ISTAT names them (compared without case and
/// with runs of whitespace as one space).
const CODE: &str = "Codice Comune formato alfanumerico";
const REGION_CODE: &str = "Codice Regione";
const NAME: &str = "Denominazione in italiano";
const AREA: &str = "Ripartizione geografica";
const REGION: &str = "Denominazione Regione";
const PROVINCE: &str = "Sigla automobilistica";
/// Optional: the 2011 census population (the 2020 edition has it, later ones may not).
const POPULATION: &str = "Popolazione legale 2011";

/// Columns of the variations file.
const KIND: &str = "Tipo variazione";
const VARIED_CODE: &str = "Codice Istat del Comune";
const VARIED_NAME: &str = "Denominazione Comune";
const ASSOCIATED_CODE: &str = "Codice Istat del Comune associato alla variazione";
const DATE: &str = "Data decorrenza validità amministrativa";

/// ISTAT's variation type for a suppressed comune ("estinzione"): its territory went to the
/// associated comune.
pub(crate) const SUPPRESSION: &str = "ES";

/// One comune of an ISTAT list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListRow {
    /// The line of the file the row starts on (1 = the header's first line).
    pub(crate) line: u64,
    pub(crate) code: IstatCode,
    pub(crate) name: String,
    pub(crate) province: String,
    pub(crate) region_code: u8,
    pub(crate) region: String,
    pub(crate) area: String,
    /// "Popolazione legale 2011", when the edition has the column.
    pub(crate) population: Option<u32>,
}

/// One row of ISTAT's variations file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Variation {
    pub(crate) line: u64,
    /// ISTAT's type: `ES` (suppression), `CS` (constitution), `CD` (change of name), …
    pub(crate) kind: String,
    pub(crate) municipality: IstatCode,
    pub(crate) name: String,
    /// The associated comune (for `ES`, the one that took the territory).
    pub(crate) associated: Option<IstatCode>,
    /// "Data decorrenza validità amministrativa" as YYYY-MM-DD, when given.
    pub(crate) date: Option<String>,
}

/// The text of an ISTAT file: ISTAT publishes Latin-1; a file already converted to UTF-8 (valid
/// UTF-8 is almost never Latin-1 text with accents) is taken as it is.
pub(crate) fn decode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.trim_start_matches('\u{feff}').to_string(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// The line (from 1) of byte `offset` in `text`, as an editor shows it (a quoted cell spanning
/// lines, as in ISTAT's header, counts every line).
fn line_at(text: &str, offset: u64) -> u64 {
    let end = record_start(text, offset);
    1 + text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() as u64
}

/// The first byte of the record csv places at `offset`: csv's position of a record may point at
/// the line break before it (the `\n` of a `\r\n`), or at blank lines it skips.
fn record_start(text: &str, offset: u64) -> usize {
    let mut start = (offset as usize).min(text.len());
    while matches!(text.as_bytes().get(start), Some(b'\r' | b'\n')) {
        start += 1;
    }
    start
}

/// `line_at` for offsets that only grow (the records of one file), in one pass.
struct Lines<'a> {
    text: &'a str,
    offset: usize,
    line: u64,
}

impl Lines<'_> {
    fn at(&mut self, offset: u64) -> u64 {
        let end = record_start(self.text, offset);
        if end < self.offset {
            return line_at(self.text, offset);
        }
        self.line += self.text.as_bytes()[self.offset..end].iter().filter(|&&b| b == b'\n').count() as u64;
        self.offset = end;
        self.line
    }
}

fn normalise(header: &str) -> String {
    header.trim().trim_start_matches('\u{feff}').split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn invalid(file: &str, line: u64, message: impl std::fmt::Display) -> RegistryError {
    RegistryError::Import(format!("{file} line {line}: {message}"))
}

/// A `;`-separated reader over `text` and the normalised header, with `file` named in errors.
fn open<'a>(text: &'a str, file: &str, what: &str, first: &str) -> Result<(csv::Reader<&'a [u8]>, Vec<String>), RegistryError> {
    let mut reader = csv::ReaderBuilder::new().delimiter(b';').flexible(true).from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().map_err(|e| invalid(file, 1, format!("{what}: {e}")))?.iter().map(normalise).collect();
    if header.first().map(String::as_str) != Some(normalise(first).as_str()) || header.len() < 2 {
        let found: String = text.lines().next().unwrap_or_default().chars().take(60).collect();
        return Err(invalid(
            file,
            1,
            format!("the header is not ISTAT's {what}: expected ';'-separated columns beginning with \"{first}\", found {found:?}"),
        ));
    }
    Ok((reader, header))
}

/// The index of the column named `name` (exactly, or as a prefix when `prefix`).
fn column(header: &[String], name: &str, prefix: bool) -> Option<usize> {
    let name = normalise(name);
    header.iter().position(|h| if prefix { h.starts_with(&name) } else { *h == name })
}

fn required(header: &[String], name: &str, prefix: bool, file: &str, what: &str) -> Result<usize, RegistryError> {
    column(header, name, prefix).ok_or_else(|| invalid(file, 1, format!("the header of ISTAT's {what} has no column \"{name}\"")))
}

/// Reads an ISTAT list of comuni; `file` names it in errors.
///
/// # Errors
/// `Import` naming the line and the column: a header that is not ISTAT's (another delimiter,
/// a missing column), a code that is not six digits, a duplicate code, a region code outside
/// 1–20, an empty name or province, a population that is not a number.
pub(crate) fn parse_list(text: &str, file: &str) -> Result<Vec<ListRow>, RegistryError> {
    const WHAT: &str = "list of comuni (\"Elenco dei codici e delle denominazioni delle unità territoriali\")";
    let (mut reader, header) = open(text, file, WHAT, REGION_CODE)?;
    let code = required(&header, CODE, false, file, WHAT)?;
    let region_code = required(&header, REGION_CODE, false, file, WHAT)?;
    let name = required(&header, NAME, false, file, WHAT)?;
    let area = required(&header, AREA, false, file, WHAT)?;
    let region = required(&header, REGION, false, file, WHAT)?;
    let province = required(&header, PROVINCE, false, file, WHAT)?;
    let population = column(&header, POPULATION, true);
    let mut rows: Vec<ListRow> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    let mut lines = Lines { text, offset: 0, line: 1 };
    for record in reader.records() {
        let record = record.map_err(|e| invalid(file, e.position().map_or(0, |p| line_at(text, p.byte())), e))?;
        let line = record.position().map_or(0, |p| lines.at(p.byte()));
        if record.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        let cell = |i: usize, title: &str| -> Result<String, RegistryError> {
            record.get(i).map(|c| c.trim().to_string()).ok_or_else(|| {
                invalid(file, line, format!("field \"{title}\" is missing (the row has {} fields; is the delimiter ';'?)", record.len()))
            })
        };
        let text_code = cell(code, CODE)?;
        let parsed = IstatCode::parse(&text_code)
            .filter(|c| c.0 > 0 && text_code.len() == 6)
            .ok_or_else(|| invalid(file, line, format!("field \"{CODE}\": {text_code:?} is not a six-digit ISTAT code")))?;
        if let Some(first) = seen.insert(parsed, line) {
            return Err(invalid(file, line, format!("field \"{CODE}\": {text_code} is also on line {first}")));
        }
        let text_region = cell(region_code, REGION_CODE)?;
        let parsed_region = text_region
            .parse::<u8>()
            .ok()
            .filter(|r| (1..=20).contains(r))
            .ok_or_else(|| invalid(file, line, format!("field \"{REGION_CODE}\": {text_region:?} is not a region code (01 to 20)")))?;
        let nonempty = |i: usize, title: &str| -> Result<String, RegistryError> {
            let value = cell(i, title)?;
            if value.is_empty() {
                return Err(invalid(file, line, format!("field \"{title}\" is empty")));
            }
            Ok(value)
        };
        let population = match population {
            None => None,
            Some(i) => {
                let value = cell(i, POPULATION)?;
                // ISTAT writes thousands with a dot: 1.602.
                let digits: String = value.chars().filter(|c| *c != '.' && !c.is_whitespace()).collect();
                Some(
                    digits
                        .parse::<u32>()
                        .map_err(|_| invalid(file, line, format!("field \"{POPULATION}\": {value:?} is not a number of inhabitants")))?,
                )
            }
        };
        rows.push(ListRow {
            line,
            code: parsed,
            name: nonempty(name, NAME)?,
            province: nonempty(province, PROVINCE)?,
            region_code: parsed_region,
            region: nonempty(region, REGION)?,
            area: nonempty(area, AREA)?,
            population,
        });
    }
    if rows.is_empty() {
        return Err(invalid(file, 2, "the list has no comuni"));
    }
    Ok(rows)
}

/// A date as ISTAT writes it (`31/12/2025`) or as ISO (`2025-12-31`), as YYYY-MM-DD.
pub(crate) fn date(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text.split_whitespace().next().unwrap_or_default();
    ["%d/%m/%Y", "%Y-%m-%d", "%d-%m-%Y"]
        .iter()
        .find_map(|f| chrono::NaiveDate::parse_from_str(text, f).ok())
        .map(|d| d.format("%Y-%m-%d").to_string())
}

/// Reads ISTAT's variations file; `file` names it in errors.
///
/// # Errors
/// `Import` naming the line and the column: a header that is not ISTAT's, a code that is not
/// six digits, an `ES` row without the associated comune, a date that is not a date.
pub(crate) fn parse_variations(text: &str, file: &str) -> Result<Vec<Variation>, RegistryError> {
    const WHAT: &str = "variations (\"Variazioni amministrative e territoriali dei comuni\")";
    let (mut reader, header) = open(text, file, WHAT, "Anno")?;
    let kind = required(&header, KIND, false, file, WHAT)?;
    let code = required(&header, VARIED_CODE, false, file, WHAT)?;
    let name = required(&header, VARIED_NAME, false, file, WHAT)?;
    let associated = required(&header, ASSOCIATED_CODE, true, file, WHAT)?;
    let date_column = column(&header, DATE, true);
    let mut variations = Vec::new();
    let mut lines = Lines { text, offset: 0, line: 1 };
    for record in reader.records() {
        let record = record.map_err(|e| invalid(file, e.position().map_or(0, |p| line_at(text, p.byte())), e))?;
        let line = record.position().map_or(0, |p| lines.at(p.byte()));
        if record.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        let cell = |i: usize| record.get(i).unwrap_or_default().trim().to_string();
        let parse_code = |i: usize, title: &str| -> Result<Option<IstatCode>, RegistryError> {
            let value = cell(i);
            if value.is_empty() {
                return Ok(None);
            }
            IstatCode::parse(&value)
                .filter(|c| c.0 > 0)
                .map(Some)
                .ok_or_else(|| invalid(file, line, format!("field \"{title}\": {value:?} is not an ISTAT code")))
        };
        let kind = cell(kind).to_uppercase();
        let municipality =
            parse_code(code, VARIED_CODE)?.ok_or_else(|| invalid(file, line, format!("field \"{VARIED_CODE}\" is empty")))?;
        let associated = parse_code(associated, ASSOCIATED_CODE)?;
        if kind == SUPPRESSION && associated.is_none() {
            return Err(invalid(
                file,
                line,
                format!("field \"{ASSOCIATED_CODE}\": a suppression (ES) names the comune that took its place"),
            ));
        }
        let date = match date_column.map(cell).filter(|d| !d.is_empty()) {
            None => None,
            Some(text) => Some(date(&text).ok_or_else(|| invalid(file, line, format!("field \"{DATE}\": {text:?} is not a date")))?),
        };
        variations.push(Variation { line, kind, municipality, name: cell(name), associated, date });
    }
    Ok(variations)
}

/// The edition date in an ISTAT file name: `istat20200101.csv`, `…_01_01_2024…`, `…2024-01-01…`.
pub(crate) fn edition_from_name(name: &str) -> Option<String> {
    let digits: Vec<(usize, char)> = name.char_indices().collect();
    for start in 0..digits.len() {
        let rest: String = digits[start..].iter().map(|(_, c)| *c).collect();
        for (len, format) in [(10, "%Y-%m-%d"), (10, "%d_%m_%Y"), (10, "%d-%m-%Y"), (8, "%Y%m%d")] {
            if let Some(candidate) = rest.get(..len)
                && let Ok(d) = chrono::NaiveDate::parse_from_str(candidate, format)
                && (1990..=2100).contains(&chrono::Datelike::year(&d))
            {
                return Some(d.format("%Y-%m-%d").to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edition_dates_come_from_istat_file_names() {
        assert_eq!(edition_from_name("istat20200101.csv").as_deref(), Some("2020-01-01"));
        assert_eq!(edition_from_name("Elenco-comuni-al-01_01_2026.csv").as_deref(), Some("2026-01-01"));
        assert_eq!(edition_from_name("comuni-2025-06-30.csv").as_deref(), Some("2025-06-30"));
        assert_eq!(edition_from_name("Elenco-comuni-italiani.csv"), None);
        assert_eq!(date("31/12/2025").as_deref(), Some("2025-12-31"));
    }

    #[test]
    fn latin1_decodes_and_utf8_stays() {
        assert_eq!(decode(b"Agli\xe8"), "Agliè");
        assert_eq!(decode("Agliè".as_bytes()), "Agliè");
    }
}
