//! The protocol pinned: round trips of every message, the archived layouts byte by byte as
//! `schemas/protocol.md` gives them, and properties over damaged and random bytes.

use super::messages::archive;
use super::*;
use crate::limits::Limits;
use crate::model::{Face, IstatCode, Reason, Vote};

fn rules() -> BatchRules {
    BatchRules::new(&Limits::default(), IstatCode(1003), 1_700_000_000_000, 15)
}

fn batch(votes: Vec<VoteV1>) -> BatchV1 {
    BatchV1 { seq: 7, base_ms: 1_700_000_000_000 - 5_000, municipality: 1003, votes }
}

fn vote(face: u8, reason: u8) -> VoteV1 {
    VoteV1 { offset_ms: 1_000, service: 3, face, channel: 0, reason }
}

#[test]
fn batch_round_trips_in_place() {
    let bytes = encode_batch(&batch(vec![vote(2, 0), vote(0, 1)]));
    let view = BatchView::validate(&bytes, &rules()).unwrap();
    assert_eq!((view.seq(), view.len()), (7, 2));
    let votes: Vec<Vote> = view.votes(IstatCode(1003), 42).collect();
    assert_eq!(votes[0].face, Face::Positive);
    assert_eq!(votes[1].reason, Some(Reason::WaitingTime));
    assert_eq!(votes[1].at_ms, 1_700_000_000_000 - 4_000);
    assert_eq!(votes[1].terminal, 42);
}

#[test]
fn archived_layout_matches_the_specification() {
    // schemas/protocol.md: a vote is 12 bytes, the batch root 32 bytes at the end of the
    // archive, votes first. A change here is a protocol change: bump VERSION.
    assert_eq!(std::mem::size_of::<ArchivedVoteV1>(), 12);
    assert_eq!(std::mem::size_of::<ArchivedBatchV1>(), 32);
    assert_eq!(std::mem::align_of::<ArchivedBatchV1>(), 8);
    let bytes = encode_batch(&batch(vec![vote(2, 0)]));
    assert_eq!(bytes.len(), 12 + 4 + 32, "one vote, 4 bytes of padding, the root");
    let root = &bytes[16..];
    assert_eq!(u64::from_le_bytes(root[0..8].try_into().unwrap()), 7, "seq at +0");
    assert_eq!(i64::from_le_bytes(root[8..16].try_into().unwrap()), 1_700_000_000_000 - 5_000, "base_ms at +8");
    assert_eq!(u32::from_le_bytes(root[16..20].try_into().unwrap()), 1003, "municipality at +16");
    let offset = i32::from_le_bytes(root[20..24].try_into().unwrap());
    assert_eq!(16 + 20 + offset as i64, 0, "votes pointer is relative to its own position");
    assert_eq!(u32::from_le_bytes(root[24..28].try_into().unwrap()), 1, "votes length at +24");
    assert_eq!(&bytes[0..9], &[0xe8, 0x03, 0, 0, 3, 0, 2, 0, 0], "offset_ms, service, face, channel, reason");
}

#[test]
fn control_message_layouts_match_the_specification() {
    assert_eq!((std::mem::size_of::<ArchivedHelloV1>(), std::mem::align_of::<ArchivedHelloV1>()), (44, 4));
    assert_eq!((std::mem::size_of::<ArchivedHelloReplyV1>(), std::mem::align_of::<ArchivedHelloReplyV1>()), (32, 8));
    assert_eq!((std::mem::size_of::<ArchivedBatchReplyV1>(), std::mem::align_of::<ArchivedBatchReplyV1>()), (24, 8));
    let hello = HelloV1 { terminal: 258, secret: [0xab; 32], client: b"vendor/2.1".to_vec() };
    let bytes = archive(&hello);
    assert_eq!(bytes.len(), 12 + 44, "10 client bytes padded to 12, then the root");
    assert_eq!(&bytes[..10], b"vendor/2.1");
    let root = &bytes[12..];
    assert_eq!(u32::from_le_bytes(root[0..4].try_into().unwrap()), 258);
    assert_eq!(&root[4..36], &[0xab; 32]);
    assert_eq!(i32::from_le_bytes(root[36..40].try_into().unwrap()), -(12 + 36));
    assert_eq!(u32::from_le_bytes(root[40..44].try_into().unwrap()), 10);
    let reply = BatchReplyV1 { seq: 5, status: 2, code: 12, message: b"x".to_vec() };
    let bytes = archive(&reply);
    let root = &bytes[bytes.len() - 24..];
    assert_eq!(u64::from_le_bytes(root[0..8].try_into().unwrap()), 5);
    assert_eq!((root[8], u16::from_le_bytes([root[10], root[11]])), (2, 12));
    assert_eq!(u32::from_le_bytes(root[16..20].try_into().unwrap()), 1, "message length at +16");
}

