//! Parquet encoding of the stored files: compression, encodings, statistics, the declared sort
//! order and faccia's key-value metadata (format version, node, log range). No I/O.

use arrow::array::RecordBatch;
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaData, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::storage::StoreError;
use crate::storage::buffer::SORT_ORDER;

/// Version of the stored layout, written into every file's key-value metadata.
pub(crate) const STORAGE_FORMAT_VERSION: &str = "1";

/// Parquet settings for vote files: zstd, statistics and page index on, sort order declared.
///
/// Bytes per vote (BENCHMARKS.md): the sort order makes `municipality` and `service` runs that
/// dictionary + RLE store in a few hundredths of a byte; faces, channels, reasons and terminals
/// are small dictionaries. The timestamp is most of the file: millisecond values that repeat
/// nowhere, so a dictionary only costs; it is delta-encoded. (Byte-stream split would save
/// about 4 % more, but on integers it is recent in the format: DuckDB 1.4, the parquet-java
/// of Spark 3.x and some Trino versions cannot read it. Every encoding here is one those
/// readers have; `tools/check_readers.py` reads the files with them.) `municipality` and
/// `terminal` are delta-encoded instead of dictionary-encoded: sorted by municipality, both
/// grow in small steps, while at a trickle (a few thousand votes a day over thousands of
/// municipalities) their dictionaries held a value for every other row (9.98 → 5.73 bytes per
/// vote on such a day; 4.24 → 3.99 on a day of 1.5 million votes; BENCHMARKS.md).
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
    let sorting = SORT_ORDER.into_iter().map(|c| SortingColumn { column_idx: c as i32, descending: false, nulls_first: false }).collect();
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .set_column_dictionary_enabled(ColumnPath::from("ts"), false)
        .set_column_encoding(ColumnPath::from("ts"), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(ColumnPath::from("municipality"), false)
        .set_column_encoding(ColumnPath::from("municipality"), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(ColumnPath::from("terminal"), false)
        .set_column_encoding(ColumnPath::from("terminal"), Encoding::DELTA_BINARY_PACKED)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_data_page_row_count_limit(20_000)
        .set_sorting_columns(Some(sorting))
        .set_key_value_metadata(Some(metadata))
        .build()
}

/// The storage sort order (`buffer::SORT_ORDER`) as a DataFusion ordering over `schema` (the
/// votes' stored schema, or a table schema beginning with it), for scans of vote files that
/// declare it: one file per partition keeps it.
///
/// # Errors
/// When `schema` lacks one of the columns.
pub(crate) fn votes_ordering(schema: &SchemaRef) -> Result<LexOrdering, DataFusionError> {
    let stored = crate::storage::buffer::schema();
    let keys = SORT_ORDER.iter().map(|&c| {
        let column = datafusion::physical_expr::expressions::col(stored.field(c).name(), schema)?;
        Ok(PhysicalSortExpr::new(column, SortOptions { descending: false, nulls_first: false }))
    });
    Ok(LexOrdering::new(keys.collect::<Result<Vec<_>, DataFusionError>>()?).expect("a non-empty ordering"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::buffer::testing::buffer_with;

    #[test]
    fn vote_files_delta_encode_municipality_terminal_and_time_as_every_common_reader_can_read() {
        // Proves: the encodings BENCHMARKS.md measured are the ones written (no dictionary
        // for the columns whose dictionaries cost more than they save), and none that readers
        // in common use lack (byte-stream split on integers: DuckDB 1.4, Spark 3.x).
        let at = 1_790_000_000_000;
        let batch = buffer_with(&[(1001, 2, at), (1001, 9, at + 7), (1003, 2, at + 1), (4012, 5, at + 3)]);
        let (_, footer) = encode_parquet(&batch, writer_properties("n1", 1, 4)).unwrap();
        let columns = footer.row_group(0).columns();
        let encodings = |name: &str| -> Vec<Encoding> {
            columns.iter().find(|c| c.column_path().string() == name).expect("a stored column").encodings().collect()
        };
        for (column, expected) in [
            ("municipality", Encoding::DELTA_BINARY_PACKED),
            ("terminal", Encoding::DELTA_BINARY_PACKED),
            ("ts", Encoding::DELTA_BINARY_PACKED),
        ] {
            let used = encodings(column);
            assert!(used.contains(&expected), "{column}: {used:?}");
            assert!(!used.contains(&Encoding::RLE_DICTIONARY), "{column} has no dictionary: {used:?}");
        }
        assert!(encodings("service").contains(&Encoding::RLE_DICTIONARY), "small columns keep their dictionary");
        for column in columns {
            let used: Vec<Encoding> = column.encodings().collect();
            assert!(!used.contains(&Encoding::BYTE_STREAM_SPLIT), "{}: {used:?}", column.column_path());
        }
    }
}
