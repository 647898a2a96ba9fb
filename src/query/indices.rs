//! The satisfaction-index functions (`schemas/sql.md` gives each formula with a worked example).
//!
//! Scalar functions take counts — P positive, U neutral, N negative, T = P + U + N — and return
//! a percentage, NULL when there is nothing to measure. Aggregate functions take the `face`
//! column (−1/0/+1) and count it themselves: `csat_of(face)` is `csat(P, T)` over the group.
//! Both are pure arithmetic; which votes they see (flagged ones or not) is the query's `WHERE`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int8Type, Int64Type};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator, ScalarUDF, Signature, Volatility, create_udf,
};
use datafusion::scalar::ScalarValue;

/// The normal quantile for 95 % confidence, used by the Wilson bounds and trend significance.
pub(crate) const Z_95: f64 = 1.959_963_984_540_054;

/// 100·part/whole; NULL when whole is 0.
pub(crate) fn share_pct(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| 100.0 * part / whole)
}

/// CSAT %: 100·P/T.
pub(crate) fn csat(positive: f64, total: f64) -> Option<f64> {
    share_pct(positive, total)
}

/// Net score: 100·(P − N)/T, from −100 to +100.
pub(crate) fn net_score(positive: f64, negative: f64, total: f64) -> Option<f64> {
    share_pct(positive - negative, total)
}

/// Happy-style index: 100·(P + U/2)/T.
pub(crate) fn happy_index(positive: f64, neutral: f64, total: f64) -> Option<f64> {
    share_pct(positive + neutral / 2.0, total)
}

/// Wilson score interval of P/T at 95 %, as percentages (lower, upper).
pub(crate) fn wilson(positive: f64, total: f64) -> Option<(f64, f64)> {
    if total <= 0.0 {
        return None;
    }
    let p = positive / total;
    let z2 = Z_95 * Z_95;
    let denominator = 1.0 + z2 / total;
    let center = (p + z2 / (2.0 * total)) / denominator;
    let margin = Z_95 / denominator * (p * (1.0 - p) / total + z2 / (4.0 * total * total)).sqrt();
    Some((100.0 * (center - margin).max(0.0), 100.0 * (center + margin).min(1.0)))
}

/// Empirical-Bayes shrunk CSAT %: the group's positives plus `prior_votes` pseudo-votes at the
/// prior share `prior_pct`, 100·(P + m·μ)/(T + m). Small groups move toward the prior.
pub(crate) fn eb_score(positive: f64, total: f64, prior_pct: f64, prior_votes: f64) -> Option<f64> {
    share_pct(positive + prior_votes * prior_pct / 100.0, total + prior_votes)
}

/// Two-proportion z statistic of the positive share, this period (P1 of T1) against the
/// previous one (P2 of T2), with the pooled standard error. |z| ≥ 1.96: significant at 95 %.
pub(crate) fn change_z(p1: f64, t1: f64, p2: f64, t2: f64) -> Option<f64> {
    if t1 <= 0.0 || t2 <= 0.0 {
        return None;
    }
    let pooled = (p1 + p2) / (t1 + t2);
    let se = (pooled * (1.0 - pooled) * (1.0 / t1 + 1.0 / t2)).sqrt();
    (se > 0.0).then(|| (p1 / t1 - p2 / t2) / se)
}

fn float_udf(name: &str, arity: usize, f: fn(&[f64]) -> Option<f64>) -> ScalarUDF {
    let implementation = Arc::new(move |args: &[ColumnarValue]| -> DfResult<ColumnarValue> {
        let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let columns: Vec<&Float64Array> = arrays.iter().map(|a| a.as_primitive::<Float64Type>()).collect();
        let rows = columns.first().map_or(0, |c| c.len());
        let mut values = [0.0; 4];
        let result: Float64Array = (0..rows)
            .map(|row| {
                for (value, column) in values.iter_mut().zip(&columns) {
                    if column.is_null(row) {
                        return None;
                    }
                    *value = column.value(row);
                }
                f(&values[..columns.len()])
            })
            .collect();
        let result: ArrayRef = Arc::new(result);
        if scalar { Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?)) } else { Ok(ColumnarValue::Array(result)) }
    });
    create_udf(name, vec![DataType::Float64; arity], DataType::Float64, Volatility::Immutable, implementation)
}

