//! Result formats shared by `faccia sql` and the HTTP endpoint: text for people and scripts
//! (`table`, `csv`, `json`, `jsonl`), files for tools (`parquet`, `arrow`), and two for Excel as
//! the programme's offices open files, by double-click in an Italian Excel: `xlsx` (typed cells,
//! `query::xlsx`) and `csv-excel` (a CSV that Excel splits and reads right without a wizard).
//!
//! Why `csv-excel` is a preset and not a set of switches: Excel opens a CSV with the
//! separators of the PC's regional settings, and in Italian they are `;` between fields and
//! `,` before decimals; it reads the file as UTF-8 only after a byte-order mark, takes
//! `2026-11-16T10:30:00+01:00` for text, and turns `001001` into the number 1001. Each alone
//! fixes nothing, so the preset does them all. Plain `csv` keeps what scripts and import
//! wizards expect (`.` decimals, RFC 3339 times) and only takes a byte-order mark and a
//! delimiter (`CsvOptions`), which is what a wizard asks for.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};

use crate::storage::buffer::TIME_ZONE;

/// How query results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A text table (the CLI default).
    Table,
    /// Comma-separated values with a header row (UTF-8, `.` decimals, RFC 3339 times).
    Csv,
    /// CSV that an Italian Excel opens right by double-click: byte-order mark, `;`, `,`
    /// decimals, times in Italy as `2026-11-16 10:30:00`, digit-only text kept as text.
    #[serde(rename = "csv-excel")]
    CsvExcel,
    /// One JSON array of row objects.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// One Parquet file.
    Parquet,
    /// The Arrow IPC stream format.
    Arrow,
    /// An Excel workbook: numbers, dates and times (in Italy) as typed cells, text as text.
    Xlsx,
}

impl Format {
    /// The HTTP content type of the format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Table => "text/plain; charset=utf-8",
            Format::Csv | Format::CsvExcel => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Jsonl => "application/x-ndjson",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }

    /// The HTTP `Content-Disposition` of the formats made to be opened as a file: an
    /// attachment, which a browser saves under that name.
    pub(crate) fn content_disposition(self) -> Option<&'static str> {
        match self {
            Format::Xlsx => Some("attachment; filename=\"faccia.xlsx\""),
            Format::CsvExcel => Some("attachment; filename=\"faccia.csv\""),
            _ => None,
        }
    }

    /// Whether the format is bytes no terminal should print.
    pub(crate) fn is_binary(self) -> bool {
        matches!(self, Format::Parquet | Format::Arrow | Format::Xlsx)
    }
}

/// The CSV field delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delimiter {
    /// `,` (the default; RFC 4180).
    #[default]
    Comma,
    /// `;` (what Excel expects where the decimal separator is a comma: Italy, most of Europe).
    Semicolon,
    /// A tab.
    Tab,
}

impl Delimiter {
    /// What `--csv-delimiter` and `delimiter=` accept.
    pub const ALLOWED: &'static str = "`,` (or comma), `;` (or semicolon), tab";

    /// Reads a delimiter from its character or its name.
    ///
    /// # Errors
    /// Anything else, with the values allowed.
    pub fn parse(text: &str) -> Result<Delimiter, String> {
        match text {
            "," | "comma" => Ok(Delimiter::Comma),
            ";" | "semicolon" => Ok(Delimiter::Semicolon),
            "\t" | "tab" => Ok(Delimiter::Tab),
            _ => Err(format!("{text:?} is not a delimiter; use {}", Delimiter::ALLOWED)),
        }
    }

    fn byte(self) -> u8 {
        match self {
            Delimiter::Comma => b',',
            Delimiter::Semicolon => b';',
            Delimiter::Tab => b'\t',
        }
    }
}

/// What an import wizard asks of a CSV file (`--format csv` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CsvOptions {
    /// Start with the UTF-8 byte-order mark (EF BB BF): Excel reads the file as UTF-8 only
    /// after it ("Agliè", not "AgliÃ¨").
    pub bom: bool,
    /// Between fields.
    pub delimiter: Delimiter,
}

impl CsvOptions {
    /// Whether any option differs from plain CSV.
    pub fn is_set(&self) -> bool {
        *self != CsvOptions::default()
    }
}

/// The UTF-8 byte-order mark.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Writes query results in `format` (plain CSV options). `schema` is the result's schema, so
/// that an empty result still has its columns (CSV header, Parquet and Arrow schema, xlsx
/// header).
///
/// # Errors
/// Encoding or write errors; a result Excel cannot hold (`query::xlsx`'s limits).
pub(crate) fn write_results(
    schema: &Arc<Schema>,
    batches: &[RecordBatch],
    format: Format,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    write_output(schema, batches, format, CsvOptions::default(), out)
}

/// As `write_results`, with the CSV options (used by `--format csv` only).
///
/// # Errors
/// As `write_results`.
pub(crate) fn write_output(
    schema: &Arc<Schema>,
    batches: &[RecordBatch],
    format: Format,
    csv: CsvOptions,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    match format {
        Format::Table => writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(batches)?)?,
        Format::Csv => write_csv(schema, batches, csv, false, out)?,
        Format::CsvExcel => write_csv(schema, batches, CsvOptions { bom: true, delimiter: Delimiter::Semicolon }, true, out)?,
        Format::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            writeln!(out)?;
        }
        Format::Jsonl => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        Format::Parquet => {
            let mut bytes = Vec::new();
            let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, Arc::clone(schema), None)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.close()?;
            out.write_all(&bytes)?;
        }
        Format::Arrow => {
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut *out, schema)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        Format::Xlsx => out.write_all(&super::xlsx::workbook(schema, batches)?)?,
    }
    Ok(())
}

