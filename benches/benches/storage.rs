//! Storage engine benchmarks: hot reads, and appends under each durability
//! mode next to a plain `write` + `fdatasync` loop on the same disk.
//!
//! `cargo bench -p hayloft-benches --bench storage`

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hayloft_benches::bench_dir;
use hayloft_storage::{
    Cookie, Durability, NeedleId, NeedleMeta, NeedleWrite, Tier, Volume, VolumeConfig, VolumeId,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn volume(dir: &std::path::Path, durability: Durability) -> Arc<Volume> {
    let config = VolumeConfig {
        max_size: 32 << 30,
        durability,
    };
    Arc::new(Volume::create(dir, VolumeId(1), Tier::Hot, "", config).expect("create volume"))
}

fn meta() -> NeedleMeta {
    NeedleMeta {
        content_type: "image/jpeg".into(),
        file_name: "photo.jpg".into(),
        last_modified: 1_700_000_000,
        expires_at: None,
    }
}

fn reads(c: &mut Criterion) {
    let dir = bench_dir();
    let volume = volume(dir.path(), Durability::Never);
    let blob = vec![0x5Au8; 4 * KIB];
    let count = 100_000u64;
    for id in 0..count {
        volume
            .write(&NeedleWrite {
                id: NeedleId(id),
                cookie: Cookie(id as u32),
                data: &blob,
                meta: meta(),
            })
            .expect("write");
    }
    volume.sync_now().expect("sync");
    let mut group = c.benchmark_group("read_4KiB");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hot needle (same needle, cached)", |b| {
        b.iter(|| black_box(volume.read(NeedleId(4242), Cookie(4242)).expect("read")))
    });
    let mut next = 0u64;
    group.bench_function("random needle over 400 MiB", |b| {
        b.iter(|| {
            next = (next + 7919) % count;
            black_box(
                volume
                    .read(NeedleId(next), Cookie(next as u32))
                    .expect("read"),
            )
        })
    });
    group.bench_function("random needle, read_verified (plus CRC-32)", |b| {
        b.iter(|| {
            next = (next + 7919) % count;
            black_box(
                volume
                    .read_verified(NeedleId(next), Cookie(next as u32))
                    .expect("read"),
            )
        })
    });
    group.finish();
}

/// `threads` writers append `size`-byte needles; returns the time for `iters` of them.
fn append(
    volume: &Arc<Volume>,
    next_id: &Arc<AtomicU64>,
    size: usize,
    threads: u64,
    iters: u64,
) -> Duration {
    let per_thread = iters.div_ceil(threads);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let volume = Arc::clone(volume);
            let next_id = Arc::clone(next_id);
            scope.spawn(move || {
                let blob = vec![0xA5u8; size];
                for _ in 0..per_thread {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    volume
                        .write(&NeedleWrite {
                            id: NeedleId(id),
                            cookie: Cookie(1),
                            data: &blob,
                            meta: meta(),
                        })
                        .expect("append");
                }
            });
        }
    });
    start.elapsed() * iters as u32 / (per_thread * threads) as u32
}

fn appends(c: &mut Criterion) {
    let modes = [
        ("always", Durability::Always),
        ("batched_2ms", Durability::Batched(Duration::from_millis(2))),
        ("never", Durability::Never),
    ];
    for (size, label, threads) in [(4 * KIB, "4KiB", [1u64, 32]), (MIB, "1MiB", [1, 4])] {
        let mut group = c.benchmark_group(format!("append_{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(4));
        for (mode, durability) in modes {
            for threads in threads {
                // Batched mode with one writer just measures the interval.
                if threads == 1 && matches!(durability, Durability::Batched(_)) {
                    continue;
                }
                let dir = bench_dir();
                let volume = volume(dir.path(), durability);
                let next_id = Arc::new(AtomicU64::new(0));
                group.bench_function(BenchmarkId::new(mode, format!("{threads}_writers")), |b| {
                    b.iter_custom(|iters| append(&volume, &next_id, size, threads, iters))
                });
            }
        }
        // The baseline: what the disk does with the simplest durable loop.
        let dir = bench_dir();
        let mut file = File::create(dir.path().join("baseline")).expect("create baseline file");
        let blob = vec![0xA5u8; size];
        group.bench_function(
            BenchmarkId::new("baseline_write+fdatasync", "1_writer"),
            |b| {
                b.iter(|| {
                    file.write_all(&blob).expect("write");
                    file.sync_data().expect("fdatasync");
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, reads, appends);
criterion_main!(benches);
