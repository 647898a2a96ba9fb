//! Calendar functions in Italian time over `ts`: `local_hour(ts)` (0–23) and
//! `local_weekday(ts)` (1 = Monday … 7 = Sunday, ISO). `date_part` on a time-zoned timestamp
//! asks the time-zone database for every row; these cache the offset per hour
//! (`storage::buffer::LocalClock`), which is what makes the heat map cheap.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, UInt8Array};
use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::scalar::ScalarValue;

use crate::storage::buffer::{LocalClock, TIME_ZONE};

const DAY_MS: i64 = 86_400_000;

/// Hour of the day in Italy of a local timestamp in ms.
fn hour(local_ms: i64) -> u8 {
    (local_ms.rem_euclid(DAY_MS) / 3_600_000) as u8
}

/// ISO weekday (1 = Monday) of a local timestamp in ms; 1970-01-01 was a Thursday.
fn weekday(local_ms: i64) -> u8 {
    ((local_ms.div_euclid(DAY_MS) + 3).rem_euclid(7) + 1) as u8
}

fn local_udf(name: &str, f: fn(i64) -> u8) -> ScalarUDF {
    let implementation = Arc::new(move |args: &[ColumnarValue]| -> DfResult<ColumnarValue> {
        let scalar = matches!(args[0], ColumnarValue::Scalar(_));
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let ts = arrays[0].as_primitive::<TimestampMillisecondType>();
        let mut clock = LocalClock::default();
        let values: UInt8Array = ts.iter().map(|t| t.map(|t| f(clock.local_ms(t)))).collect();
        let values: ArrayRef = Arc::new(values);
        Ok(if scalar { ColumnarValue::Scalar(ScalarValue::try_from_array(&values, 0)?) } else { ColumnarValue::Array(values) })
    });
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some(TIME_ZONE.into()));
    create_udf(name, vec![ts], DataType::UInt8, Volatility::Immutable, implementation)
}

/// The calendar functions, ready to register.
pub(crate) fn functions() -> Vec<ScalarUDF> {
    vec![local_udf("local_hour", hour), local_udf("local_weekday", weekday)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_and_weekdays_are_italian() {
        let mut clock = LocalClock::default();
        // Monday 2026-11-16 09:30 UTC is 10:30 in Rome (winter, UTC+1).
        let winter = chrono::NaiveDate::from_ymd_opt(2026, 11, 16).unwrap().and_hms_opt(9, 30, 0).unwrap().and_utc();
        let local = clock.local_ms(winter.timestamp_millis());
        assert_eq!((hour(local), weekday(local)), (10, 1));
        // Sunday 2026-07-05 22:30 UTC is already Monday 00:30 in Rome (summer, UTC+2).
        let summer = chrono::NaiveDate::from_ymd_opt(2026, 7, 5).unwrap().and_hms_opt(22, 30, 0).unwrap().and_utc();
        let local = clock.local_ms(summer.timestamp_millis());
        assert_eq!((hour(local), weekday(local)), (0, 1));
    }
}
