//! Measures compaction: its throughput as a ratio of the disk's sequential
//! write bandwidth (measured in the same run), and read latency while it runs
//! compared with idle, including the longest read stall (the swap).
//!
//! `cargo run --release -p hayloft-benches --bin compaction [-- NEEDLES]`
//! (default 20,000 needles of 16 KiB, half of them deleted)

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hayloft_benches::bench_dir;
use hayloft_storage::{
    CompactOptions, Cookie, Durability, NeedleId, NeedleMeta, NeedleWrite, Tier, Volume,
    VolumeConfig, VolumeId,
};

const NEEDLE: usize = 16 << 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Random reads of the live needles from two threads until `stop`.
fn readers(
    volume: &Arc<Volume>,
    live: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Duration>>> {
    (0..2u64)
        .map(|t| {
            let (volume, stop) = (Arc::clone(volume), Arc::clone(stop));
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut n = t * 7919;
                while !stop.load(Ordering::Relaxed) {
                    n = (n + 104_729) % live;
                    let id = n * 2 + 1;
                    let started = Instant::now();
                    let needle = volume.read(NeedleId(id), Cookie(id as u32)).expect("read");
                    std::hint::black_box(needle.data[0]);
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect()
}

fn collect(handles: Vec<std::thread::JoinHandle<Vec<Duration>>>) -> Vec<Duration> {
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("reader"))
        .collect();
    all.sort_unstable();
    all
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let needles: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20_000);
    let dir = bench_dir();
    let config = VolumeConfig {
        max_size: 32 << 30,
        durability: Durability::Never,
    };
    let volume = Arc::new(Volume::create(
        dir.path(),
        VolumeId(1),
        Tier::Hot,
        "",
        config,
    )?);
    let blob = vec![0x5Au8; NEEDLE];
    for id in 0..needles {
        volume.write(&NeedleWrite {
            id: NeedleId(id),
            cookie: Cookie(id as u32),
            data: &blob,
            meta: NeedleMeta::default(),
        })?;
    }
    for id in (0..needles).step_by(2) {
        volume.delete(NeedleId(id), Cookie(id as u32))?;
    }
    volume.sync_now()?;
    let live_bytes = volume.stats().live_bytes;

    // The disk's sequential write bandwidth for the same number of bytes.
    let baseline_path = dir.path().join("sequential");
    let started = Instant::now();
    {
        let mut file =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&baseline_path)?);
        let chunk = vec![0xA5u8; 1 << 20];
        let mut left = live_bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        file.into_inner()?.sync_all()?;
    }
    let sequential = live_bytes as f64 / started.elapsed().as_secs_f64();
    std::fs::remove_file(&baseline_path)?;

    // Idle read latency.
    let live = needles / 2;
    let stop = Arc::new(AtomicBool::new(false));
    let handles = readers(&volume, live, &stop);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let idle = collect(handles);

    // Read latency during an unthrottled compaction.
    let stop = Arc::new(AtomicBool::new(false));
    let handles = readers(&volume, live, &stop);
    let started = Instant::now();
    let report = volume.compact(&CompactOptions::default())?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let busy = collect(handles);
    let throughput = live_bytes as f64 / elapsed.as_secs_f64();

    let mib = |bytes: f64| bytes / (1 << 20) as f64;
    println!(
        "volume: {needles} needles of 16 KiB, half deleted; {:.0} MiB live",
        mib(live_bytes as f64)
    );
    println!(
        "sequential write + fsync of the same bytes: {:.0} MiB/s",
        mib(sequential)
    );
    println!(
        "compaction: {:.2} s, {:.0} MiB/s = {:.2}x the sequential bandwidth; reclaimed {:.0} MiB; writers paused {:?}",
        elapsed.as_secs_f64(),
        mib(throughput),
        throughput / sequential,
        mib(report.reclaimed() as f64),
        report.writer_pause,
    );
    for (label, latencies) in [("idle", &idle), ("during compaction", &busy)] {
        println!(
            "reads {label}: {} reads, p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
            latencies.len(),
            percentile(latencies, 0.50),
            percentile(latencies, 0.99),
            percentile(latencies, 0.999),
            latencies.last().copied().unwrap_or_default(),
        );
    }
    println!(
        "read p99 during compaction / idle: {:.2}x; longest read during compaction (includes the swap): {:?}",
        percentile(&busy, 0.99).as_secs_f64() / percentile(&idle, 0.99).as_secs_f64().max(1e-9),
        busy.last().copied().unwrap_or_default(),
    );
    Ok(())
}
