//! The Arrow buffer and the Parquet dataset.
//!
//! Owns the stored schema (`schemas/storage.md`), the conversion of validated batches into
//! Arrow columns (`VoteBuffer`, no I/O), the storage sort order, and the dataset layout on an
//! `object_store` (local directory by default):
//!
//! ```text
//! votes/date=YYYY-MM-DD/part-{node}-{first_lsn:016x}-{last_lsn:016x}.parquet
//! ```
//!
//! The date is the vote's day in Italy (Europe/Rome). The node id and the log range in the name
//! let several ingest nodes write one dataset without coordination, and let a restarted node
//! recognise files of a flush that never committed (see `engine`).
//!
//! Architecture invariant: the store never decides what is durable; it writes what the engine
//! hands it, and a file is published only complete (object stores publish a `put` atomically;
//! locally the file is renamed into place and then fsync'd with its directory).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, AsArray, Int8Builder, RecordBatch, TimestampMillisecondArray, TimestampMillisecondBuilder, UInt8Builder,
    UInt16Builder, UInt32Builder,
};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{Datelike, NaiveDate, Offset, TimeZone};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::model::{IstatCode, TerminalId, Vote};
use crate::wire::BatchView;

/// The time zone of vote timestamps and of the `date=` partitions.
pub const TIME_ZONE: &str = "Europe/Rome";
/// Top-level directory of the vote dataset inside the data location.
pub const VOTES_DIR: &str = "votes";
/// Top-level directory of the vote counts rollup: one file beside each vote file, same name.
pub const COUNTS_DIR: &str = "vote_counts";
/// Top-level directory of the municipality × service counts rollup, likewise.
pub const PAIRS_DIR: &str = "municipality_service_counts";

/// The rollups written beside every vote file, each an aggregate of the file's rows that the
/// index views read instead of the votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// `vote_counts`: by region, service, hour, channel, face, reason, misuse (`count_votes`).
    Counts,
    /// `municipality_service_counts`: by municipality, service, misuse (`count_pairs`).
    Pairs,
}

impl Rollup {
    pub const ALL: [Rollup; 2] = [Rollup::Counts, Rollup::Pairs];

    pub fn dir(self) -> &'static str {
        match self {
            Rollup::Counts => COUNTS_DIR,
            Rollup::Pairs => PAIRS_DIR,
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            Rollup::Counts => counts_schema(),
            Rollup::Pairs => pairs_schema(),
        }
    }

    /// The rollup of rows in the stored schema, by day in Italy. Pure: no I/O.
    ///
    /// # Errors
    /// Arrow errors (none expected for rows in the stored schema).
    pub fn of(self, rows: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>, StoreError> {
        match self {
            Rollup::Counts => count_votes(rows),
            Rollup::Pairs => count_pairs(rows),
        }
    }
}
/// Version of the stored layout, written into every file's key-value metadata.
pub const STORAGE_FORMAT_VERSION: &str = "1";
/// Suffix of a file being written; readers ignore it (it does not end in `.parquet`).
const TMP_SUFFIX: &str = ".tmp";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("building Arrow data")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("writing Parquet")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("object store")]
    ObjectStore(#[from] object_store::Error),
    #[error("making {path} durable")]
    Sync { path: String, source: std::io::Error },
}

/// Column positions in the stored schema.
pub mod col {
    pub const MUNICIPALITY: usize = 0;
    pub const SERVICE: usize = 1;
    pub const TS: usize = 2;
    pub const FACE: usize = 3;
    pub const CHANNEL: usize = 4;
    pub const REASON: usize = 5;
    pub const TERMINAL: usize = 6;
    /// 0: a counted vote; otherwise the id of the misuse rule that flagged it. Flagged votes
    /// are kept and left out of every index by default.
    pub const MISUSE: usize = 7;
}

/// The schema of a vote as stored (the `date` partition column is added by readers).
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("municipality", DataType::UInt32, false),
            Field::new("service", DataType::UInt16, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some(TIME_ZONE.into())), false),
            Field::new("face", DataType::Int8, false),
            Field::new("channel", DataType::UInt8, false),
            Field::new("reason", DataType::UInt8, true),
            Field::new("terminal", DataType::UInt32, false),
            Field::new("misuse", DataType::UInt8, false),
        ]))
    }))
}

/// Column builders for votes on their way to Parquet. Appending reads the archive in place and
/// allocates nothing per vote.
pub struct VoteBuffer {
    municipality: UInt32Builder,
    service: UInt16Builder,
    ts: TimestampMillisecondBuilder,
    face: Int8Builder,
    channel: UInt8Builder,
    reason: UInt8Builder,
    terminal: UInt32Builder,
    misuse: UInt8Builder,
}