/// The scalar index functions, ready to register.
pub(crate) fn scalar_functions() -> Vec<ScalarUDF> {
    vec![
        float_udf("csat", 2, |v| csat(v[0], v[1])),
        float_udf("net_score", 3, |v| net_score(v[0], v[1], v[2])),
        float_udf("happy_index", 3, |v| happy_index(v[0], v[1], v[2])),
        float_udf("wilson_lower", 2, |v| wilson(v[0], v[1]).map(|w| w.0)),
        float_udf("wilson_upper", 2, |v| wilson(v[0], v[1]).map(|w| w.1)),
        float_udf("eb_score", 4, |v| eb_score(v[0], v[1], v[2], v[3])),
        float_udf("share_pct", 2, |v| share_pct(v[0], v[1])),
        float_udf("change_z", 4, |v| change_z(v[0], v[1], v[2], v[3])),
    ]
}

/// The aggregate index functions over `face`, ready to register, with `face_counts`.
pub(crate) fn aggregate_functions() -> Vec<AggregateUDF> {
    let aggregate = |name: &'static str, finish: Finish| {
        AggregateUDF::from(FaceIndex { name, signature: Signature::uniform(1, vec![DataType::Int8], Volatility::Immutable), finish })
    };
    let of = |name: &'static str, index: fn(&[u64; 3]) -> Option<f64>| aggregate(name, Finish::Index(index));
    vec![
        aggregate("face_counts", Finish::Counts),
        of("csat_of", |n| {
            let (p, _, _, t) = face_counts(n);
            csat(p, t)
        }),
        of("net_score_of", |n| {
            let (p, _, negative, t) = face_counts(n);
            net_score(p, negative, t)
        }),
        of("happy_index_of", |n| {
            let (p, u, _, t) = face_counts(n);
            happy_index(p, u, t)
        }),
        of("wilson_lower_of", |n| {
            let (p, _, _, t) = face_counts(n);
            wilson(p, t).map(|w| w.0)
        }),
        of("wilson_upper_of", |n| {
            let (p, _, _, t) = face_counts(n);
            wilson(p, t).map(|w| w.1)
        }),
    ]
}

/// (P, U, N, T) from counts indexed by face + 1.
fn face_counts(n: &[u64; 3]) -> (f64, f64, f64, f64) {
    (n[2] as f64, n[1] as f64, n[0] as f64, (n[0] + n[1] + n[2]) as f64)
}

/// What an aggregate over faces returns from its counts (indexed by face + 1).
#[derive(Debug, Clone, Copy)]
enum Finish {
    /// One index, a percentage (NULL for no votes).
    Index(fn(&[u64; 3]) -> Option<f64>),
    /// The counts themselves: `{votes, positive, neutral, negative}` — what every index view
    /// starts from, in one pass instead of one filtered count per face.
    Counts,
}

const COUNT_FIELDS: [&str; 4] = ["votes", "positive", "neutral", "negative"];

impl Finish {
    fn data_type(self) -> DataType {
        match self {
            Finish::Index(_) => DataType::Float64,
            Finish::Counts => DataType::Struct(COUNT_FIELDS.iter().map(|n| Field::new(*n, DataType::Int64, false)).collect()),
        }
    }

    fn array(self, counts: &[[u64; 3]]) -> DfResult<ArrayRef> {
        match self {
            Finish::Index(index) => Ok(Arc::new(counts.iter().map(index).collect::<Float64Array>())),
            Finish::Counts => {
                let column = |f: fn(&[u64; 3]) -> u64| -> ArrayRef { Arc::new(counts.iter().map(|c| f(c) as i64).collect::<Int64Array>()) };
                let columns = vec![column(|c| c[0] + c[1] + c[2]), column(|c| c[2]), column(|c| c[1]), column(|c| c[0])];
                let DataType::Struct(fields) = self.data_type() else { unreachable!("counts are a struct") };
                Ok(Arc::new(arrow::array::StructArray::try_new(fields, columns, None)?))
            }
        }
    }
}

/// An aggregate that counts faces and finishes the counts.
#[derive(Debug)]
struct FaceIndex {
    name: &'static str,
    signature: Signature,
    finish: Finish,
}

