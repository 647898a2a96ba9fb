//! The Parquet dataset: where stored files go and how they are named, published, listed,
//! backfilled and cleaned up, on an `object_store` (a local directory by default):
//!
//! ```text
//! votes/date=YYYY-MM-DD/part-{node}-{first_lsn:016x}-{last_lsn:016x}.parquet
//! ```
//!
//! The date is the vote's day in Italy (Europe/Rome). The node id and the log range in the name
//! let several ingest nodes write one dataset without coordination, and let a restarted node
//! recognise files of a flush that never committed (see `engine`).
//!
//! Architecture invariant: the dataset never decides what is durable; it writes what the engine
//! hands it, and a file is published only complete (object stores publish a `put` atomically;
//! locally the file is renamed into place and then fsync'd with its directory).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use deltalake::kernel::Add;

use crate::storage::StoreError;
use crate::storage::buffer::{partition_by_day, schema};
use crate::storage::location::Location;
use crate::storage::parquet::{encode_parquet, writer_properties};
use crate::storage::rollup::{COUNTS_DIR, PAIRS_DIR, Rollup};
use crate::storage::table::{Table, add_action};

pub(crate) use crate::storage::table::VOTES_DIR;
/// Suffix of a file being written; readers ignore it (it does not end in `.parquet`).
const TMP_SUFFIX: &str = ".tmp";

/// A vote file's place in the dataset, parsed from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartFile {
    /// The object's full path in the store (under `votes/`, or under a rollup directory for a counts file).
    pub(crate) path: ObjectPath,
    /// The day in Italy (Europe/Rome) of every vote in the file: its `date=` partition.
    pub(crate) date: NaiveDate,
    /// Id of the ingest node that wrote the file (its data directory's `node-id`).
    pub(crate) node: String,
    pub(crate) lsn_first: u64,
    pub(crate) lsn_last: u64,
}

impl PartFile {
    /// The vote file `node` writes for day `date` of a flush of log records `lsn_first..=lsn_last`.
    pub(crate) fn new(date: NaiveDate, node: &str, lsn_first: u64, lsn_last: u64) -> PartFile {
        let path = ObjectPath::from(format!("{VOTES_DIR}/date={date}/part-{node}-{lsn_first:016x}-{lsn_last:016x}.parquet"));
        PartFile { path, date, node: node.to_string(), lsn_first, lsn_last }
    }

    /// The node and log range of a vote file from its name alone (`part-{node}-{first}-{last}.parquet`),
    /// whatever directory it is listed under.
    pub(crate) fn parse_name(name: &str) -> Option<(String, u64, u64)> {
        let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
        let mut fields = stem.rsplitn(3, '-');
        let lsn_last = u64::from_str_radix(fields.next()?, 16).ok()?;
        let lsn_first = u64::from_str_radix(fields.next()?, 16).ok()?;
        Some((fields.next()?.to_string(), lsn_first, lsn_last))
    }

    /// The path of a rollup file written with this vote file.
    pub(crate) fn rollup_path(&self, rollup: Rollup) -> ObjectPath {
        let name = self.path.filename().expect("a part file has a name");
        ObjectPath::from(format!("{}/date={}/{name}", rollup.dir(), self.date))
    }

    /// Parses a dataset path (a vote file, or a counts file); `None` for anything else.
    pub(crate) fn parse(path: &ObjectPath) -> Option<PartFile> {
        let mut parts = path.parts();
        if ![VOTES_DIR, COUNTS_DIR, PAIRS_DIR].contains(&parts.next()?.as_ref()) {
            return None;
        }
        let date = parts.next()?.as_ref().strip_prefix("date=")?.parse().ok()?;
        let (node, lsn_first, lsn_last) = PartFile::parse_name(parts.next()?.as_ref())?;
        Some(PartFile { path: path.clone(), date, node, lsn_first, lsn_last })
    }
}

/// Whether `table`'s directory holds part files (`date=…/part-….parquet`), whether or not a
/// table's log lists them: read-only, for telling a directory not yet taken over.
pub(crate) fn has_part_files(data_dir: &std::path::Path, table: Table) -> bool {
    let Ok(days) = std::fs::read_dir(data_dir.join(table.dir())) else { return false };
    days.flatten().filter(|d| d.file_name().to_string_lossy().starts_with("date=")).any(|day| {
        std::fs::read_dir(day.path())
            .is_ok_and(|files| files.flatten().any(|f| PartFile::parse_name(&f.file_name().to_string_lossy()).is_some()))
    })
}

/// Lists every vote file of the dataset.
///
/// # Errors
/// Object store listing errors.
pub(crate) async fn list_parts(store: &dyn ObjectStore) -> Result<Vec<PartFile>, StoreError> {
    list_parts_in(store, VOTES_DIR).await
}