#[test]
fn header_round_trip_and_limits() {
    let header = FrameHeader { kind: FrameKind::Batch, payload_bytes: 100 };
    assert_eq!(FrameHeader::decode(&header.encode(), 100), Ok(header));
    let too_big = FrameHeader::decode(&header.encode(), 99).unwrap_err();
    assert_eq!(too_big.code, ErrorCode::FrameTooLarge);
    assert!(too_big.message.contains("frame_bytes_max = 99"));
    let mut bad = header.encode();
    bad[0] = b'X';
    assert_eq!(FrameHeader::decode(&bad, 100).unwrap_err().code, ErrorCode::MalformedFrame);
    let mut bad = header.encode();
    bad[2] = 9;
    assert_eq!(FrameHeader::decode(&bad, 100).unwrap_err().code, ErrorCode::UnsupportedVersion);
    let mut bad = header.encode();
    bad[3] = 0x7f;
    assert_eq!(FrameHeader::decode(&bad, 100).unwrap_err().code, ErrorCode::MalformedFrame);
}

#[test]
fn each_bad_value_gets_its_code() {
    let check = |b: BatchV1| BatchView::validate(&encode_batch(&b), &rules()).map(|_| ()).unwrap_err();
    assert_eq!(check(batch(vec![])).code, ErrorCode::EmptyBatch);
    assert_eq!(check(BatchV1 { seq: 0, ..batch(vec![vote(2, 0)]) }).code, ErrorCode::BadSequence);
    assert_eq!(check(BatchV1 { municipality: 1004, ..batch(vec![vote(2, 0)]) }).code, ErrorCode::WrongMunicipality);
    let face = check(batch(vec![vote(2, 0), vote(3, 0)]));
    assert_eq!(face.code, ErrorCode::FieldOutOfRange);
    assert!(face.message.contains("votes[1].face = 3"), "{}", face.message);
    assert!(check(batch(vec![VoteV1 { channel: 9, ..vote(2, 0) }])).message.contains("channel"));
    assert!(check(batch(vec![VoteV1 { service: 16, ..vote(2, 0) }])).message.contains("service"));
    assert!(check(batch(vec![VoteV1 { service: 0, ..vote(2, 0) }])).message.contains("service"));
    assert!(check(batch(vec![vote(0, 5)])).message.contains("reason"));
    assert!(check(batch(vec![vote(2, 1)])).message.contains("other than negative"));
    let many = batch(vec![vote(2, 0); 4097]);
    assert_eq!(check(many).code, ErrorCode::TooManyVotes);
}

#[test]
fn implausible_timestamps_are_clock_faults_never_refusals_nor_overflows() {
    // Protocol § "Clocks": a batch is never refused for a vote's time; the rules only say which
    // votes are clock faults. Extreme base times (found by the `batch` fuzz target when they
    // were refused: i64::MIN overflowed the age) are faults, not panics.
    let rules = rules();
    for (base_ms, offset_ms) in [(i64::MIN, 0), (i64::MAX, u32::MAX), (1_700_000_000_000 + 3_600_000, 0), (1_600_000_000_000, 0)] {
        let b = BatchV1 { base_ms, ..batch(vec![VoteV1 { offset_ms, ..vote(2, 0) }]) };
        let bytes = encode_batch(&b);
        let view = BatchView::validate(&bytes, &rules).expect("a batch is never refused for its times");
        let at_ms = view.votes(IstatCode(1003), 1).next().unwrap().at_ms;
        assert!(rules.clock_fault(at_ms), "{base_ms} + {offset_ms}");
    }
    // The edges: exactly future_skew_ms ahead and past_age_ms behind are plausible.
    assert!(!rules.clock_fault(rules.now_ms + rules.future_skew_ms));
    assert!(rules.clock_fault(rules.now_ms + rules.future_skew_ms + 1));
    assert!(!rules.clock_fault(rules.now_ms - rules.past_age_ms));
    assert!(rules.clock_fault(rules.now_ms - rules.past_age_ms - 1));
}

