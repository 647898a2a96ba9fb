//! Micro-benchmarks of the ingest path, without the network: encode, validate and read a batch
//! (rkyv), append it to the Arrow buffer, and flush a buffer to Parquet.
//!
//! `cargo bench --bench ingest`; figures go to BENCHMARKS.md with the machine and date.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use faccia::limits::Limits;
use faccia::model::IstatCode;
use faccia::simulate::VoteSimulator;
use faccia::store::{self, VoteBuffer};
use faccia::terminal::batch_frame;
use faccia::wire::{ArchiveBuf, BatchRules, BatchView, HEADER_BYTES};

const NOW_MS: i64 = 1_790_000_000_000;
const MUNICIPALITY: IstatCode = IstatCode(1003);

fn archive(votes: usize, seed: u64) -> ArchiveBuf {
    let mut citizens = VoteSimulator::new(seed, MUNICIPALITY);
    let frame = batch_frame(1, MUNICIPALITY, &citizens.votes(NOW_MS, 2_000, votes));
    let mut archive = ArchiveBuf::with_capacity(frame.len());
    archive.extend_from_slice(&frame[HEADER_BYTES..]);
    archive
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
                    buffer.append(&view, MUNICIPALITY, 9, &[]);
                }
                buffer
            },
            BatchSize::LargeInput,
        )
    });
    let mut buffer = VoteBuffer::default();
    for seed in 0..2048u64 {
        let bytes = archive(64, seed);
        buffer.append(&BatchView::access(&bytes).unwrap(), IstatCode(1000 + (seed % 300) as u32), seed as u32, &[]);
    }
    let rows = buffer.finish();
    group.throughput(Throughput::Elements(rows.num_rows() as u64));
    group.sample_size(10);
    group.bench_function("sort_and_encode_parquet_131072", |b| {
        b.iter(|| {
            let parts = store::partition_by_day(std::slice::from_ref(&rows)).unwrap();
            parts.values().map(|p| store::encode_parquet(p, store::writer_properties("bench", 1, 2)).unwrap().len()).sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, wire, buffer);
criterion_main!(benches);