/// Lists every part file under `dir` (`VOTES_DIR` or `COUNTS_DIR`).
///
/// # Errors
/// Object store listing errors.
pub(crate) async fn list_parts_in(store: &dyn ObjectStore, dir: &str) -> Result<Vec<PartFile>, StoreError> {
    let prefix = ObjectPath::from(dir);
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let mut parts: Vec<PartFile> = metas.iter().filter_map(|m| PartFile::parse(&m.location)).collect();
    parts.sort_by(|a, b| (a.date, &a.node, a.lsn_first).cmp(&(b.date, &b.node, b.lsn_first)));
    Ok(parts)
}

/// The files of one flush, by table, as `add` actions waiting for their commit.
#[derive(Debug, Default)]
pub(crate) struct FlushFiles {
    /// In `Table::ALL` order.
    pub(crate) adds: [Vec<Add>; 3],
}

impl FlushFiles {
    fn push(&mut self, table: Table, add: Add) {
        self.adds[table.index()].push(add);
    }

    /// Bytes written, all tables.
    pub(crate) fn bytes(&self) -> u64 {
        self.adds.iter().flatten().map(|a| a.size as u64).sum()
    }

    /// Vote files written (one a day).
    pub(crate) fn days(&self) -> usize {
        self.adds[Table::Votes.index()].len()
    }
}

/// A file's path inside its table (what an `add` action names): the dataset path without the
/// table's directory.
pub(crate) fn table_relative(table: Table, path: &ObjectPath) -> String {
    let path = path.as_ref();
    path.strip_prefix(table.dir()).map_or(path, |p| p.trim_start_matches('/')).to_string()
}

/// Parquet settings of a rollup file: zstd, default statistics, `municipality` delta-encoded.
pub(crate) fn rollup_properties() -> WriterProperties {
    // `municipality` (in `municipality_service_counts`, sorted) delta-encoded, as in vote files.
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .set_column_dictionary_enabled(ColumnPath::from("municipality"), false)
        .set_column_encoding(ColumnPath::from("municipality"), Encoding::DELTA_BINARY_PACKED)
        .build()
}

/// Where vote files go: an object store, plus the local directory behind it when there is one
/// (local files are fsync'd after they are published).
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    /// The object store the files are put in and listed from, rooted at `location`.
    pub(crate) store: Arc<dyn ObjectStore>,
    /// Where the tables are (`Location::local_dir` when on this machine).
    pub(crate) location: Location,
    /// This node's id, written into the name of every file it publishes.
    pub(crate) node: String,
}

impl Dataset {
    /// A dataset in a local directory (the tests').
    ///
    /// # Errors
    /// When the directory cannot be created.
    #[cfg(test)]
    pub(crate) fn local(root: &std::path::Path, node: &str) -> Result<Dataset, StoreError> {
        Dataset::new(Location::local(root)?, node)
    }

    /// The dataset at `location`, written by `node` (the directory is created when local).
    ///
    /// # Errors
    /// When the local directory cannot be created.
    pub(crate) fn new(location: Location, node: &str) -> Result<Dataset, StoreError> {
        if let Some(root) = location.local_dir() {
            std::fs::create_dir_all(root.join(VOTES_DIR))
                .map_err(|source| StoreError::Sync { path: root.display().to_string(), source })?;
        }
        Ok(Dataset { store: location.store(), location, node: node.to_string() })
    }

    /// Writes the rows of one flush — log records `lsn_first..=lsn_last` — as one file per day
    /// in each of `tables` (the votes and their rollups), and returns their `add` actions. When it
    /// returns, every file is durable; none is in a table until `table::commit_flush`.
    ///
    /// # Errors
    /// Encoding or storage errors; files already written by this call stay and are cleaned up
    /// by `remove_uncommitted` (they are not yet committed).
    pub(crate) async fn write_flush(
        &self,
        batches: &[RecordBatch],
        lsn_first: u64,
        lsn_last: u64,
        tables: &[Table],
    ) -> Result<FlushFiles, StoreError> {
        let mut written = FlushFiles::default();
        for (date, rows) in partition_by_day(batches)? {
            let part = PartFile::new(date, &self.node, lsn_first, lsn_last);
            for &table in tables {
                let add = match table {
                    Table::Votes => {
                        let properties = writer_properties(&self.node, lsn_first, lsn_last);
                        self.write_file(table, &part.path, date, &rows, properties, true).await?
                    }
                    Table::Rollup(rollup) => self.write_rollup(&part, rollup, &rows).await?,
                };
                written.push(table, add);
            }
        }
        Ok(written)
    }