#[test]
fn hello_reply_v2_is_the_v1_reply_after_the_server_clock() {
    // schemas/protocol.md, "Hello reply, protocol 2": root 40 bytes, alignment 8, the server's
    // clock at +0 and the protocol 1 root at +8, so a protocol 1 parser reads it from the end.
    assert_eq!((std::mem::size_of::<ArchivedHelloReplyV2>(), std::mem::align_of::<ArchivedHelloReplyV2>()), (40, 8));
    let v1 = HelloReplyV1 {
        last_seq: 9,
        municipality: 1003,
        batch_votes_max: 4096,
        streams_max: 64,
        status: 2,
        code: 5,
        message: b"no".to_vec(),
    };
    let reply = HelloReplyV2 { server_time_ms: 1_790_000_000_123, reply: v1.clone() };
    let framed = encode_hello_reply_v2(&reply);
    let (header, payload) = decode_frame(&framed, 4096).unwrap();
    assert_eq!(header.kind, FrameKind::HelloReply);
    let mut aligned = ArchiveBuf::new();
    aligned.extend_from_slice(payload);
    let root = &payload[payload.len() - 40..];
    assert_eq!(i64::from_le_bytes(root[0..8].try_into().unwrap()), 1_790_000_000_123, "server_time_ms at +0");
    assert_eq!(u64::from_le_bytes(root[8..16].try_into().unwrap()), 9, "last_seq at +8");
    assert_eq!(u32::from_le_bytes(root[16..20].try_into().unwrap()), 1003, "municipality at +16");
    assert_eq!((root[28], u16::from_le_bytes([root[30], root[31]])), (2, 5), "status at +28, code at +30");
    assert_eq!(u32::from_le_bytes(root[36..40].try_into().unwrap()), 2, "message length at +36");
    assert_eq!(read_hello_reply_v2(&aligned).unwrap(), reply);
    assert_eq!(read_hello_reply(&aligned).unwrap(), v1, "a protocol 1 terminal reads the same reply");
    // An accepted reply with an empty message is exactly the 40-byte root, its empty vector
    // pointing back at the payload's start (−32), as protocol.md and the fuzz seed give it.
    let accepted = HelloReplyV1 { status: 0, code: 0, message: Vec::new(), ..v1 };
    let framed = encode_hello_reply_v2(&HelloReplyV2 { server_time_ms: 1_790_000_000_000, reply: accepted });
    assert_eq!(framed.len(), 8 + 40);
    assert_eq!(i32::from_le_bytes(framed[8 + 32..8 + 36].try_into().unwrap()), -32);
}

#[test]
fn garbage_is_a_malformed_archive_not_a_panic() {
    let mut bytes = encode_batch(&batch(vec![vote(2, 0); 3]));
    let len = bytes.len();
    // Point the votes vector outside the buffer.
    bytes.as_mut_slice()[len - 12..len - 8].copy_from_slice(&(-4096i32).to_le_bytes());
    assert_eq!(BatchView::access(&bytes).map(|_| ()).unwrap_err().code, ErrorCode::MalformedArchive);
    let mut short = ArchiveBuf::new();
    short.extend_from_slice(&[1, 2, 3]);
    assert_eq!(BatchView::access(&short).map(|_| ()).unwrap_err().code, ErrorCode::MalformedArchive);
}

#[test]
fn replies_round_trip() {
    let reply = BatchReplyV1 { seq: 9, status: Status::Duplicate as u8, code: 12, message: b"votes[1].face".to_vec() };
    let bytes = encode_batch_reply(&reply);
    let header = FrameHeader::decode(bytes[..8].try_into().unwrap(), 1024).unwrap();
    assert_eq!(header.kind, FrameKind::BatchReply);
    let mut payload = ArchiveBuf::new();
    payload.extend_from_slice(&bytes[8..]);
    assert_eq!(read_batch_reply(&payload).unwrap(), reply);
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
    }
}

/// Property tests: encode → validate → read round trips, and damaged or random bytes are
/// refused with an error, never a panic. proptest prints the failing case and its seed.
mod properties {
    use super::*;
    use proptest::prelude::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn valid_vote() -> impl Strategy<Value = VoteV1> {
        (0u32..600_000, 1u16..=15, 0u8..=2, 0u8..=2, 0u8..=4).prop_map(|(offset_ms, service, face, channel, reason)| VoteV1 {
            offset_ms,
            service,
            face,
            channel,
            reason: if face == 0 { reason } else { 0 },
        })
    }

    /// Batches that every rule accepts: votes between 30 days and 0 ms old.
    fn valid_batch() -> impl Strategy<Value = BatchV1> {
        (1u64.., -30 * 86_400_000i64..-600_000, prop::collection::vec(valid_vote(), 1..=300)).prop_map(|(seq, age_ms, votes)| BatchV1 {
            seq,
            base_ms: NOW_MS + age_ms,
            municipality: 1003,
            votes,
        })
    }

    fn aligned(bytes: &[u8]) -> ArchiveBuf {
        let mut buf = ArchiveBuf::with_capacity(bytes.len());
        buf.extend_from_slice(bytes);
        buf
    }

