//! Query results as an Excel workbook (`--format xlsx`, `/query?format=xlsx`; `faccia bulletin`
//! writes a sheet per table with `workbook_of_sheets`): one sheet whose
//! cells have the types Excel computes with, so an office can sum, sort and chart without a
//! wizard. Only this module knows `rust_xlsxwriter`.
//!
//! - integers and floats are numbers (floats shown `#,##0.0##`, decimals with their scale);
//!   an integer beyond Excel's 15 significant digits is written as text, which keeps it exact;
//! - booleans are booleans, NULL an empty cell;
//! - timestamps with a zone are date-times **in Italian time** (Europe/Rome, summer time as it
//!   was on that day: Excel has no zones), shown `dd/mm/yyyy hh:mm:ss`; dates `dd/mm/yyyy`;
//!   times `hh:mm:ss`; before 1 March 1900 (where Excel's calendar is wrong) they are ISO text;
//! - text is text, so `istat_code` keeps its zeros (`001001`); the "number stored as text"
//!   warning is turned off for the sheet;
//! - a bold header row, frozen, with an autofilter; column widths fitted to the content.
//!
//! Excel's limits are errors that name them (1,048,576 rows with the header, 16,384 columns,
//! 32,767 characters in a cell) rather than a sheet Excel refuses or cuts. The sheet is built in
//! rust_xlsxwriter's low-memory mode (one row in memory, the rest in a temporary file outside
//! the data directory), so a large result does not hold every cell twice. Pure otherwise.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Date32Type, Float64Type, Schema, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime};
use rust_xlsxwriter::{ColNum, Format as CellFormat, IgnoreError, RowNum, Workbook, Worksheet};

/// Rows below the header an Excel sheet holds (1,048,576 with the header).
pub const ROWS_MAX: usize = 1_048_575;
/// Columns an Excel sheet holds (A to XFD).
pub const COLUMNS_MAX: usize = 16_384;
/// Characters (UTF-16 units) an Excel cell holds.
pub const TEXT_CHARS_MAX: usize = 32_767;
/// Integers above this lose digits as Excel numbers (15 significant digits): written as text.
const EXACT_INTEGER_MAX: f64 = 999_999_999_999_999.0;
/// The widest a fitted column gets (Excel character units): long text wraps the view, not the
/// sheet.
const WIDTH_MAX: usize = 60;
/// Room for the autofilter's button beside a header name.
const FILTER_BUTTON_WIDTH: usize = 3;
/// Excel's day 0 is 1899-12-30 for every serial from 61 (1 March 1900) on.
const SERIAL_FIRST: f64 = 61.0;
const MICROS_PER_DAY: f64 = 86_400_000_000.0;

/// A result Excel cannot hold, or a writer failure.
#[derive(Debug, thiserror::Error)]
pub enum XlsxError {
    /// More rows than a sheet holds.
    #[error(
        "the result has {rows} rows; an Excel sheet holds at most {ROWS_MAX} below its header (1,048,576 rows): \
         filter or aggregate the query, or use the csv or parquet format"
    )]
    TooManyRows {
        /// Rows in the result.
        rows: usize,
    },
    /// More columns than a sheet holds.
    #[error("the result has {columns} columns; an Excel sheet holds at most {COLUMNS_MAX}")]
    TooManyColumns {
        /// Columns in the result.
        columns: usize,
    },
    /// A text longer than a cell holds.
    #[error(
        "column `{column}`, row {row} of the result holds {chars} characters; an Excel cell holds at most {TEXT_CHARS_MAX}: \
         select a shorter text (e.g. left(column, 32000)) or use the csv or parquet format"
    )]
    TextTooLong {
        /// The column's name.
        column: String,
        /// The row, counted from 1 below the header.
        row: usize,
        /// The text's length in UTF-16 units, as Excel counts.
        chars: usize,
    },
    /// A column that could not be read as its cells.
    #[error("converting column `{column}`")]
    Convert {
        /// The column's name.
        column: String,
        /// What arrow said.
        #[source]
        source: ArrowError,
    },
    /// The writer failed (e.g. no temporary directory).
    #[error("writing the workbook")]
    Writer(#[from] rust_xlsxwriter::XlsxError),
}