// Two aggregates are the same when they have the same name (each name has one formula).
impl PartialEq for FaceIndex {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for FaceIndex {}

impl std::hash::Hash for FaceIndex {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

const STATE_NAMES: [&str; 3] = ["negative", "neutral", "positive"];

impl AggregateUDFImpl for FaceIndex {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.finish.data_type())
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(FaceAccumulator { counts: [0; 3], finish: self.finish }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(STATE_NAMES.iter().map(|n| Arc::new(Field::new(format!("{}[{n}]", args.name), DataType::Int64, false))).collect())
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(FaceGroups { counts: Vec::new(), finish: self.finish }))
    }
}

/// Adds one face (−1/0/+1) to counts indexed by face + 1; other values are not faces.
fn count_face(counts: &mut [u64; 3], face: i8) {
    if let Some(slot) = counts.get_mut((face + 1) as usize) {
        *slot += 1;
    }
}

#[derive(Debug)]
struct FaceAccumulator {
    counts: [u64; 3],
    finish: Finish,
}

impl Accumulator for FaceAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let faces = values[0].as_primitive::<Int8Type>();
        for face in faces.iter().flatten() {
            count_face(&mut self.counts, face);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        ScalarValue::try_from_array(&self.finish.array(&[self.counts])?, 0)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(self.counts.iter().map(|&c| ScalarValue::Int64(Some(c as i64))).collect())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        for (slot, state) in self.counts.iter_mut().zip(states) {
            *slot += state.as_primitive::<Int64Type>().iter().flatten().sum::<i64>() as u64;
        }
        Ok(())
    }
}

struct FaceGroups {
    counts: Vec<[u64; 3]>,
    finish: Finish,
}

impl FaceGroups {
    fn take(&mut self, emit_to: EmitTo) -> Vec<[u64; 3]> {
        emit_to.take_needed(&mut self.counts)
    }

    fn add_run(&mut self, (group, counts): (usize, [u64; 3])) {
        if let Some(slot) = self.counts.get_mut(group) {
            for (total, count) in slot.iter_mut().zip(counts) {
                *total += count;
            }
        }
    }
}

