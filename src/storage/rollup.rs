//! The rollups written beside every vote file: aggregates of the file's rows that the index
//! views read instead of the votes. Pure: no I/O.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::model::IstatCode;
use crate::storage::StoreError;
use crate::storage::buffer::{LocalClock, col};

/// Top-level directory of the vote counts rollup: one file beside each vote file, same name.
pub(crate) const COUNTS_DIR: &str = "vote_counts";
/// Top-level directory of the municipality × service counts rollup, likewise.
pub(crate) const PAIRS_DIR: &str = "municipality_service_counts";

/// The rollups written beside every vote file, each an aggregate of the file's rows that the
/// index views read instead of the votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rollup {
    /// `vote_counts`: by region, service, hour, channel, face, reason, misuse (`count_votes`).
    Counts,
    /// `municipality_service_counts`: by municipality, service, misuse (`count_pairs`).
    Pairs,
}

impl Rollup {
    pub(crate) const ALL: [Rollup; 2] = [Rollup::Counts, Rollup::Pairs];

    pub(crate) fn dir(self) -> &'static str {
        match self {
            Rollup::Counts => COUNTS_DIR,
            Rollup::Pairs => PAIRS_DIR,
        }
    }

    pub(crate) fn schema(self) -> SchemaRef {
        match self {
            Rollup::Counts => counts_schema(),
            Rollup::Pairs => pairs_schema(),
        }
    }

    /// The rollup of rows in the stored schema, by day in Italy. Pure: no I/O.
    ///
    /// # Errors
    /// Arrow errors (none expected for rows in the stored schema).
    pub(crate) fn of(self, rows: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>, StoreError> {
        match self {
            Rollup::Counts => count_votes(rows),
            Rollup::Pairs => count_pairs(rows),
        }
    }
}

/// The schema of the vote counts rollup (the `date` partition column is added by readers):
/// how many votes (`votes`) share a region, service, hour of the day in Italy, channel, face,
/// reason and misuse flag on a day. About 40 thousand rows a day for a million votes: every
/// index by service, channel, region, hour or day reads these instead of the votes.
pub(crate) fn counts_schema() -> SchemaRef {
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
            Field::new("votes", DataType::Int64, false),
        ]))
    }))
}

/// Counts rows in the stored schema by day (in Italy) and by the counts key (`counts_schema`).
/// Pure: no I/O.
///
/// # Errors
/// Arrow errors (none expected for rows in the stored schema).
pub(crate) fn count_votes(rows: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>, StoreError> {
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
    let mut clock = LocalClock::default();
    let mut region = (u32::MAX, 0u8);
    let mut counts: BTreeMap<i32, BTreeMap<Key, u64>> = BTreeMap::new();
    for row in 0..rows.num_rows() {
        let m = municipality.value(row);
        if region.0 != m {
            region = (m, crate::registry::region_code(IstatCode(m)).unwrap_or(0));
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
                Arc::new(keys.values().map(|&n| n as i64).collect::<arrow::array::Int64Array>()),
            ];
            Ok((day, RecordBatch::try_new(counts_schema(), columns)?))
        })
        .collect()
}

/// The schema of the municipality × service rollup (the `date` partition column is added by
/// readers): counted faces of every municipality, service and misuse flag on a day. Rankings,
/// municipality and province indices read these instead of the votes.
pub(crate) fn pairs_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("municipality", DataType::UInt32, false),
            Field::new("service", DataType::UInt16, false),
            Field::new("misuse", DataType::UInt8, false),
            Field::new("votes", DataType::Int64, false),
            Field::new("positive", DataType::Int64, false),
            Field::new("neutral", DataType::Int64, false),
            Field::new("negative", DataType::Int64, false),
        ]))
    }))
}

/// Negative, neutral and positive counts by (municipality, service, misuse flag), for one day.
type FacesByPair = BTreeMap<(u32, u16, u8), [u64; 3]>;

/// Counts faces of rows in the stored schema by day (in Italy), municipality, service and
/// misuse flag (`pairs_schema`). Pure: no I/O.
///
/// # Errors
/// Arrow errors (none expected for rows in the stored schema).
pub(crate) fn count_pairs(rows: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>, StoreError> {
    use arrow::array::{Int64Array, UInt8Array, UInt16Array, UInt32Array};
    use arrow::datatypes::{Int8Type, TimestampMillisecondType, UInt8Type, UInt16Type, UInt32Type};
    let municipality = rows.column(col::MUNICIPALITY).as_primitive::<UInt32Type>();
    let service = rows.column(col::SERVICE).as_primitive::<UInt16Type>();
    let ts = rows.column(col::TS).as_primitive::<TimestampMillisecondType>();
    let face = rows.column(col::FACE).as_primitive::<Int8Type>();
    let misuse = rows.column(col::MISUSE).as_primitive::<UInt8Type>();
    let mut clock = LocalClock::default();
    let mut counts: BTreeMap<i32, FacesByPair> = BTreeMap::new();
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
            let face = |i: usize| -> ArrayRef { Arc::new(keys.values().map(|c| c[i] as i64).collect::<Int64Array>()) };
            let columns: Vec<ArrayRef> = vec![
                Arc::new(keys.keys().map(|k| k.0).collect::<UInt32Array>()),
                Arc::new(keys.keys().map(|k| k.1).collect::<UInt16Array>()),
                Arc::new(keys.keys().map(|k| k.2).collect::<UInt8Array>()),
                Arc::new(keys.values().map(|c| (c[0] + c[1] + c[2]) as i64).collect::<Int64Array>()),
                face(2),
                face(1),
                face(0),
            ];
            Ok((day, RecordBatch::try_new(pairs_schema(), columns)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::buffer::epoch_day;
    use crate::storage::buffer::testing::buffer_with;

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
        let votes: Vec<u64> = batch.column(7).as_primitive::<arrow::datatypes::Int64Type>().values().iter().map(|&n| n as u64).collect();
        assert_eq!((hours, votes), (vec![10, 11], vec![2, 1]));
        // By municipality × service: Agliè 1 negative, Ala di Stura 2 negative.
        let pairs = count_pairs(&rows).unwrap();
        let batch = &pairs[0].1;
        let municipalities: Vec<u32> = batch.column(0).as_primitive::<arrow::datatypes::UInt32Type>().values().to_vec();
        let negative: Vec<u64> = batch.column(6).as_primitive::<arrow::datatypes::Int64Type>().values().iter().map(|&n| n as u64).collect();
        assert_eq!((municipalities, negative), (vec![1001, 1003], vec![1, 2]));
    }
}