    /// Encodes `rows` as the Parquet file at `path` (in `table`'s directory, partition `date`)
    /// and returns its `add` action, statistics from the footer.
    pub(crate) async fn write_file(
        &self,
        table: Table,
        path: &ObjectPath,
        date: NaiveDate,
        rows: &RecordBatch,
        properties: WriterProperties,
        data_change: bool,
    ) -> Result<Add, StoreError> {
        let (bytes, footer) = encode_parquet(rows, properties)?;
        let len = bytes.len() as u64;
        self.publish(path, bytes).await?;
        add_action(table_relative(table, path), date, len, &footer, &table.schema(), data_change)
    }

    /// Makes `bytes` the object at `path`, complete or not at all. An object store publishes a
    /// `put` atomically; on the local filesystem the bytes go to a temporary name (ignored by
    /// readers: it does not end in `.parquet`), are fsync'd, renamed into place, and the
    /// directories are fsync'd.
    pub(crate) async fn publish(&self, path: &ObjectPath, bytes: Vec<u8>) -> Result<(), StoreError> {
        let Some(root) = self.location.local_dir() else {
            self.store.put(path, PutPayload::from(bytes)).await?;
            return Ok(());
        };
        let name = path.filename().expect("a vote file has a name");
        let dir = path.as_ref().strip_suffix(name).unwrap_or_default().trim_end_matches('/');
        let tmp = ObjectPath::from(format!("{dir}/.{name}{TMP_SUFFIX}"));
        self.store.put(&tmp, PutPayload::from(bytes)).await?;
        let sync_error = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| StoreError::Sync { path, source }
        };
        let tmp_file = root.join(tmp.as_ref());
        std::fs::File::open(&tmp_file).and_then(|f| f.sync_all()).map_err(sync_error(&tmp_file))?;
        self.store.rename(&tmp, path).await?;
        let day_dir = root.join(dir);
        crate::fsutil::sync_dir(&day_dir).map_err(sync_error(&day_dir))?;
        let top_dir = root.join(dir.split('/').next().unwrap_or(dir));
        crate::fsutil::sync_dir(&top_dir).map_err(sync_error(&top_dir))
    }

    /// Writes one rollup file of a vote file's rows; returns its `add` action.
    async fn write_rollup(&self, part: &PartFile, rollup: Rollup, rows: &RecordBatch) -> Result<Add, StoreError> {
        let counts = rollup.of(rows)?;
        let counts = counts.into_iter().map(|(_, batch)| batch).collect::<Vec<_>>();
        let counts = concat_batches(&rollup.schema(), &counts)?;
        self.write_file(Table::Rollup(rollup), &part.rollup_path(rollup), part.date, &counts, rollup_properties(), true).await
    }

    /// The `add` actions of every part file in `table`'s directory, statistics read from the
    /// footers: what a directory written before the table format holds (the files are adopted
    /// as they are, not rewritten).
    ///
    /// # Errors
    /// Listing or footer read errors.
    pub(crate) async fn adoptable(&self, table: Table) -> Result<Vec<Add>, StoreError> {
        let prefix = ObjectPath::from(table.dir());
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut adds = Vec::new();
        for meta in metas {
            let Some(part) = PartFile::parse(&meta.location) else { continue };
            // Taking over happens once: reading the whole file for its footer is simpler than a ranged read.
            let bytes = self.store.get(&meta.location).await?.bytes().await?;
            let footer = parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&bytes)?;
            adds.push(add_action(table_relative(table, &meta.location), part.date, meta.size, &footer, &table.schema(), true)?);
        }
        Ok(adds)
    }

    /// Writes the missing rollup files of committed vote files (a dataset written before a
    /// rollup existed). Returns how many were written.
    ///
    /// # Errors
    /// Listing, reading or writing errors.
    pub(crate) async fn backfill_rollups(&self) -> Result<usize, StoreError> {
        let mut present = std::collections::HashSet::new();
        for rollup in Rollup::ALL {
            present.extend(list_parts_in(self.store.as_ref(), rollup.dir()).await?.into_iter().map(|p| p.path));
        }
        let mut written = 0;
        for part in list_parts(self.store.as_ref()).await? {
            let missing: Vec<Rollup> = Rollup::ALL.into_iter().filter(|r| !present.contains(&part.rollup_path(*r))).collect();
            if missing.is_empty() {
                continue;
            }
            let bytes = self.store.get(&part.path).await?.bytes().await?;
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
            let files = reader.map(|b| crate::storage::buffer::conform(&b?)).collect::<Result<Vec<_>, StoreError>>()?;
            let rows = concat_batches(&schema(), &files)?;
            for rollup in missing {
                self.write_rollup(&part, rollup, &rows).await?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Removes this node's files from flushes after each table's watermark (`watermarks`, in
    /// `Table::ALL` order) that never committed (a crash between writing them and the table's
    /// commit): their rows are still in the log and will be written again. Returns how many
    /// vote files were removed.
    ///
    /// # Errors
    /// Listing or deleting errors.
    pub(crate) async fn remove_uncommitted(&self, watermarks: [u64; 3]) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (table, watermark) in Table::ALL.into_iter().zip(watermarks) {
            let dir = table.dir();
            let prefix = ObjectPath::from(dir);
            let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
            // Our temporary files are `.{name}.tmp` (the log's own temporary files are delta-rs's).
            let temporary = |name: &str| name.starts_with('.') && name.ends_with(TMP_SUFFIX);
            for meta in metas.iter().filter(|m| m.location.filename().is_some_and(temporary)) {
                tracing::warn!(file = %meta.location, "removing a temporary file of an interrupted write");
                self.store.delete(&meta.location).await?;
                removed += usize::from(table == Table::Votes);
            }
            for part in metas.iter().filter_map(|m| PartFile::parse(&m.location)) {
                if part.node == self.node && part.lsn_last > watermark {
                    tracing::warn!(file = %part.path, watermark, "removing a file of a flush that did not commit");
                    self.store.delete(&part.path).await?;
                    removed += usize::from(table == Table::Votes);
                }
            }
            if let Some(root) = self.location.local_dir()
                && root.join(dir).is_dir()
            {
                crate::fsutil::sync_dir(&root.join(dir)).map_err(|source| StoreError::Sync { path: root.display().to_string(), source })?;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::buffer::rows;
    use crate::storage::buffer::testing::buffer_with;

    #[test]
    fn part_file_names_round_trip() {
        let date = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        let part = PartFile::new(date, "a1b2c3d4", 17, 4096);
        assert_eq!(part.path.as_ref(), "votes/date=2026-11-27/part-a1b2c3d4-0000000000000011-0000000000001000.parquet");
        assert_eq!(PartFile::parse(&part.path), Some(part));
        assert_eq!(PartFile::parse(&ObjectPath::from("votes/date=2026-11-27/other.parquet")), None);
    }

    #[tokio::test]
    async fn flush_writes_readable_parquet_and_cleans_uncommitted() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = Dataset::local(dir.path(), "n1").unwrap();
        let batch = buffer_with(&[(1003, 2, 1_790_000_000_000), (1001, 9, 1_790_000_000_001)]);
        let written = dataset.write_flush(&[batch], 1, 2, &Table::ALL).await.unwrap();
        assert_eq!(written.days(), 1);
        let add = &written.adds[Table::Votes.index()][0];
        assert!(add.stats.as_deref().unwrap().contains("\"numRecords\":2"), "{:?}", add.stats);
        let vote_file = dir.path().join(VOTES_DIR).join(&add.path);
        let file = std::fs::File::open(&vote_file).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let metadata = reader.metadata().clone();
        let kv = metadata.file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|k| k.key == "faccia.lsn_last" && k.value.as_deref() == Some("2")));
        let read: Vec<RecordBatch> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows(&read), 2);
        let names: Vec<_> = std::fs::read_dir(vote_file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind: {names:?}");
        for rollup in Rollup::ALL {
            assert_eq!(list_parts_in(dataset.store.as_ref(), rollup.dir()).await.unwrap().len(), 1);
        }
        std::fs::create_dir_all(dir.path().join("votes/date=2026-09-21")).unwrap();
        std::fs::write(dir.path().join("votes/date=2026-09-21/.part-x.parquet.tmp"), b"half").unwrap();
        assert_eq!(dataset.remove_uncommitted([2; 3]).await.unwrap(), 1, "the interrupted temporary file");
        assert_eq!(dataset.remove_uncommitted([1; 3]).await.unwrap(), 1);
        assert!(list_parts(dataset.store.as_ref()).await.unwrap().is_empty());
        for rollup in Rollup::ALL {
            assert!(list_parts_in(dataset.store.as_ref(), rollup.dir()).await.unwrap().is_empty(), "rollups go with their file");
        }
    }

    #[tokio::test]
    async fn missing_counts_are_backfilled() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = Dataset::local(dir.path(), "n1").unwrap();
        dataset.write_flush(&[buffer_with(&[(1003, 2, 1_790_000_000_000)])], 1, 1, &Table::ALL).await.unwrap();
        let part = list_parts(dataset.store.as_ref()).await.unwrap().remove(0);
        let pairs = dir.path().join(part.rollup_path(Rollup::Pairs).as_ref());
        std::fs::remove_file(&pairs).unwrap();
        assert_eq!(dataset.backfill_rollups().await.unwrap(), 1);
        assert!(pairs.exists());
        assert_eq!(dataset.backfill_rollups().await.unwrap(), 0);
    }
}
