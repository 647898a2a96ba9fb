//! Micro-benchmarks of the ingest path, without the network: encode, validate and read a batch
//! (rkyv); admit it (connection and vote budgets) and decide its misuse flags; append batches
//! to the log with group commit (real fsyncs in a temporary directory); append to the Arrow
//! buffer; flush a buffer to Parquet; and one batch through the server's whole pipeline
//! (validation, dedup, log, acknowledgement, buffer).
//!
//! `cargo bench --bench ingest`; figures go to BENCHMARKS.md with the machine and date.
#![allow(missing_docs, reason = "criterion_main! generates the undocumented main of this bench")]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use faccia::ingest::admission::{Admission, Admit, Attempt, VoteRates};
use faccia::ingest::misuse::{MisuseDetector, MisuseRules};
use faccia::limits::Limits;
use faccia::model::IstatCode;
use faccia::storage::buffer::{self, VoteBuffer};
use faccia::storage::parquet::{encode_parquet, writer_properties};
use faccia::terminal::client::batch_frame;
use faccia::terminal::simulate::VoteSimulator;
use faccia::wire::{ArchiveBuf, BatchRules, BatchView, HEADER_BYTES};

const NOW_MS: i64 = 1_790_000_000_000;
const MUNICIPALITY: IstatCode = IstatCode(1003);

fn archive(votes: usize, seed: u64) -> ArchiveBuf {
    archive_of(&VoteSimulator::new(seed, MUNICIPALITY).votes(NOW_MS, 2_000, votes), 1)
}

fn rules() -> BatchRules {
    BatchRules::new(&Limits::default(), MUNICIPALITY, NOW_MS, 15)
}

fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    let votes = VoteSimulator::new(1, MUNICIPALITY).votes(NOW_MS, 2_000, 64);
    group.throughput(Throughput::Elements(64));
    group.bench_function("encode_64", |b| b.iter(|| batch_frame(black_box(7), MUNICIPALITY, black_box(&votes))));
    let bytes = archive(64, 1);
    let rules = rules();
    group.bench_function("validate_and_read_64", |b| {
        b.iter(|| {
            let view = BatchView::validate(black_box(&bytes), &rules).unwrap();
            view.votes(MUNICIPALITY, 9).fold(0i64, |acc, v| acc + v.at_ms + i64::from(v.face.score()))
        })
    });
    group.bench_function("access_only_64", |b| b.iter(|| BatchView::access(black_box(&bytes)).unwrap().len()));
    group.finish();
}

/// What a batch costs beyond validation: its terminal's vote budget and its misuse flags (for
/// a terminal whose history is full), and a connection attempt's admission.
fn guard(c: &mut Criterion) {
    let mut group = c.benchmark_group("guard");
    group.throughput(Throughput::Elements(64));
    let detector = MisuseDetector::new(MisuseRules::default());
    let mut citizens = VoteSimulator::new(3, MUNICIPALITY);
    let mut seq = 0u64;
    group.bench_function("misuse_flags_64", |b| {
        b.iter_batched(
            || {
                seq += 1;
                let bytes = archive_of(&citizens.next_votes(NOW_MS, 64), seq);
                (seq, bytes)
            },
            |(seq, bytes)| {
                let view = BatchView::access(&bytes).unwrap();
                detector.flags(9, seq, view.votes(MUNICIPALITY, 9)).len()
            },
            BatchSize::SmallInput,
        )
    });
    let rates = VoteRates::new(&Limits { votes_per_terminal_per_minute_max: u32::MAX, ..Limits::default() });
    let mut now_ms = 0u64;
    group.bench_function("vote_budget_64", |b| {
        b.iter(|| {
            now_ms += 1;
            rates.try_take(black_box(9), 64, now_ms).is_ok()
        })
    });
    group.throughput(Throughput::Elements(1));
    let admission = Admission::new(&Limits::default(), 0);
    let attempt = Attempt { remote: "192.0.2.1:4000".parse().unwrap(), can_retry: false, open: 0 };
    group.bench_function("admit_connection", |b| {
        b.iter(|| {
            now_ms += 1;
            matches!(admission.admit(black_box(attempt), now_ms), Admit::Accept(_))
        })
    });
    group.finish();
}

fn archive_of(votes: &[faccia::terminal::client::TerminalVote], seq: u64) -> ArchiveBuf {
    let frame = batch_frame(seq, MUNICIPALITY, votes);
    let mut archive = ArchiveBuf::with_capacity(frame.len());
    archive.extend_from_slice(&frame[HEADER_BYTES..]);
    archive
}

fn buffer(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    let bytes = archive(64, 2);
    group.throughput(Throughput::Elements(64 * 1024));
    group.bench_function("buffer_append_1024x64", |b| {
        b.iter_batched(
            || VoteBuffer::with_capacity(64 * 1024),
            |mut buffer| {
                let view = BatchView::access(&bytes).unwrap();
                for _ in 0..1024 {
                    buffer.append(&view, MUNICIPALITY, 9, &[], 0);
                }
                buffer
            },
            BatchSize::LargeInput,
        )
    });
    let mut buffer = VoteBuffer::default();
    for seed in 0..2048u64 {
        let bytes = archive(64, seed);
        buffer.append(&BatchView::access(&bytes).unwrap(), IstatCode(1000 + (seed % 300) as u32), seed as u32, &[], 0);
    }
    let rows = buffer.finish();
    group.throughput(Throughput::Elements(rows.num_rows() as u64));
    group.sample_size(10);
    group.bench_function("sort_by_day_131072", |b| b.iter(|| buffer::partition_by_day(std::slice::from_ref(&rows)).unwrap().len()));
    let parts = buffer::partition_by_day(std::slice::from_ref(&rows)).unwrap();
    group.bench_function("encode_parquet_131072", |b| {
        b.iter(|| parts.values().map(|p| encode_parquet(p, writer_properties("bench", 1, 2)).unwrap().0.len()).sum::<usize>())
    });
    group.finish();
}

