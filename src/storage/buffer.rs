//! The Arrow buffer: the stored schema, durable batches turned into Arrow columns
//! (`VoteBuffer`, no I/O), the day in Italy of every vote, and the storage sort order
//! (municipality, service, time, terminal) with the split into one part per day.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, AsArray, Int8Builder, RecordBatch, TimestampMillisecondArray, TimestampMillisecondBuilder, UInt8Builder,
    UInt16Builder, UInt32Builder,
};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{NaiveDate, Offset, TimeZone};

use crate::model::{IstatCode, TerminalId, Vote};
use crate::storage::StoreError;
use crate::wire::BatchView;

/// The time zone of vote timestamps and of the `date=` partitions.
pub(crate) const TIME_ZONE: &str = "Europe/Rome";

/// Column positions in the stored schema.
pub mod col {
    /// `municipality` (UInt32): ISTAT code of the municipality the terminal is registered to.
    pub const MUNICIPALITY: usize = 0;
    /// `service` (UInt16): id of the service voted on, from the catalog (`schemas/services.csv`).
    pub const SERVICE: usize = 1;
    /// `ts` (timestamp, ms since the Unix epoch, shown in Europe/Rome): when the vote was cast,
    /// by the terminal's clock; for a clock fault (`misuse` = `CLOCK_FAULT`), when the server received it.
    pub const TS: usize = 2;
    /// `face` (Int8): the face tapped, stored as −1, 0 or +1.
    pub const FACE: usize = 3;
    /// `channel` (UInt8): how the vote was cast, as `Channel::code` (0 counter, 1 phone, 2 web).
    pub const CHANNEL: usize = 4;
    /// `reason` (UInt8, nullable): why a negative vote was negative, as `Reason::code` (from 1); null when none was given.
    pub const REASON: usize = 5;
    /// `terminal` (UInt32): id of the terminal that sent the vote.
    pub const TERMINAL: usize = 6;
    /// 0: a counted vote; otherwise the id of the misuse rule that flagged it, or
    /// `CLOCK_FAULT`. Flagged votes are kept and left out of every index by default.
    pub const MISUSE: usize = 7;
    /// `terminal_ts` (timestamp, nullable): the terminal's own time of a clock fault, whose `ts`
    /// is the receive time; null for every other vote. Added after the first release: files
    /// written before lack it and read as null (`conform`).
    pub const TERMINAL_TS: usize = 8;
}

/// The `misuse` value of a clock fault: the terminal's time was implausible (more than
/// `future_skew_ms` ahead of the server or `past_age_ms` old), so `ts` holds the server's
/// receive time and `terminal_ts` the terminal's time (`ingest::misuse::Rule::Clock`).
pub const CLOCK_FAULT: u8 = 4;

/// The storage sort order of the votes within a day, ascending: every vote file (flushed or
/// compacted) is sorted by these columns and declares it (Parquet `sorting_columns`).
pub(crate) const SORT_ORDER: [usize; 4] = [col::MUNICIPALITY, col::SERVICE, col::TS, col::TERMINAL];

/// The schema of a vote as stored (the `date` partition column is added by readers).
pub(crate) fn schema() -> SchemaRef {
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
            Field::new("terminal_ts", DataType::Timestamp(TimeUnit::Millisecond, Some(TIME_ZONE.into())), true),
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
    terminal_ts: TimestampMillisecondBuilder,
}

impl Default for VoteBuffer {
    fn default() -> Self {
        VoteBuffer::with_capacity(0)
    }
}

impl VoteBuffer {
    /// An empty buffer with room for `rows` votes in every column before it reallocates.
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
            terminal_ts: TimestampMillisecondBuilder::with_capacity(rows).with_timezone(TIME_ZONE),
        }
    }

    /// Rows (votes) appended since the last `finish`.
    pub(crate) fn len(&self) -> usize {
        self.municipality.len()
    }

    /// Whether no vote was appended since the last `finish`.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends every vote of a validated batch with its misuse flags (`misuse` holds one flag
    /// per vote, or is empty when none is flagged). A clock fault (`CLOCK_FAULT`) is stored at
    /// `received_ms` (ms since the Unix epoch, the server's clock when the batch arrived, as the
    /// log record holds it), its own time in `terminal_ts`.
    pub fn append(&mut self, batch: &BatchView<'_>, municipality: IstatCode, terminal: TerminalId, misuse: &[u8], received_ms: i64) {
        debug_assert!(misuse.is_empty() || misuse.len() == batch.len(), "one misuse flag per vote");
        for (i, vote) in batch.votes(municipality, terminal).enumerate() {
            match misuse.get(i).copied().unwrap_or(0) {
                CLOCK_FAULT => self.push_at(&vote, CLOCK_FAULT, received_ms, Some(vote.at_ms)),
                flag => self.push(&vote, flag),
            }
        }
    }

    /// Appends one vote with its misuse flag (0: counted), at its own time.
    pub(crate) fn push(&mut self, vote: &Vote, misuse: u8) {
        self.push_at(vote, misuse, vote.at_ms, None);
    }

    /// Appends one vote stored at `ts_ms`, with the terminal's time when that is not `ts_ms`.
    pub(crate) fn push_at(&mut self, vote: &Vote, misuse: u8, ts_ms: i64, terminal_ts_ms: Option<i64>) {
        self.municipality.append_value(vote.municipality.0);
        self.service.append_value(vote.service);
        self.ts.append_value(ts_ms);
        self.face.append_value(vote.face.score());
        self.channel.append_value(vote.channel.code());
        self.reason.append_option(vote.reason.map(|r| r.code()));
        self.terminal.append_value(vote.terminal);
        self.misuse.append_value(misuse);
        self.terminal_ts.append_option(terminal_ts_ms);
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
            Arc::new(self.terminal_ts.finish()),
        ];
        RecordBatch::try_new(schema(), columns).expect("buffer columns match the schema")
    }
}