    fn within_rules(vote: &Vote, rules: &BatchRules) -> bool {
        (1..=rules.service_id_max).contains(&vote.service)
            && (vote.reason.is_none() || vote.face == Face::Negative)
            && vote.municipality == rules.municipality
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn valid_batches_round_trip_through_a_frame(batch in valid_batch()) {
            let rules = BatchRules { now_ms: NOW_MS, ..rules() };
            let framed = frame(FrameKind::Batch, &encode_batch(&batch));
            let (header, payload) = decode_frame(&framed, Limits::default().frame_bytes_max).unwrap();
            prop_assert_eq!(header.kind, FrameKind::Batch);
            let payload = aligned(payload);
            let view = BatchView::validate(&payload, &rules).unwrap();
            prop_assert_eq!((view.seq(), view.base_ms(), view.len()), (batch.seq, batch.base_ms, batch.votes.len()));
            for (read, sent) in view.votes(IstatCode(1003), 5).zip(&batch.votes) {
                prop_assert_eq!(read.at_ms, batch.base_ms + i64::from(sent.offset_ms));
                let codes = (read.service, read.face.code(), read.channel.code(), read.reason.map_or(0, Reason::code));
                prop_assert_eq!(codes, (sent.service, sent.face, sent.channel, sent.reason));
                prop_assert_eq!((read.terminal, read.municipality), (5, IstatCode(1003)));
            }
        }

        #[test]
        fn damaged_batches_are_refused_or_keep_every_rule(
            batch in valid_batch(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let rules = BatchRules { now_ms: NOW_MS, ..rules() };
            let mut bytes = encode_batch(&batch).to_vec();
            for (at, mask) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            match BatchView::validate(&aligned(&bytes), &rules) {
                Ok(view) => {
                    for vote in view.votes(rules.municipality, 1) {
                        prop_assert!(within_rules(&vote, &rules), "{vote:?} passed validation");
                    }
                }
                Err(rejection) => prop_assert!(!rejection.message.is_empty()),
            }
        }

        #[test]
        fn control_messages_round_trip(
            terminal in any::<u32>(),
            secret in any::<[u8; 32]>(),
            client in prop::collection::vec(any::<u8>(), 0..=CLIENT_NAME_BYTES_MAX),
            seq in any::<u64>(),
            status in 0u8..4,
            code in any::<u16>(),
            message in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let read = |framed: Vec<u8>| {
                let (header, payload) = decode_frame(&framed, 4096).unwrap();
                (header.kind, aligned(payload))
            };
            let hello = HelloV1 { terminal, secret, client };
            let (kind, payload) = read(encode_hello(&hello));
            let Ok(Message::Hello(archived)) = read_message(kind, &payload, &rules()) else { panic!("hello reads back") };
            prop_assert_eq!((archived.terminal(), archived.secret, archived.client.as_slice()), (terminal, secret, hello.client.as_slice()));
            let reply = BatchReplyV1 { seq, status, code, message: message.clone() };
            let (kind, payload) = read(encode_batch_reply(&reply));
            let Ok(Message::BatchReply(back)) = read_message(kind, &payload, &rules()) else { panic!("batch reply reads back") };
            prop_assert_eq!(back, reply);
            let reply = HelloReplyV1 { last_seq: seq, municipality: terminal, batch_votes_max: 9, streams_max: 3, status, code, message };
            let (kind, payload) = read(encode_hello_reply(&reply));
            let Ok(Message::HelloReply(back)) = read_message(kind, &payload, &rules()) else { panic!("hello reply reads back") };
            prop_assert_eq!(back, reply);
        }

        #[test]
        fn random_bytes_are_refused_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), kind in 0usize..4) {
            let kinds = [FrameKind::Hello, FrameKind::Batch, FrameKind::HelloReply, FrameKind::BatchReply];
            let _ = decode_frame(&bytes, 512);
            // Random payloads behind a valid header of each kind.
            let payload = aligned(&bytes);
            if let Ok(Message::Batch(view)) = read_message(kinds[kind], &payload, &rules()) {
                for vote in view.votes(IstatCode(1003), 1) {
                    prop_assert!(within_rules(&vote, &rules()), "{vote:?} passed validation");
                }
            }
        }
    }

    #[test]
    fn decode_frame_names_what_is_wrong() {
        let framed = frame(FrameKind::Batch, &[0u8; 16]);
        assert!(decode_frame(&framed, 16).is_ok());
        let short = decode_frame(&framed[..20], 16).unwrap_err();
        assert_eq!(short.code, ErrorCode::MalformedFrame);
        assert!(short.message.contains("cut short"), "{}", short.message);
        let mut long = framed.clone();
        long.push(0);
        assert!(decode_frame(&long, 16).unwrap_err().message.contains("bytes after"));
        assert!(decode_frame(&framed[..5], 16).unwrap_err().message.contains("shorter than its header"));
        assert_eq!(decode_frame(&framed, 15).unwrap_err().code, ErrorCode::FrameTooLarge);
    }
}
