//! Parquet encoding of the stored files: compression, encodings, statistics, the declared sort
//! order and faccia's key-value metadata (format version, node, log range). No I/O.

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaData, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::storage::StoreError;
use crate::storage::buffer::col;

/// Version of the stored layout, written into every file's key-value metadata.
pub(crate) const STORAGE_FORMAT_VERSION: &str = "1";

/// Parquet settings for vote files: zstd, statistics and page index on, sort order declared.
///
/// Bytes per vote (BENCHMARKS.md): the sort order makes `municipality` and `service` runs that
/// dictionary + RLE store in a few hundredths of a byte; faces, channels, reasons and terminals
/// are small dictionaries. The timestamp is most of the file: millisecond values that repeat
/// nowhere, so a dictionary only costs; byte-stream split puts their nearly constant high bytes
/// together for zstd (4.25 instead of 5.0 bytes per vote on a realistic day, measured against
/// delta encoding at 4.41).
pub fn writer_properties(node: &str, lsn_first: u64, lsn_last: u64) -> WriterProperties {
    let metadata = vec![
        KeyValue::new("faccia.format_version".into(), STORAGE_FORMAT_VERSION.to_string()),
        KeyValue::new("faccia.node".into(), node.to_string()),
        KeyValue::new("faccia.lsn_first".into(), lsn_first.to_string()),
        KeyValue::new("faccia.lsn_last".into(), lsn_last.to_string()),
    ];
    vote_file_properties(metadata)
}

/// Parquet settings for a vote file merged by compaction from `files` files: those of a
/// flushed file, with the number of files merged in place of a node and a log range.
pub(crate) fn compacted_properties(files: usize) -> WriterProperties {
    let metadata = vec![
        KeyValue::new("faccia.format_version".into(), STORAGE_FORMAT_VERSION.to_string()),
        KeyValue::new("faccia.compacted_from".into(), files.to_string()),
    ];
    vote_file_properties(metadata)
}

fn vote_file_properties(metadata: Vec<KeyValue>) -> WriterProperties {
    let sorting = [col::MUNICIPALITY, col::SERVICE, col::TS, col::TERMINAL]
        .into_iter()
        .map(|c| SortingColumn { column_idx: c as i32, descending: false, nulls_first: false })
        .collect();
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .set_column_dictionary_enabled(ColumnPath::from("ts"), false)
        .set_column_encoding(ColumnPath::from("ts"), Encoding::BYTE_STREAM_SPLIT)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_data_page_row_count_limit(20_000)
        .set_sorting_columns(Some(sorting))
        .set_key_value_metadata(Some(metadata))
        .build()
}

/// Encodes one file's rows as Parquet bytes, with the file's footer (its statistics go into
/// the table's log).
///
/// # Errors
/// Parquet encoding errors.
pub fn encode_parquet(batch: &RecordBatch, properties: WriterProperties) -> Result<(Vec<u8>, ParquetMetaData), StoreError> {
    let mut bytes = Vec::with_capacity(batch.num_rows() * 4 + 4096);
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties))?;
    writer.write(batch)?;
    let footer = writer.close()?;
    Ok((bytes, footer))
}