impl Default for VoteBuffer {
    fn default() -> Self {
        VoteBuffer::with_capacity(0)
    }
}

impl VoteBuffer {
    pub fn with_capacity(rows: usize) -> VoteBuffer {
        VoteBuffer {
            municipality: UInt32Builder::with_capacity(rows),
            service: UInt16Builder::with_capacity(rows),
            ts: TimestampMillisecondBuilder::with_capacity(rows).with_timezone(TIME_ZONE),
            face: Int8Builder::with_capacity(rows),
            channel: UInt8Builder::with_capacity(rows),
            reason: UInt8Builder::with_capacity(rows),
            terminal: UInt32Builder::with_capacity(rows),
            misuse: UInt8Builder::with_capacity(rows),
        }
    }

    pub fn len(&self) -> usize {
        self.municipality.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends every vote of a validated batch with its misuse flags (`misuse` holds one flag
    /// per vote, or is empty when none is flagged).
    pub fn append(&mut self, batch: &BatchView<'_>, municipality: IstatCode, terminal: TerminalId, misuse: &[u8]) {
        debug_assert!(misuse.is_empty() || misuse.len() == batch.len(), "one misuse flag per vote");
        for (i, vote) in batch.votes(municipality, terminal).enumerate() {
            self.push(&vote, misuse.get(i).copied().unwrap_or(0));
        }
    }

    /// Appends one vote with its misuse flag (0: counted).
    pub fn push(&mut self, vote: &Vote, misuse: u8) {
        self.municipality.append_value(vote.municipality.0);
        self.service.append_value(vote.service);
        self.ts.append_value(vote.at_ms);
        self.face.append_value(vote.face.score());
        self.channel.append_value(vote.channel.code());
        self.reason.append_option(vote.reason.map(|r| r.code()));
        self.terminal.append_value(vote.terminal);
        self.misuse.append_value(misuse);
    }

    /// Takes the buffered rows as a record batch and leaves the buffer empty.
    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.municipality.finish()),
            Arc::new(self.service.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.face.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.terminal.finish()),
            Arc::new(self.misuse.finish()),
        ];
        RecordBatch::try_new(schema(), columns).expect("buffer columns match the schema")
    }
}

/// Italian local time of UTC timestamps, fast: the offset (which changes twice a year) is
/// cached per UTC hour in a small direct-mapped table, so rows in any order rarely ask
/// chrono-tz.
#[derive(Debug, Clone)]
pub struct LocalClock {
    tz: chrono_tz::Tz,
    /// (UTC hour, offset in ms) by hour modulo the table size.
    offsets: [(i64, i64); 64],
}

impl Default for LocalClock {
    fn default() -> Self {
        LocalClock { tz: TIME_ZONE.parse().expect("valid time zone"), offsets: [(i64::MIN, 0); 64] }
    }
}

