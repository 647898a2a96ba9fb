//! Property tests across the formats a vote passes through: terminal encoding → server
//! validation (in place) → Arrow buffer with misuse flags → Parquet → read back, unchanged.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int8Type, TimestampMillisecondType, UInt8Type, UInt16Type, UInt32Type};
use faccia::limits::Limits;
use faccia::model::{Channel, Face, Reason};
use faccia::storage::buffer::{VoteBuffer, col};
use faccia::terminal::client::{TerminalVote, batch_frame};
use faccia::wire::{self, BatchRules, BatchView};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use proptest::prelude::*;

use crate::common::{AGLIE, aligned};

const NOW_MS: i64 = 1_790_000_000_000;

fn terminal_vote() -> impl Strategy<Value = TerminalVote> {
    (0i64..30 * 86_400_000, 1u16..=15, 0usize..3, 0usize..3, 0usize..5).prop_map(|(age_ms, service, face, channel, reason)| {
        let face = Face::ALL[face];
        let reason = (face == Face::Negative && reason > 0).then(|| Reason::ALL[reason - 1]);
        TerminalVote { at_ms: NOW_MS - age_ms, service, face, channel: Channel::ALL[channel], reason }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn votes_come_back_from_parquet_as_the_terminal_sent_them(
        sent in prop::collection::vec(terminal_vote(), 1..300),
        flags in prop::collection::vec(0u8..=3, 300),
        flagged in any::<bool>(),
        seq in 1u64..,
    ) {
        // The votes of one batch span at most the u32 milliseconds of its offsets.
        let base = sent.iter().map(|v| v.at_ms).min().unwrap();
        prop_assume!(sent.iter().all(|v| v.at_ms - base <= i64::from(u32::MAX)));
        let frame = batch_frame(seq, AGLIE, &sent);
        let (_, payload) = wire::decode_frame(&frame, Limits::default().frame_bytes_max).unwrap();
        let archive = aligned(payload);
        let rules = BatchRules::new(&Limits::default(), AGLIE, NOW_MS, 15);
        let view = BatchView::validate(&archive, &rules).unwrap();
        prop_assert_eq!(view.seq(), seq);
        let misuse = if flagged { flags[..sent.len()].to_vec() } else { Vec::new() };
        let mut buffer = VoteBuffer::default();
        buffer.append(&view, AGLIE, 42, &misuse, NOW_MS);
        let rows = buffer.finish();
        let bytes = faccia::storage::parquet::encode_parquet(&rows, faccia::storage::parquet::writer_properties("proptest", 1, 1)).unwrap().0;
        let read: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap().build().unwrap().collect::<Result<_, _>>().unwrap();
        let read = arrow::compute::concat_batches(&Arc::clone(&read[0].schema()), &read).unwrap();
        prop_assert_eq!(read.num_rows(), sent.len());
        let municipality = read.column(col::MUNICIPALITY).as_primitive::<UInt32Type>();
        let service = read.column(col::SERVICE).as_primitive::<UInt16Type>();
        let ts = read.column(col::TS).as_primitive::<TimestampMillisecondType>();
        let face = read.column(col::FACE).as_primitive::<Int8Type>();
        let channel = read.column(col::CHANNEL).as_primitive::<UInt8Type>();
        let reason = read.column(col::REASON).as_primitive::<UInt8Type>();
        let terminal = read.column(col::TERMINAL).as_primitive::<UInt32Type>();
        let stored_misuse = read.column(col::MISUSE).as_primitive::<UInt8Type>();
        for (i, vote) in sent.iter().enumerate() {
            prop_assert_eq!((municipality.value(i), terminal.value(i)), (AGLIE.0, 42));
            prop_assert_eq!((service.value(i), ts.value(i)), (vote.service, vote.at_ms));
            prop_assert_eq!((face.value(i), channel.value(i)), (vote.face.score(), vote.channel.code()));
            prop_assert_eq!(reason.is_valid(i).then(|| reason.value(i)), vote.reason.map(Reason::code));
            prop_assert_eq!(stored_misuse.value(i), misuse.get(i).copied().unwrap_or(0));
        }
    }
}