/// Rows of a vote file in the stored schema: a file written before a column was added (the
/// nullable `terminal_ts`) gets that column as nulls. Rows already in the schema are returned
/// as they are.
///
/// # Errors
/// When a column of the file is not the stored one (not a faccia vote file).
pub(crate) fn conform(rows: &RecordBatch) -> Result<RecordBatch, StoreError> {
    let schema = schema();
    if rows.schema().fields() == schema.fields() {
        return Ok(rows.clone());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match rows.column_by_name(field.name()) {
            Some(column) => Ok(Arc::clone(column)),
            None if field.is_nullable() => Ok(arrow::array::new_null_array(field.data_type(), rows.num_rows())),
            None => Err(arrow::error::ArrowError::SchemaError(format!("a vote file without the column {}", field.name()))),
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Italian local time of UTC timestamps, fast: the offset (which changes twice a year) is
/// cached per UTC hour in a small direct-mapped table, so rows in any order rarely ask
/// chrono-tz.
#[derive(Debug, Clone)]
pub(crate) struct LocalClock {
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
    pub(crate) fn local_ms(&mut self, at_ms: i64) -> i64 {
        let hour = at_ms.div_euclid(3_600_000);
        let slot = &mut self.offsets[hour.rem_euclid(64) as usize];
        if slot.0 != hour {
            let utc = chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default().naive_utc();
            *slot = (hour, i64::from(self.tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * 1000);
        }
        at_ms + slot.1
    }

    /// The day in Italy, as days since 1970-01-01.
    pub(crate) fn day(&mut self, at_ms: i64) -> i32 {
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
            let mut columns = vec![sort(Arc::new(days.clone()))];
            columns.extend(SORT_ORDER.iter().map(|&c| sort(Arc::clone(all.column(c)))));
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

/// Total rows of some record batches.
pub(crate) fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// The `date` of a timestamp as it would be partitioned.
pub fn partition_date(at_ms: i64) -> NaiveDate {
    let day = LocalClock::default().day(at_ms);
    NaiveDate::from_num_days_from_ce_opt(day + 719_163).expect("a day within chrono's range")
}

/// The `date` partition of every timestamp of a column, as days since 1970-01-01 (Arrow
/// `Date32`): what a reader adds to rows that are not in a file yet.
pub(crate) fn partition_days(ts: &TimestampMillisecondArray) -> arrow::array::Date32Array {
    let mut clock = LocalClock::default();
    arrow::array::Date32Array::from_iter_values(ts.values().iter().map(|&t| clock.day(t)))
}

#[cfg(test)]
/// Days since the epoch of a date (for partition filters).
pub(crate) fn epoch_day(date: NaiveDate) -> i32 {
    use chrono::Datelike;
    date.num_days_from_ce() - 719_163
}

#[cfg(test)]
pub(crate) mod testing {
    use arrow::array::RecordBatch;

    use super::VoteBuffer;
    use crate::model::IstatCode;
    use crate::wire::{BatchV1, BatchView, VoteV1, encode_batch};

    /// Rows of votes `(municipality, service, at_ms)`, each negative, by phone, reason 2,
    /// from terminal 5.
    pub(crate) fn buffer_with(votes: &[(u32, u16, i64)]) -> RecordBatch {
        let mut buffer = VoteBuffer::default();
        for &(municipality, service, at_ms) in votes {
            let batch = BatchV1 {
                seq: 1,
                base_ms: at_ms,
                municipality,
                votes: vec![VoteV1 { offset_ms: 0, service, face: 0, channel: 1, reason: 2 }],
            };
            let bytes = encode_batch(&batch);
            buffer.append(&BatchView::access(&bytes).unwrap(), IstatCode(municipality), 5, &[], 0);
        }
        buffer.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::buffer_with;
    use super::*;

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
}