impl LocalClock {
    /// Milliseconds since 1970-01-01 00:00 local time (Europe/Rome) of a UTC timestamp.
    pub fn local_ms(&mut self, at_ms: i64) -> i64 {
        let hour = at_ms.div_euclid(3_600_000);
        let slot = &mut self.offsets[hour.rem_euclid(64) as usize];
        if slot.0 != hour {
            let utc = chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default().naive_utc();
            *slot = (hour, i64::from(self.tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * 1000);
        }
        at_ms + slot.1
    }

    /// The day in Italy, as days since 1970-01-01.
    pub fn day(&mut self, at_ms: i64) -> i32 {
        self.local_ms(at_ms).div_euclid(86_400_000) as i32
    }
}

/// Sorts rows into storage order — municipality, service, time, terminal — and splits them by
/// day. Each part is one file's content.
///
/// # Errors
/// Arrow errors (none expected for well-formed batches).
pub fn partition_by_day(batches: &[RecordBatch]) -> Result<BTreeMap<NaiveDate, RecordBatch>, StoreError> {
    let all = concat_batches(&schema(), batches)?;
    if all.num_rows() == 0 {
        return Ok(BTreeMap::new());
    }
    let ts: &TimestampMillisecondArray = all.column(col::TS).as_primitive();
    let mut clock = LocalClock::default();
    let days: arrow::array::Int32Array = ts.values().iter().map(|&t| clock.day(t)).collect();
    let order = match packed_order(&all, days.values()) {
        Some(order) => order,
        None => {
            let sort = |values: ArrayRef| SortColumn { values, options: None };
            let columns = [
                sort(Arc::new(days.clone())),
                sort(Arc::clone(all.column(col::MUNICIPALITY))),
                sort(Arc::clone(all.column(col::SERVICE))),
                sort(Arc::clone(all.column(col::TS))),
                sort(Arc::clone(all.column(col::TERMINAL))),
            ];
            lexsort_to_indices(&columns, None)?
        }
    };
    let sorted = take_record_batch(&all, &order)?;
    let sorted_days = arrow::compute::take(&days, &order, None)?;
    let sorted_days = sorted_days.as_primitive::<arrow::datatypes::Int32Type>();
    let mut parts = BTreeMap::new();
    let mut start = 0;
    while start < sorted.num_rows() {
        let day = sorted_days.value(start);
        let end = (start..sorted.num_rows()).find(|&i| sorted_days.value(i) != day).unwrap_or(sorted.num_rows());
        let date = NaiveDate::from_num_days_from_ce_opt(day + 719_163).expect("a day within chrono's range");
        parts.insert(date, sorted.slice(start, end - start));
        start = end;
    }
    Ok(parts)
}

/// The storage order — day, municipality, service, time, terminal — as row indices, computed
/// by sorting one packed 128-bit key per row (several times faster than comparing column by
/// column). `None` when a value does not fit its bits (then the caller compares columns).
fn packed_order(all: &RecordBatch, days: &[i32]) -> Option<arrow::array::UInt32Array> {
    // Bits per field, most significant first: day offset, municipality (ISTAT codes < 2^17),
    // service, time offset in ms (2^38 ms ≈ 8.7 years), terminal.
    const DAY: u32 = 16;
    const MUNICIPALITY: u32 = 17;
    const SERVICE: u32 = 16;
    const TIME: u32 = 38;
    const TERMINAL: u32 = 32;
    const _: () = assert!(DAY + MUNICIPALITY + SERVICE + TIME + TERMINAL <= 128);
    let municipality = all.column(col::MUNICIPALITY).as_primitive::<arrow::datatypes::UInt32Type>().values();
    let service = all.column(col::SERVICE).as_primitive::<arrow::datatypes::UInt16Type>().values();
    let ts = all.column(col::TS).as_primitive::<arrow::datatypes::TimestampMillisecondType>().values();
    let terminal = all.column(col::TERMINAL).as_primitive::<arrow::datatypes::UInt32Type>().values();
    let day_min = *days.iter().min()?;
    let ts_min = *ts.iter().min()?;
    let fits = |value: u64, bits: u32| value >> bits == 0;
    let day_span = (*days.iter().max()? - day_min) as u64;
    let ts_span = (*ts.iter().max()? - ts_min) as u64;
    if !fits(day_span, DAY) || !fits(ts_span, TIME) || !municipality.iter().all(|&m| fits(u64::from(m), MUNICIPALITY)) {
        return None;
    }
    let mut keyed: Vec<(u128, u32)> = (0..all.num_rows())
        .map(|i| {
            let mut key = (days[i] - day_min) as u128;
            key = key << MUNICIPALITY | u128::from(municipality[i]);
            key = key << SERVICE | u128::from(service[i]);
            key = key << TIME | (ts[i] - ts_min) as u128;
            key = key << TERMINAL | u128::from(terminal[i]);
            (key, i as u32)
        })
        .collect();
    keyed.sort_unstable();
    Some(keyed.into_iter().map(|(_, i)| i).collect())
}

/// Parquet settings for vote files: zstd, statistics and page index on, sort order declared.
///
/// Bytes per vote (BENCHMARKS.md): the sort order makes `municipality` and `service` runs that
/// dictionary + RLE store in a few hundredths of a byte; faces, channels, reasons and terminals
/// are small dictionaries. The timestamp is most of the file: millisecond values that repeat
/// nowhere, so a dictionary only costs; byte-stream split puts their nearly constant high bytes
/// together for zstd (4.25 instead of 5.0 bytes per vote on a realistic day, measured against
/// delta encoding at 4.41).
pub fn writer_properties(node: &str, lsn_first: u64, lsn_last: u64) -> WriterProperties {
    let sorting = [col::MUNICIPALITY, col::SERVICE, col::TS, col::TERMINAL]
        .into_iter()
        .map(|c| SortingColumn { column_idx: c as i32, descending: false, nulls_first: false })
        .collect();
    let metadata = vec![
        KeyValue::new("faccia.format_version".into(), STORAGE_FORMAT_VERSION.to_string()),
        KeyValue::new("faccia.node".into(), node.to_string()),
        KeyValue::new("faccia.lsn_first".into(), lsn_first.to_string()),
        KeyValue::new("faccia.lsn_last".into(), lsn_last.to_string()),
    ];
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

/// Encodes one file's rows as Parquet bytes.
///
/// # Errors
/// Parquet encoding errors.
pub fn encode_parquet(batch: &RecordBatch, properties: WriterProperties) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::with_capacity(batch.num_rows() * 4 + 4096);
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(bytes)
}

/// A vote file's place in the dataset, parsed from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFile {
    pub path: ObjectPath,
    pub date: NaiveDate,
    pub node: String,
    pub lsn_first: u64,
    pub lsn_last: u64,
}