impl GroupsAccumulator for FaceGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.counts.resize(total_num_groups, [0; 3]);
        let faces = values[0].as_primitive::<Int8Type>();
        let counted = |row: usize| faces.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
        if faces.null_count() == 0 && opt_filter.is_none() {
            // Votes are stored sorted by municipality and service: groups come in runs, so
            // count a run locally and touch the group's slot once per run.
            let mut run = (usize::MAX, [0u64; 3]);
            for (&group, &face) in group_indices.iter().zip(faces.values().iter()) {
                if group != run.0 {
                    self.add_run(run);
                    run = (group, [0; 3]);
                }
                count_face(&mut run.1, face);
            }
            self.add_run(run);
        } else {
            for (row, &group) in group_indices.iter().enumerate() {
                if counted(row) {
                    count_face(&mut self.counts[group], faces.value(row));
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let counts = self.take(emit_to);
        self.finish.array(&counts)
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let counts = self.take(emit_to);
        Ok((0..3).map(|i| Arc::new(counts.iter().map(|c| c[i] as i64).collect::<Int64Array>()) as ArrayRef).collect())
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> DfResult<()> {
        self.counts.resize(total_num_groups, [0; 3]);
        for (i, state) in values.iter().enumerate() {
            let state = state.as_primitive::<Int64Type>();
            for (row, &group) in group_indices.iter().enumerate() {
                self.counts[group][i] += state.value(row) as u64;
            }
        }
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> DfResult<Vec<ArrayRef>> {
        // Each row becomes a state of its own: a count of 1 for its face.
        let faces = values[0].as_primitive::<Int8Type>();
        let counted = |row: usize| faces.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
        Ok((0..3i8)
            .map(|slot| {
                let column: Int64Array =
                    (0..faces.len()).map(|row| Some(i64::from(counted(row) && faces.value(row) + 1 == slot))).collect();
                Arc::new(column) as ArrayRef
            })
            .collect())
    }

    fn size(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<[u64; 3]>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_hand_computed_values() {
        // 60 positive, 25 neutral, 15 negative out of 100.
        assert_eq!(csat(60.0, 100.0), Some(60.0));
        assert_eq!(net_score(60.0, 15.0, 100.0), Some(45.0));
        assert_eq!(happy_index(60.0, 25.0, 100.0), Some(72.5));
        assert_eq!(csat(1.0, 0.0), None);
        // Wilson 95 % for 60/100: z² = 3.8415, centre (0.6 + 0.019207)/1.038415 = 0.596300,
        // half-width 1.959964/1.038415 · √(0.0024 + 0.000096) = 0.094300 → [50.20 %, 69.06 %].
        let (low, high) = wilson(60.0, 100.0).unwrap();
        assert!((low - 50.20).abs() < 0.01 && (high - 69.06).abs() < 0.01, "{low} {high}");
        // 3/3 must not look perfect: lower bound 43.85 %.
        let (low, high) = wilson(3.0, 3.0).unwrap();
        assert!((low - 43.85).abs() < 0.01 && (high - 100.0).abs() < 1e-9, "{low} {high}");
        // 600/1000: centre 0.600 (0.6 + 0.001921)/1.003841 = 0.599618, half-width
        // 1.959964/1.003841 · √(0.00024 + 0.00000096) = 0.030309 → [56.93 %, 62.99 %].
        let (low, high) = wilson(600.0, 1000.0).unwrap();
        assert!((low - 56.93).abs() < 0.01 && (high - 62.99).abs() < 0.01, "{low} {high}");
        let (low, _) = wilson(0.0, 10.0).unwrap();
        assert_eq!(low, 0.0);
    }

    #[test]
    fn shrinkage_and_trend_significance_match_hand_computed_values() {
        // 3 of 3 with a prior of 70 % worth 10 votes: (3 + 7)/(3 + 10) = 76.92 %.
        assert!((eb_score(3.0, 3.0, 70.0, 10.0).unwrap() - 76.923).abs() < 0.001);
        // 600 of 1000 barely moves: (600 + 7)/1010 = 60.10 %.
        assert!((eb_score(600.0, 1000.0, 70.0, 10.0).unwrap() - 60.099).abs() < 0.001);
        // 60/100 against 45/100: pooled 0.525, se = √(0.525·0.475·0.02) = 0.070622,
        // z = 0.15/0.070622 = 2.124 (significant); 52/100 against 50/100: z = 0.283.
        assert!((change_z(60.0, 100.0, 45.0, 100.0).unwrap() - 2.124).abs() < 0.001);
        assert!((change_z(52.0, 100.0, 50.0, 100.0).unwrap() - 0.283).abs() < 0.001);
        assert_eq!(change_z(1.0, 0.0, 1.0, 1.0), None);
        assert_eq!(share_pct(1.0, 4.0), Some(25.0));
    }

    #[test]
    fn face_groups_count_with_filters_and_merge() {
        // Faces −1, 0, +1, +1 in group 0 and +1 in group 1; the filter drops the last row.
        let faces: ArrayRef = Arc::new(arrow::array::Int8Array::from(vec![-1, 0, 1, 1, 1]));
        let filter = BooleanArray::from(vec![true, true, true, true, false]);
        let csat_of = |n: &[u64; 3]| csat(n[2] as f64, (n[0] + n[1] + n[2]) as f64);
        let mut groups = FaceGroups { counts: vec![], finish: Finish::Index(csat_of) };
        groups.update_batch(&[Arc::clone(&faces)], &[0, 0, 0, 0, 1], Some(&filter), 2).unwrap();
        let state = groups.state(EmitTo::All).unwrap();
        let mut merged = FaceGroups { counts: vec![], finish: Finish::Index(csat_of) };
        merged.merge_batch(&state, &[1, 0], 2).unwrap();
        let values = merged.evaluate(EmitTo::All).unwrap();
        let values = values.as_primitive::<Float64Type>();
        // Group 0's state went to group 1: 2 of 4 positive; group 1's (empty) to group 0: NULL.
        assert!(values.is_null(0));
        assert_eq!(values.value(1), 50.0);
        // Without a filter, runs of one group are counted together; a group may come back.
        let mut runs = FaceGroups { counts: vec![], finish: Finish::Index(csat_of) };
        runs.update_batch(&[faces], &[1, 1, 0, 1, 1], None, 2).unwrap();
        let values = runs.evaluate(EmitTo::All).unwrap();
        let values = values.as_primitive::<Float64Type>();
        // Group 0: face +1 → 100 %; group 1: −1, 0, +1, +1 → 50 %.
        assert_eq!((values.value(0), values.value(1)), (100.0, 50.0));
    }
}