impl XlsxError {
    /// Whether the result is beyond one of Excel's limits (not a failure of the writer).
    pub fn is_limit(&self) -> bool {
        matches!(self, XlsxError::TooManyRows { .. } | XlsxError::TooManyColumns { .. } | XlsxError::TextTooLong { .. })
    }
}

/// How a column is written: its kind of cell and its number format.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Integer,
    Float,
    Decimal(i8),
    Boolean,
    /// A timestamp; `zoned`: it has a time zone (shown in Italian time), else its wall clock.
    DateTime {
        zoned: bool,
    },
    Date,
    Time,
    Text,
    /// Anything else (durations, intervals, binary, lists, structs): arrow's text of it.
    Display,
}

impl Kind {
    fn of(data_type: &DataType) -> Kind {
        match data_type {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => Kind::Integer,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Kind::Float,
            DataType::Decimal32(_, scale)
            | DataType::Decimal64(_, scale)
            | DataType::Decimal128(_, scale)
            | DataType::Decimal256(_, scale) => Kind::Decimal(*scale),
            DataType::Boolean => Kind::Boolean,
            DataType::Timestamp(_, zone) => Kind::DateTime { zoned: zone.is_some() },
            DataType::Date32 | DataType::Date64 => Kind::Date,
            DataType::Time32(_) | DataType::Time64(_) => Kind::Time,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
            DataType::Dictionary(_, values) if Kind::of(values) == Kind::Text => Kind::Text,
            _ => Kind::Display,
        }
    }

    /// The Excel number format code (Excel shows it with the PC's separators: `72,5` in Italy).
    fn number_format(self) -> Option<String> {
        match self {
            Kind::Float => Some("#,##0.0##".into()),
            Kind::Decimal(scale) if scale > 0 => Some(format!("#,##0.{}", "0".repeat(scale.min(15) as usize))),
            Kind::Decimal(_) => Some("#,##0".into()),
            Kind::DateTime { .. } => Some("dd/mm/yyyy hh:mm:ss".into()),
            Kind::Date => Some("dd/mm/yyyy".into()),
            Kind::Time => Some("hh:mm:ss".into()),
            _ => None,
        }
    }

    /// Characters a value of this kind takes on screen when its width is fixed.
    fn fixed_width(self) -> Option<usize> {
        match self {
            Kind::DateTime { .. } => Some(19),
            Kind::Date => Some(10),
            Kind::Time => Some(8),
            Kind::Boolean => Some(6),
            _ => None,
        }
    }
}

/// One column of one batch, converted for writing.
enum Cells {
    /// As floats; `exact`: the integers themselves, written as text beyond 15 digits.
    Numbers {
        values: ArrayRef,
        exact: Option<ArrayRef>,
    },
    Booleans(ArrayRef),
    /// Microseconds since 1970 (UTC when `zoned`, else a wall clock).
    DateTimes {
        micros: ArrayRef,
        zoned: bool,
    },
    /// Days since 1970.
    Dates(ArrayRef),
    /// Microseconds since midnight.
    Times(ArrayRef),
    /// Text (Utf8).
    Text(ArrayRef),
    /// arrow's display of any other type.
    Display(ArrayRef),
}

/// The workbook of a result, as the bytes of an `.xlsx` file (one sheet, `faccia`).
///
/// # Errors
/// A result beyond Excel's limits (`XlsxError` names the limit); the writer's failures.
pub fn workbook(schema: &Arc<Schema>, batches: &[RecordBatch]) -> Result<Vec<u8>, XlsxError> {
    workbook_of_sheets(&[("faccia", schema, batches)])
}