/// Submits `count` batches of `archive` for terminal `terminal` to a log writer and waits for
/// every acknowledgement: all are queued before the writer looks, so they share fsyncs.
fn append_group(
    requests: &crossbeam_channel::Sender<faccia::storage::wal::AppendRequest>,
    sequences: &faccia::storage::dedup::Sequences,
    archive: &ArchiveBuf,
    terminal: u32,
    first_seq: u64,
    count: u64,
) {
    let mut acks = Vec::with_capacity(count as usize);
    for seq in first_seq..first_seq + count {
        let faccia::storage::dedup::Begin::New(guard) = sequences.begin(terminal, seq) else { panic!("new batch") };
        let (durable, ack) = tokio::sync::oneshot::channel();
        let mut copy = ArchiveBuf::with_capacity(archive.len());
        copy.extend_from_slice(archive);
        let request = faccia::storage::wal::AppendRequest {
            terminal,
            municipality: MUNICIPALITY,
            seq,
            received_ms: NOW_MS,
            archive: copy,
            misuse: Vec::new(),
            guard,
            durable,
        };
        requests.send(request).unwrap();
        acks.push(ack);
    }
    for ack in acks {
        ack.blocking_recv().unwrap().unwrap();
    }
}

fn log(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal");
    group.sample_size(20);
    let dir = tempfile::tempdir().unwrap();
    let sequences = Arc::new(faccia::storage::dedup::Sequences::default());
    let (requests, receiver) = crossbeam_channel::unbounded();
    let (store, durable) = crossbeam_channel::unbounded();
    let config = faccia::storage::wal::WriterConfig {
        dir: dir.path().to_path_buf(),
        next_lsn: 1,
        segment_bytes: 64 << 20,
        group_bytes_max: 4 << 20,
        faults: Arc::default(),
    };
    let metrics = Arc::new(faccia::metrics::Metrics::new());
    let writer = faccia::storage::wal::start_writer(config, receiver, store, Arc::clone(&sequences), metrics).unwrap();
    let bytes = archive(64, 3);
    let mut seq = 1;
    for group_size in [1u64, 64, 256] {
        group.throughput(Throughput::Elements(group_size * 64));
        group.bench_function(format!("append_fsync_group_of_{group_size}x64"), |b| {
            b.iter(|| {
                // A fresh terminal id per iteration keeps every batch new for the dedup window.
                append_group(&requests, &sequences, &bytes, seq as u32, 1, group_size);
                seq += 1;
                durable.try_iter().count()
            })
        });
    }
    drop(requests);
    writer.join().unwrap();
    group.finish();
}

/// One batch through the pipeline the server runs for it, minus QUIC: validation against the
/// rules, the dedup window, the log (with fsync), the acknowledgement and the Arrow buffer.
fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(20);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(faccia::metrics::Metrics::new());
    let config = faccia::storage::engine::EngineConfig::new(dir.path().to_path_buf(), faccia::limits::StorageLimits::default());
    let engine = runtime.block_on(faccia::storage::engine::Engine::open(config, metrics)).unwrap();
    let now = faccia::clock::now_ms();
    let bytes = {
        let mut citizens = VoteSimulator::new(4, MUNICIPALITY);
        let frame = batch_frame(1, MUNICIPALITY, &citizens.votes(now, 2_000, 64));
        let mut archive = ArchiveBuf::with_capacity(frame.len());
        archive.extend_from_slice(&frame[HEADER_BYTES..]);
        archive
    };
    let rules = BatchRules::new(&Limits::default(), MUNICIPALITY, now, 15);
    let mut terminal = 0u32;
    group.throughput(Throughput::Elements(64 * 128));
    group.bench_function("validate_dedup_log_ack_buffer_128x64", |b| {
        b.iter(|| {
            terminal += 1;
            let acks: Vec<_> = (1..=128u64)
                .map(|seq| {
                    let mut copy = ArchiveBuf::with_capacity(bytes.len());
                    copy.extend_from_slice(&bytes);
                    let view = BatchView::validate(&copy, &rules).unwrap();
                    let _ = view.seq();
                    let faccia::storage::dedup::Begin::New(guard) = engine.sequences.begin(terminal, seq) else { panic!("new batch") };
                    let (durable, ack) = tokio::sync::oneshot::channel();
                    let request = faccia::storage::wal::AppendRequest {
                        terminal,
                        municipality: MUNICIPALITY,
                        seq,
                        received_ms: now,
                        archive: copy,
                        misuse: Vec::new(),
                        guard,
                        durable,
                    };
                    engine.submit_durable(request).unwrap();
                    ack
                })
                .collect();
            for ack in acks {
                ack.blocking_recv().unwrap().unwrap();
            }
        })
    });
    group.finish();
    runtime.block_on(engine.shutdown());
}

criterion_group!(benches, wire, guard, buffer, log, pipeline);
criterion_main!(benches);