impl PartFile {
    pub fn new(date: NaiveDate, node: &str, lsn_first: u64, lsn_last: u64) -> PartFile {
        let path = ObjectPath::from(format!("{VOTES_DIR}/date={date}/part-{node}-{lsn_first:016x}-{lsn_last:016x}.parquet"));
        PartFile { path, date, node: node.to_string(), lsn_first, lsn_last }
    }

    /// The node and log range of a vote file from its name alone (`part-{node}-{first}-{last}.parquet`),
    /// whatever directory it is listed under.
    pub fn parse_name(name: &str) -> Option<(String, u64, u64)> {
        let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
        let mut fields = stem.rsplitn(3, '-');
        let lsn_last = u64::from_str_radix(fields.next()?, 16).ok()?;
        let lsn_first = u64::from_str_radix(fields.next()?, 16).ok()?;
        Some((fields.next()?.to_string(), lsn_first, lsn_last))
    }

    /// The path of a rollup file written with this vote file.
    pub fn rollup_path(&self, rollup: Rollup) -> ObjectPath {
        let name = self.path.filename().expect("a part file has a name");
        ObjectPath::from(format!("{}/date={}/{name}", rollup.dir(), self.date))
    }

    /// Parses a dataset path (a vote file, or a counts file); `None` for anything else.
    pub fn parse(path: &ObjectPath) -> Option<PartFile> {
        let mut parts = path.parts();
        if ![VOTES_DIR, COUNTS_DIR, PAIRS_DIR].contains(&parts.next()?.as_ref()) {
            return None;
        }
        let date = parts.next()?.as_ref().strip_prefix("date=")?.parse().ok()?;
        let (node, lsn_first, lsn_last) = PartFile::parse_name(parts.next()?.as_ref())?;
        Some(PartFile { path: path.clone(), date, node, lsn_first, lsn_last })
    }
}

/// Lists every vote file of the dataset.
///
/// # Errors
/// Object store listing errors.
pub async fn list_parts(store: &dyn ObjectStore) -> Result<Vec<PartFile>, StoreError> {
    list_parts_in(store, VOTES_DIR).await
}

/// Lists every part file under `dir` (`VOTES_DIR` or `COUNTS_DIR`).
///
/// # Errors
/// Object store listing errors.
pub async fn list_parts_in(store: &dyn ObjectStore, dir: &str) -> Result<Vec<PartFile>, StoreError> {
    let prefix = ObjectPath::from(dir);
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let mut parts: Vec<PartFile> = metas.iter().filter_map(|m| PartFile::parse(&m.location)).collect();
    parts.sort_by(|a, b| (a.date, &a.node, a.lsn_first).cmp(&(b.date, &b.node, b.lsn_first)));
    Ok(parts)
}

/// Where vote files go: an object store, plus the local directory behind it when there is one
/// (local files are fsync'd after they are published).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub store: Arc<dyn ObjectStore>,
    pub local_root: Option<std::path::PathBuf>,
    pub node: String,
}