/// A workbook with one sheet per result, named as given (`faccia bulletin`: a sheet per table),
/// each as `workbook` writes its one sheet.
///
/// # Errors
/// As `workbook`; a sheet name Excel refuses (over 31 characters, `[]:*?/\`, or twice).
pub fn workbook_of_sheets(sheets: &[(&str, &Arc<Schema>, &[RecordBatch])]) -> Result<Vec<u8>, XlsxError> {
    let mut workbook = Workbook::new();
    for (name, schema, batches) in sheets {
        let sheet = workbook.add_worksheet_with_low_memory()?;
        sheet.set_name(*name)?;
        write_sheet(sheet, schema, batches)?;
    }
    Ok(workbook.save_to_buffer()?)
}

/// One result into `sheet`: a bold header row and typed cells.
fn write_sheet(sheet: &mut Worksheet, schema: &Arc<Schema>, batches: &[RecordBatch]) -> Result<(), XlsxError> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows > ROWS_MAX {
        return Err(XlsxError::TooManyRows { rows });
    }
    let columns = schema.fields().len();
    if columns > COLUMNS_MAX {
        return Err(XlsxError::TooManyColumns { columns });
    }
    let kinds: Vec<Kind> = schema.fields().iter().map(|f| Kind::of(f.data_type())).collect();
    let formats: Vec<Option<CellFormat>> =
        kinds.iter().map(|k| k.number_format().map(|code| CellFormat::new().set_num_format(code))).collect();
    let bold = CellFormat::new().set_bold();
    let mut widths: Vec<usize> = Vec::with_capacity(columns);
    for (col, field) in schema.fields().iter().enumerate() {
        sheet.write_string_with_format(0, col as ColNum, field.name(), &bold)?;
        let fixed = kinds[col].fixed_width().unwrap_or(0);
        widths.push((field.name().chars().count() + FILTER_BUTTON_WIDTH).max(fixed));
    }
    let mut row: RowNum = 1;
    for batch in batches {
        let cells: Vec<Cells> =
            batch.columns().iter().zip(&kinds).zip(schema.fields()).map(|((c, k), f)| cells(c, *k, f.name())).collect::<Result<_, _>>()?;
        for index in 0..batch.num_rows() {
            for (col, column) in cells.iter().enumerate() {
                let written = write_cell(sheet, row, col as ColNum, column, index, formats[col].as_ref());
                let width = written.map_err(|error| match error {
                    CellError::TooLong(chars) => {
                        XlsxError::TextTooLong { column: schema.field(col).name().clone(), row: row as usize, chars }
                    }
                    CellError::Writer(error) => XlsxError::Writer(error),
                })?;
                widths[col] = widths[col].max(width);
            }
            row += 1;
        }
    }
    finish(sheet, &widths, row - 1)
}

/// Header frozen, autofilter over the data, widths, no "number stored as text" warnings.
fn finish(sheet: &mut Worksheet, widths: &[usize], last_row: RowNum) -> Result<(), XlsxError> {
    sheet.set_freeze_panes(1, 0)?;
    if let Some(last_col) = widths.len().checked_sub(1) {
        sheet.autofilter(0, 0, last_row, last_col as ColNum)?;
        sheet.ignore_error_range(0, 0, last_row.max(1), last_col as ColNum, IgnoreError::NumberStoredAsText)?;
    }
    for (col, width) in widths.iter().enumerate() {
        sheet.set_column_width(col as ColNum, (*width).min(WIDTH_MAX) as f64 + 1.0)?;
    }
    Ok(())
}

