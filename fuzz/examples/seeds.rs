//! Writes the seed corpus (`corpus/batch`, `corpus/frame`): valid messages of every kind and a
//! few that break one rule each, so that the fuzzer starts from inputs that reach deep checks.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (from the repository root).

use std::path::Path;

use faccia_fuzz::wire::{self, BatchReplyV1, BatchV1, FrameKind, HelloReplyV1, HelloV1, VoteV1};
use faccia_fuzz::{MUNICIPALITY, NOW_MS};

fn vote(i: u32) -> VoteV1 {
    let face = (i % 3) as u8;
    VoteV1 {
        offset_ms: i * 7_000,
        service: (i % 15) as u16 + 1,
        face,
        channel: (i % 3) as u8,
        reason: if face == 0 { (i % 5) as u8 } else { 0 },
    }
}

fn batch(seq: u64, votes: u32) -> BatchV1 {
    BatchV1 { seq, base_ms: NOW_MS - 3_600_000, municipality: MUNICIPALITY.0, votes: (0..votes).map(vote).collect() }
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let batches = [
        ("valid-1", batch(1, 1)),
        ("valid-3", batch(2, 3)),
        ("valid-40", batch(77, 40)),
        ("valid-300", batch(u64::MAX, 300)),
        ("empty", batch(3, 0)),
        ("seq-0", batch(0, 2)),
        ("wrong-municipality", BatchV1 { municipality: 1001, ..batch(4, 2) }),
        ("future", BatchV1 { base_ms: NOW_MS + 3_600_000, ..batch(5, 2) }),
        ("too-old", BatchV1 { base_ms: NOW_MS - 40 * 86_400_000, ..batch(6, 2) }),
        ("bad-face", BatchV1 { votes: vec![VoteV1 { face: 3, ..vote(1) }], ..batch(7, 0) }),
        ("reason-on-positive", BatchV1 { votes: vec![VoteV1 { face: 2, reason: 1, ..vote(1) }], ..batch(8, 0) }),
    ];
    std::fs::create_dir_all(root.join("batch"))?;
    std::fs::create_dir_all(root.join("frame"))?;
    for (name, batch) in &batches {
        let archive = wire::encode_batch(batch);
        std::fs::write(root.join("batch").join(name), &archive)?;
        std::fs::write(root.join("frame").join(format!("batch-{name}")), wire::frame(FrameKind::Batch, &archive))?;
    }
    let hello = HelloV1 { terminal: 258, secret: [0xab; 32], client: b"vendor/2.1".to_vec() };
    std::fs::write(root.join("frame/hello"), wire::encode_hello(&hello))?;
    let reply =
        HelloReplyV1 { last_seq: 9, municipality: 1003, batch_votes_max: 4096, streams_max: 64, status: 0, code: 0, message: vec![] };
    std::fs::write(root.join("frame/hello-reply"), wire::encode_hello_reply(&reply))?;
    let v2 = wire::HelloReplyV2 { server_time_ms: 1_790_000_000_000, reply: reply.clone() };
    std::fs::write(root.join("frame/hello-reply-v2"), wire::encode_hello_reply_v2(&v2))?;
    let refused = HelloReplyV1 { status: 2, code: 7, message: b"terminal 9 has been revoked".to_vec(), ..reply };
    std::fs::write(root.join("frame/hello-reply-refused"), wire::encode_hello_reply(&refused))?;
    let stored = BatchReplyV1 { seq: 5, status: 0, code: 0, message: vec![] };
    std::fs::write(root.join("frame/batch-reply"), wire::encode_batch_reply(&stored))?;
    let rejected = BatchReplyV1 { seq: 5, status: 2, code: 12, message: b"votes[1].face = 3 is out of range".to_vec() };
    std::fs::write(root.join("frame/batch-reply-rejected"), wire::encode_batch_reply(&rejected))?;
    let oversized = wire::FrameHeader { kind: FrameKind::Batch, payload_bytes: 1 << 20 }.encode();
    std::fs::write(root.join("frame/oversized-header"), oversized)?;
    Ok(())
}