impl Dataset {
    /// A dataset in a local directory.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn local(root: &std::path::Path, node: &str) -> Result<Dataset, StoreError> {
        std::fs::create_dir_all(root.join(VOTES_DIR)).map_err(|source| StoreError::Sync { path: root.display().to_string(), source })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(root)?;
        Ok(Dataset { store: Arc::new(store), local_root: Some(root.to_path_buf()), node: node.to_string() })
    }

    /// Writes the rows of one flush — log records `lsn_first..=lsn_last` — as one file per day,
    /// each followed by its counts file (`count_votes`), and returns the vote files with the
    /// bytes written for each (counts included). When it returns, every file is durable.
    ///
    /// # Errors
    /// Encoding or storage errors; files already written by this call stay and are cleaned up
    /// by `remove_uncommitted` (they are not yet committed).
    pub async fn write_flush(&self, batches: &[RecordBatch], lsn_first: u64, lsn_last: u64) -> Result<Vec<(PartFile, usize)>, StoreError> {
        let mut written = Vec::new();
        for (date, rows) in partition_by_day(batches)? {
            let part = PartFile::new(date, &self.node, lsn_first, lsn_last);
            let bytes = encode_parquet(&rows, writer_properties(&self.node, lsn_first, lsn_last))?;
            let mut len = bytes.len();
            self.publish(&part.path, bytes).await?;
            for rollup in Rollup::ALL {
                len += self.write_rollup(&part, rollup, &rows).await?;
            }
            written.push((part, len));
        }
        Ok(written)
    }

    /// Makes `bytes` the object at `path`, complete or not at all. An object store publishes a
    /// `put` atomically; on the local filesystem the bytes go to a temporary name (ignored by
    /// readers: it does not end in `.parquet`), are fsync'd, renamed into place, and the
    /// directories are fsync'd.
    async fn publish(&self, path: &ObjectPath, bytes: Vec<u8>) -> Result<(), StoreError> {
        let Some(root) = &self.local_root else {
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

    /// Writes one rollup file of a vote file's rows; returns its size.
    async fn write_rollup(&self, part: &PartFile, rollup: Rollup, rows: &RecordBatch) -> Result<usize, StoreError> {
        let counts = rollup.of(rows)?;
        let counts = counts.into_iter().map(|(_, batch)| batch).collect::<Vec<_>>();
        let counts = concat_batches(&rollup.schema(), &counts)?;
        let properties =
            WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level"))).build();
        let bytes = encode_parquet(&counts, properties)?;
        let len = bytes.len();
        self.publish(&part.rollup_path(rollup), bytes).await?;
        Ok(len)
    }

    /// Writes the missing rollup files of committed vote files (a dataset written before a
    /// rollup existed). Returns how many were written.
    ///
    /// # Errors
    /// Listing, reading or writing errors.
    pub async fn backfill_rollups(&self) -> Result<usize, StoreError> {
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
            let rows = concat_batches(&schema(), &reader.collect::<Result<Vec<_>, _>>()?)?;
            for rollup in missing {
                self.write_rollup(&part, rollup, &rows).await?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Removes this node's files from flushes after `watermark` that never committed (a crash
    /// between writing them and the checkpoint): their rows are still in the log and will be
    /// written again. Returns how many were removed.
    ///
    /// # Errors
    /// Listing or deleting errors.
    pub async fn remove_uncommitted(&self, watermark: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for dir in [VOTES_DIR, COUNTS_DIR, PAIRS_DIR] {
            let prefix = ObjectPath::from(dir);
            let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
            for meta in metas.iter().filter(|m| m.location.as_ref().ends_with(TMP_SUFFIX)) {
                tracing::warn!(file = %meta.location, "removing a temporary file of an interrupted flush");
                self.store.delete(&meta.location).await?;
                removed += usize::from(dir == VOTES_DIR);
            }
            for part in list_parts_in(self.store.as_ref(), dir).await? {
                if part.node == self.node && part.lsn_last > watermark {
                    tracing::warn!(file = %part.path, watermark, "removing a file of a flush that did not commit");
                    self.store.delete(&part.path).await?;
                    removed += usize::from(dir == VOTES_DIR);
                }
            }
            if let Some(root) = &self.local_root
                && root.join(dir).is_dir()
            {
                crate::fsutil::sync_dir(&root.join(dir)).map_err(|source| StoreError::Sync { path: root.display().to_string(), source })?;
            }
        }
        Ok(removed)
    }
}

/// The schema of the vote counts rollup (the `date` partition column is added by readers):
/// how many votes (`votes`) share a region, service, hour of the day in Italy, channel, face,
/// reason and misuse flag on a day. About 40 thousand rows a day for a million votes: every
/// index by service, channel, region, hour or day reads these instead of the votes.
pub fn counts_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("region_code", DataType::UInt8, false),
            Field::new("service", DataType::UInt16, false),
            Field::new("hour", DataType::UInt8, false),
            Field::new("channel", DataType::UInt8, false),
            Field::new("face", DataType::Int8, false),
            Field::new("reason", DataType::UInt8, true),
            Field::new("misuse", DataType::UInt8, false),
            Field::new("votes", DataType::UInt64, false),
        ]))
    }))
}