/// A column of a batch as the cells of its kind. Pure.
fn cells(column: &ArrayRef, kind: Kind, name: &str) -> Result<Cells, XlsxError> {
    let convert = |source| XlsxError::Convert { column: name.to_string(), source };
    let to = |data_type: DataType| cast(column, &data_type).map_err(convert);
    Ok(match kind {
        Kind::Integer => Cells::Numbers { values: to(DataType::Float64)?, exact: Some(Arc::clone(column)) },
        Kind::Float | Kind::Decimal(_) => Cells::Numbers { values: to(DataType::Float64)?, exact: None },
        Kind::Boolean => Cells::Booleans(Arc::clone(column)),
        Kind::DateTime { zoned } => {
            let zone = zoned.then(|| "+00:00".into());
            Cells::DateTimes { micros: to(DataType::Timestamp(TimeUnit::Microsecond, zone))?, zoned }
        }
        Kind::Date => Cells::Dates(to(DataType::Date32)?),
        Kind::Time => Cells::Times(to(DataType::Time64(TimeUnit::Microsecond))?),
        Kind::Text => Cells::Text(to(DataType::Utf8)?),
        Kind::Display => Cells::Display(Arc::clone(column)),
    })
}

enum CellError {
    TooLong(usize),
    Writer(rust_xlsxwriter::XlsxError),
}

impl From<rust_xlsxwriter::XlsxError> for CellError {
    fn from(error: rust_xlsxwriter::XlsxError) -> CellError {
        CellError::Writer(error)
    }
}

/// Writes one cell (nothing for NULL) and returns the characters it takes on screen.
fn write_cell(
    sheet: &mut Worksheet,
    row: RowNum,
    col: ColNum,
    cells: &Cells,
    index: usize,
    format: Option<&CellFormat>,
) -> Result<usize, CellError> {
    let array: &ArrayRef = match cells {
        Cells::Numbers { values, .. } => values,
        Cells::Booleans(a) | Cells::Dates(a) | Cells::Times(a) | Cells::Text(a) | Cells::Display(a) => a,
        Cells::DateTimes { micros, .. } => micros,
    };
    if array.is_null(index) {
        return Ok(0);
    }
    let number = |sheet: &mut Worksheet, value: f64| -> Result<(), CellError> {
        match format {
            Some(format) => sheet.write_number_with_format(row, col, value, format)?,
            None => sheet.write_number(row, col, value)?,
        };
        Ok(())
    };
    match cells {
        Cells::Numbers { values, exact } => {
            let value = values.as_primitive::<Float64Type>().value(index);
            match exact {
                Some(exact) if value.abs() > EXACT_INTEGER_MAX => return text(sheet, row, col, &display(exact, index)),
                _ => number(sheet, value)?,
            }
            Ok(number_width(value))
        }
        Cells::Booleans(values) => {
            sheet.write_boolean(row, col, values.as_boolean().value(index))?;
            Ok(0)
        }
        Cells::DateTimes { micros, zoned } => {
            let micros = micros.as_primitive::<TimestampMicrosecondType>().value(index);
            match DateTime::from_timestamp_micros(micros).map(|utc| local(utc, *zoned)) {
                Some(time) if serial(time) >= SERIAL_FIRST && time.year() <= 9999 => number(sheet, serial(time))?,
                _ => return text(sheet, row, col, &display(array, index)),
            }
            Ok(0)
        }
        Cells::Dates(days) => {
            let days = days.as_primitive::<Date32Type>().value(index);
            let value = f64::from(days) + 25_569.0;
            if (SERIAL_FIRST..=2_958_465.0).contains(&value) {
                number(sheet, value)?;
                Ok(0)
            } else {
                text(sheet, row, col, &display(array, index))
            }
        }
        Cells::Times(micros) => {
            number(sheet, micros.as_primitive::<Time64MicrosecondType>().value(index) as f64 / MICROS_PER_DAY)?;
            Ok(0)
        }
        Cells::Text(values) => text(sheet, row, col, values.as_string::<i32>().value(index)),
        Cells::Display(values) => text(sheet, row, col, &display(values, index)),
    }
}

fn text(sheet: &mut Worksheet, row: RowNum, col: ColNum, value: &str) -> Result<usize, CellError> {
    let chars = value.encode_utf16().count();
    if chars > TEXT_CHARS_MAX {
        return Err(CellError::TooLong(chars));
    }
    sheet.write_string(row, col, value)?;
    Ok(value.chars().count())
}