/// CSV with a header row; `excel`: the columns as an Italian Excel reads them (`excel_columns`).
fn write_csv(
    schema: &Arc<Schema>,
    batches: &[RecordBatch],
    options: CsvOptions,
    excel: bool,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    if options.bom {
        out.write_all(BOM)?;
    }
    let mut builder = arrow::csv::WriterBuilder::new().with_header(true).with_delimiter(options.delimiter.byte());
    if excel {
        // The time as Excel reads it in any language; the zone is always Italy's (see below).
        builder = builder.with_timestamp_tz_format("%Y-%m-%d %H:%M:%S".into()).with_timestamp_format("%Y-%m-%d %H:%M:%S".into());
    }
    let mut writer = builder.build(out);
    // An empty result still writes its header.
    let empty = [RecordBatch::new_empty(Arc::clone(schema))];
    for batch in if batches.is_empty() { &empty[..] } else { batches } {
        if excel {
            writer.write(&excel_columns(batch)?)?;
        } else {
            writer.write(batch)?;
        }
    }
    Ok(())
}

/// A batch as an Italian Excel reads it by double-click: decimals with a comma, times with a
/// zone in Italian time, text of digits only as the formula `="001001"` (Excel would make a
/// number of it and drop the zeros). Pure: no I/O.
fn excel_columns(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let column: ArrayRef = match column.data_type() {
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => {
                let text = cast(column, &DataType::Utf8)?;
                Arc::new(text.as_string::<i32>().iter().map(|v| v.map(|v| v.replace('.', ","))).collect::<StringArray>())
            }
            DataType::Timestamp(unit, Some(_)) => cast(column, &DataType::Timestamp(*unit, Some(TIME_ZONE.into())))?,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let text = cast(column, &DataType::Utf8)?;
                Arc::new(text.as_string::<i32>().iter().map(|v| v.map(excel_text)).collect::<StringArray>())
            }
            _ => Arc::clone(column),
        };
        fields.push(Field::new(field.name(), column.data_type().clone(), true));
        columns.push(column);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// Text Excel would read as a number (digits only, e.g. an ISTAT code) as a formula that
/// yields the text; other text as it is.
fn excel_text(value: &str) -> String {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) { format!("=\"{value}\"") } else { value.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, TimestampMillisecondArray};

    fn sample() -> (Arc<Schema>, RecordBatch) {
        // 2026-11-16 09:30:00 UTC is 10:30 in Rome (winter); 2026-07-06 08:15:00 UTC is 10:15 (summer).
        let ts = TimestampMillisecondArray::from(vec![Some(1_794_821_400_000), Some(1_783_325_700_000)]).with_timezone("+00:00");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("001001"), Some("054013")])),
            Arc::new(StringArray::from(vec![Some("Agliè"), Some("Città di Castello")])),
            Arc::new(Int64Array::from(vec![Some(200), None])),
            Arc::new(Float64Array::from(vec![Some(72.5), Some(-3.25)])),
            Arc::new(ts),
        ];
        let batch = RecordBatch::try_from_iter(["istat_code", "name", "votes", "happy_index", "ts"].into_iter().zip(columns)).unwrap();
        (batch.schema(), batch)
    }

    fn written(format: Format, csv: CsvOptions, batches: &[RecordBatch], schema: &Arc<Schema>) -> String {
        let mut out = Vec::new();
        write_output(schema, batches, format, csv, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_takes_a_byte_order_mark_and_a_delimiter_and_keeps_its_values() {
        let (schema, batch) = sample();
        let csv = written(Format::Csv, CsvOptions { bom: true, delimiter: Delimiter::Semicolon }, &[batch], &schema);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "\u{feff}istat_code;name;votes;happy_index;ts");
        assert_eq!(lines[1], "001001;Agliè;200;72.5;2026-11-16T09:30:00Z");
        let plain = written(Format::Csv, CsvOptions::default(), &[], &schema);
        assert_eq!(plain, "istat_code,name,votes,happy_index,ts\n", "an empty result keeps its header");
    }

    #[test]
    fn csv_excel_is_what_an_italian_excel_reads_by_double_click() {
        let (schema, batch) = sample();
        let csv = written(Format::CsvExcel, CsvOptions::default(), &[batch], &schema);
        assert!(csv.as_bytes().starts_with(BOM));
        let lines: Vec<&str> = csv.trim_start_matches('\u{feff}').lines().collect();
        assert_eq!(lines[0], "istat_code;name;votes;happy_index;ts");
        assert_eq!(lines[1], "\"=\"\"001001\"\"\";Agliè;200;72,5;2026-11-16 10:30:00");
        assert_eq!(lines[2], "\"=\"\"054013\"\"\";Città di Castello;;-3,25;2026-07-06 10:15:00");
    }

    #[test]
    fn delimiters_are_read_by_character_or_name() {
        assert_eq!(Delimiter::parse(";"), Ok(Delimiter::Semicolon));
        assert_eq!(Delimiter::parse("semicolon"), Ok(Delimiter::Semicolon));
        assert_eq!(Delimiter::parse("tab"), Ok(Delimiter::Tab));
        assert!(Delimiter::parse("|").unwrap_err().contains("semicolon"));
    }
}