/// Counts rows in the stored schema by day (in Italy) and by the counts key (`counts_schema`).
/// Pure: no I/O.
///
/// # Errors
/// Arrow errors (none expected for rows in the stored schema).
pub fn count_votes(rows: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>, StoreError> {
    use arrow::array::Array;
    use arrow::datatypes::{Int8Type, TimestampMillisecondType, UInt8Type, UInt16Type, UInt32Type};
    type Key = (u8, u16, u8, u8, i8, u8, u8);
    let municipality = rows.column(col::MUNICIPALITY).as_primitive::<UInt32Type>();
    let service = rows.column(col::SERVICE).as_primitive::<UInt16Type>();
    let ts = rows.column(col::TS).as_primitive::<TimestampMillisecondType>();
    let face = rows.column(col::FACE).as_primitive::<Int8Type>();
    let channel = rows.column(col::CHANNEL).as_primitive::<UInt8Type>();
    let reason = rows.column(col::REASON).as_primitive::<UInt8Type>();
    let misuse = rows.column(col::MISUSE).as_primitive::<UInt8Type>();
    let catalog = crate::registry::Catalog::builtin();
    let mut clock = LocalClock::default();
    let mut region = (u32::MAX, 0u8);
    let mut counts: BTreeMap<i32, BTreeMap<Key, u64>> = BTreeMap::new();
    for row in 0..rows.num_rows() {
        let m = municipality.value(row);
        if region.0 != m {
            region = (m, catalog.municipality(IstatCode(m)).map_or(0, |x| x.region_code));
        }
        let local = clock.local_ms(ts.value(row));
        let hour = (local.rem_euclid(86_400_000) / 3_600_000) as u8;
        // Reason 0 is "none" on the wire too; it becomes NULL again below.
        let reason = if reason.is_valid(row) { reason.value(row) } else { 0 };
        let key = (region.1, service.value(row), hour, channel.value(row), face.value(row), reason, misuse.value(row));
        *counts.entry(local.div_euclid(86_400_000) as i32).or_default().entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(day, keys)| {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(keys.keys().map(|k| k.0).collect::<arrow::array::UInt8Array>()),
                Arc::new(keys.keys().map(|k| k.1).collect::<arrow::array::UInt16Array>()),
                Arc::new(keys.keys().map(|k| k.2).collect::<arrow::array::UInt8Array>()),
                Arc::new(keys.keys().map(|k| k.3).collect::<arrow::array::UInt8Array>()),
                Arc::new(keys.keys().map(|k| k.4).collect::<arrow::array::Int8Array>()),
                Arc::new(keys.keys().map(|k| (k.5 != 0).then_some(k.5)).collect::<arrow::array::UInt8Array>()),
                Arc::new(keys.keys().map(|k| k.6).collect::<arrow::array::UInt8Array>()),
                Arc::new(keys.values().copied().collect::<arrow::array::UInt64Array>()),
            ];
            Ok((day, RecordBatch::try_new(counts_schema(), columns)?))
        })
        .collect()
}

/// The schema of the municipality × service rollup (the `date` partition column is added by
/// readers): counted faces of every municipality, service and misuse flag on a day. Rankings,
/// municipality and province indices read these instead of the votes.
pub fn pairs_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("municipality", DataType::UInt32, false),
            Field::new("service", DataType::UInt16, false),
            Field::new("misuse", DataType::UInt8, false),
            Field::new("votes", DataType::UInt64, false),
            Field::new("positive", DataType::UInt64, false),
            Field::new("neutral", DataType::UInt64, false),
            Field::new("negative", DataType::UInt64, false),
        ]))
    }))
}