/// arrow's text of one value.
fn display(array: &ArrayRef, index: usize) -> String {
    ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).map_or_else(|e| e.to_string(), |f| f.value(index).to_string())
}

/// The wall clock Excel shows: Italian time for a zoned timestamp (the zone's rules on that
/// day), the value itself for one without a zone.
fn local(utc: DateTime<chrono::Utc>, zoned: bool) -> NaiveDateTime {
    if zoned { utc.with_timezone(&chrono_tz::Europe::Rome).naive_local() } else { utc.naive_utc() }
}

/// Excel's serial number of a wall-clock time: days since 1899-12-30 and the fraction of a day.
fn serial(time: NaiveDateTime) -> f64 {
    let epoch = NaiveDate::from_ymd_opt(1899, 12, 30).expect("a date").and_hms_opt(0, 0, 0).expect("a time");
    let micros = (time - epoch).num_microseconds().unwrap_or(i64::MAX);
    micros as f64 / MICROS_PER_DAY
}

/// Characters a number takes shown as `#,##0.0##`, roughly (for the column width).
fn number_width(value: f64) -> usize {
    let digits = format!("{:.0}", value.abs().trunc()).len();
    digits + digits.saturating_sub(1) / 3 + 5
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Date32Array, Float64Array, Int64Array, StringArray, TimestampMillisecondArray};

    #[test]
    fn serials_are_excels_and_times_are_italian() {
        // 2026-11-16 09:30 UTC is 10:30 in Rome (winter, UTC+1); 2026-07-06 08:15 UTC is 10:15 (summer, UTC+2).
        let winter = DateTime::from_timestamp_millis(1_794_821_400_000).unwrap();
        let summer = DateTime::from_timestamp_millis(1_783_325_700_000).unwrap();
        assert_eq!(local(winter, true).to_string(), "2026-11-16 10:30:00");
        assert_eq!(local(summer, true).to_string(), "2026-07-06 10:15:00");
        assert_eq!(local(winter, false).to_string(), "2026-11-16 09:30:00");
        // Excel: 2026-11-16 is serial 46342; 10:30 is 0.4375 of a day.
        assert_eq!(serial(local(winter, true)), 46_342.437_5);
    }

    #[test]
    fn limits_are_errors_that_name_them() {
        let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new("note", DataType::Utf8, true)]));
        let long = "è".repeat(TEXT_CHARS_MAX + 1);
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(vec![Some("ok"), Some(long.as_str())]))]).unwrap();
        let error = workbook(&schema, &[batch]).unwrap_err().to_string();
        assert!(error.contains("column `note`, row 2") && error.contains("32767"), "{error}");
        let rows = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(vec![None::<&str>; ROWS_MAX + 1]))]).unwrap();
        let error = workbook(&schema, &[rows]).unwrap_err().to_string();
        assert!(error.contains("1048575") && error.contains("1,048,576 rows"), "{error}");
    }

    #[test]
    fn every_kind_of_column_writes() {
        let ts = TimestampMillisecondArray::from(vec![Some(1_794_821_400_000), None]).with_timezone("Europe/Rome");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(7), Some(1_234_567_890_123_456_789)])),
            Arc::new(Float64Array::from(vec![Some(72.5), Some(f64::NAN)])),
            Arc::new(BooleanArray::from(vec![Some(true), None])),
            Arc::new(ts),
            Arc::new(Date32Array::from(vec![Some(20_408), Some(-25_569)])),
            Arc::new(StringArray::from(vec![Some("001001"), Some("Città di Castello")])),
            Arc::new(arrow::array::ListArray::from_iter_primitive::<arrow::datatypes::Int32Type, _, _>(vec![Some(vec![Some(1)]), None])),
        ];
        let batch = RecordBatch::try_from_iter(["i", "f", "b", "ts", "d", "s", "l"].into_iter().zip(columns)).unwrap();
        let bytes = workbook(&batch.schema(), &[batch]).unwrap();
        assert!(bytes.starts_with(b"PK"), "a zip container");
    }
}