/// Counts faces of rows in the stored schema by day (in Italy), municipality, service and
/// misuse flag (`pairs_schema`). Pure: no I/O.
///
/// # Errors
/// Arrow errors (none expected for rows in the stored schema).
pub fn count_pairs(rows: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>, StoreError> {
    use arrow::array::{UInt8Array, UInt16Array, UInt32Array, UInt64Array};
    use arrow::datatypes::{Int8Type, TimestampMillisecondType, UInt8Type, UInt16Type, UInt32Type};
    let municipality = rows.column(col::MUNICIPALITY).as_primitive::<UInt32Type>();
    let service = rows.column(col::SERVICE).as_primitive::<UInt16Type>();
    let ts = rows.column(col::TS).as_primitive::<TimestampMillisecondType>();
    let face = rows.column(col::FACE).as_primitive::<Int8Type>();
    let misuse = rows.column(col::MISUSE).as_primitive::<UInt8Type>();
    let mut clock = LocalClock::default();
    let mut counts: BTreeMap<i32, BTreeMap<(u32, u16, u8), [u64; 3]>> = BTreeMap::new();
    for row in 0..rows.num_rows() {
        let key = (municipality.value(row), service.value(row), misuse.value(row));
        let faces = counts.entry(clock.day(ts.value(row))).or_default().entry(key).or_default();
        if let Some(slot) = faces.get_mut((i16::from(face.value(row)) + 1) as usize) {
            *slot += 1;
        }
    }
    counts
        .into_iter()
        .map(|(day, keys)| {
            let face = |i: usize| -> ArrayRef { Arc::new(keys.values().map(|c| c[i]).collect::<UInt64Array>()) };
            let columns: Vec<ArrayRef> = vec![
                Arc::new(keys.keys().map(|k| k.0).collect::<UInt32Array>()),
                Arc::new(keys.keys().map(|k| k.1).collect::<UInt16Array>()),
                Arc::new(keys.keys().map(|k| k.2).collect::<UInt8Array>()),
                Arc::new(keys.values().map(|c| c[0] + c[1] + c[2]).collect::<UInt64Array>()),
                face(2),
                face(1),
                face(0),
            ];
            Ok((day, RecordBatch::try_new(pairs_schema(), columns)?))
        })
        .collect()
}

/// Total rows of some record batches.
pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// The `date` of a timestamp as it would be partitioned.
pub fn partition_date(at_ms: i64) -> NaiveDate {
    let day = LocalClock::default().day(at_ms);
    NaiveDate::from_num_days_from_ce_opt(day + 719_163).expect("a day within chrono's range")
}

/// The `date` partition of every timestamp of a column, as days since 1970-01-01 (Arrow
/// `Date32`): what a reader adds to rows that are not in a file yet.
pub fn partition_days(ts: &TimestampMillisecondArray) -> arrow::array::Date32Array {
    let mut clock = LocalClock::default();
    arrow::array::Date32Array::from_iter_values(ts.values().iter().map(|&t| clock.day(t)))
}

/// Days since the epoch of a date (for partition filters).
pub fn epoch_day(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - 719_163
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{BatchV1, VoteV1, encode_batch};

    fn buffer_with(votes: &[(u32, u16, i64)]) -> RecordBatch {
        let mut buffer = VoteBuffer::default();
        for &(municipality, service, at_ms) in votes {
            let batch = BatchV1 {
                seq: 1,
                base_ms: at_ms,
                municipality,
                votes: vec![VoteV1 { offset_ms: 0, service, face: 0, channel: 1, reason: 2 }],
            };
            let bytes = encode_batch(&batch);
            buffer.append(&BatchView::access(&bytes).unwrap(), IstatCode(municipality), 5, &[]);
        }
        buffer.finish()
    }

    #[test]
    fn days_follow_italian_time() {
        // 2026-11-26 23:30 UTC is 00:30 on the 27th in Rome (UTC+1 in winter).
        let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).unwrap().and_hms_opt(23, 30, 0).unwrap().and_utc();
        assert_eq!(partition_date(at.timestamp_millis()).to_string(), "2026-11-27");
        // In summer Rome is UTC+2: 22:30 UTC on 2026-07-01 is already the 2nd.
        let at = chrono::NaiveDate::from_ymd_opt(2026, 7, 1).unwrap().and_hms_opt(22, 30, 0).unwrap().and_utc();
        assert_eq!(partition_date(at.timestamp_millis()).to_string(), "2026-07-02");
    }

    #[test]
    fn partitions_are_sorted_and_split_by_day() {
        let day = 86_400_000;
        let t0 = 1_790_000_000_000;
        let rows = buffer_with(&[(1003, 2, t0 + 5), (1001, 9, t0 + 1), (1003, 1, t0 + day), (1001, 9, t0)]);
        let parts = partition_by_day(&[rows]).unwrap();
        assert_eq!(parts.len(), 2);
        let first = parts.values().next().unwrap();
        let municipalities: Vec<u32> = first.column(col::MUNICIPALITY).as_primitive::<arrow::datatypes::UInt32Type>().values().to_vec();
        let ts: Vec<i64> = first.column(col::TS).as_primitive::<arrow::datatypes::TimestampMillisecondType>().values().to_vec();
        assert_eq!(municipalities, vec![1001, 1001, 1003]);
        assert_eq!(ts, vec![t0, t0 + 1, t0 + 5]);
    }

    #[test]
    fn packed_order_matches_column_by_column_order() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let t0 = 1_790_000_000_000;
        let rows: Vec<(u32, u16, i64)> =
            (0..3000).map(|_| (rng.random_range(1001..1010), rng.random_range(1..4), t0 + rng.random_range(0..3 * 86_400_000))).collect();
        let batch = buffer_with(&rows);
        let ts: &TimestampMillisecondArray = batch.column(col::TS).as_primitive();
        let mut clock = LocalClock::default();
        let days: Vec<i32> = ts.values().iter().map(|&t| clock.day(t)).collect();
        let packed = packed_order(&batch, &days).expect("values fit");
        let sort = |values: ArrayRef| SortColumn { values, options: None };
        let columns = [
            sort(Arc::new(arrow::array::Int32Array::from(days.clone()))),
            sort(Arc::clone(batch.column(col::MUNICIPALITY))),
            sort(Arc::clone(batch.column(col::SERVICE))),
            sort(Arc::clone(batch.column(col::TS))),
            sort(Arc::clone(batch.column(col::TERMINAL))),
        ];
        let lexical = lexsort_to_indices(&columns, None).unwrap();
        let key = |i: u32| {
            let i = i as usize;
            (days[i], rows[i].0, rows[i].1, rows[i].2)
        };
        let packed_keys: Vec<_> = packed.values().iter().map(|&i| key(i)).collect();
        let lexical_keys: Vec<_> = lexical.values().iter().map(|&i| key(i)).collect();
        assert_eq!(packed_keys, lexical_keys, "seed {seed}");
    }

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
        let written = dataset.write_flush(&[batch], 1, 2).await.unwrap();
        assert_eq!(written.len(), 1);
        let file = std::fs::File::open(dir.path().join(written[0].0.path.as_ref())).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let metadata = reader.metadata().clone();
        let kv = metadata.file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|k| k.key == "faccia.lsn_last" && k.value.as_deref() == Some("2")));
        let read: Vec<RecordBatch> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows(&read), 2);
        let names: Vec<_> = std::fs::read_dir(dir.path().join(written[0].0.path.as_ref()).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind: {names:?}");
        for rollup in Rollup::ALL {
            let files = list_parts_in(dataset.store.as_ref(), rollup.dir()).await.unwrap();
            assert_eq!(files.iter().map(|p| p.path.clone()).collect::<Vec<_>>(), vec![written[0].0.rollup_path(rollup)]);
        }
        std::fs::write(dir.path().join("votes/date=2026-09-21/.part-x.parquet.tmp"), b"half").unwrap_or_else(|_| {
            std::fs::create_dir_all(dir.path().join("votes/date=2026-09-21")).unwrap();
            std::fs::write(dir.path().join("votes/date=2026-09-21/.part-x.parquet.tmp"), b"half").unwrap();
        });
        assert_eq!(dataset.remove_uncommitted(2).await.unwrap(), 1, "the interrupted temporary file");
        assert_eq!(dataset.remove_uncommitted(1).await.unwrap(), 1);
        assert!(list_parts(dataset.store.as_ref()).await.unwrap().is_empty());
        for rollup in Rollup::ALL {
            assert!(list_parts_in(dataset.store.as_ref(), rollup.dir()).await.unwrap().is_empty(), "rollups go with their file");
        }
    }

    #[test]
    fn counts_group_by_region_service_hour_and_face() {
        // Agliè (Piemonte, 1) at 10:00 and 10:59 and Ala di Stura (Piemonte) at 11:00 Rome time,
        // service 2, negative, phone, reason 2 (the test batches' vote): two keys, counts 2 and 1.
        let ten = chrono::NaiveDate::from_ymd_opt(2026, 11, 16).unwrap().and_hms_opt(9, 0, 0).unwrap().and_utc().timestamp_millis();
        let rows = buffer_with(&[(1001, 2, ten), (1003, 2, ten + 59 * 60_000), (1003, 2, ten + 3_600_000)]);
        let counts = count_votes(&rows).unwrap();
        assert_eq!(counts.len(), 1, "one day");
        let (day, batch) = &counts[0];
        assert_eq!(*day, epoch_day(chrono::NaiveDate::from_ymd_opt(2026, 11, 16).unwrap()));
        let hours: Vec<u8> = batch.column(2).as_primitive::<arrow::datatypes::UInt8Type>().values().to_vec();
        let votes: Vec<u64> = batch.column(7).as_primitive::<arrow::datatypes::UInt64Type>().values().to_vec();
        assert_eq!((hours, votes), (vec![10, 11], vec![2, 1]));
        // By municipality × service: Agliè 1 negative, Ala di Stura 2 negative.
        let pairs = count_pairs(&rows).unwrap();
        let batch = &pairs[0].1;
        let municipalities: Vec<u32> = batch.column(0).as_primitive::<arrow::datatypes::UInt32Type>().values().to_vec();
        let negative: Vec<u64> = batch.column(6).as_primitive::<arrow::datatypes::UInt64Type>().values().to_vec();
        assert_eq!((municipalities, negative), (vec![1001, 1003], vec![1, 2]));
    }

    #[tokio::test]
    async fn missing_counts_are_backfilled() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = Dataset::local(dir.path(), "n1").unwrap();
        let written = dataset.write_flush(&[buffer_with(&[(1003, 2, 1_790_000_000_000)])], 1, 1).await.unwrap();
        let pairs = dir.path().join(written[0].0.rollup_path(Rollup::Pairs).as_ref());
        std::fs::remove_file(&pairs).unwrap();
        assert_eq!(dataset.backfill_rollups().await.unwrap(), 1);
        assert!(pairs.exists());
        assert_eq!(dataset.backfill_rollups().await.unwrap(), 0);
    }
}
