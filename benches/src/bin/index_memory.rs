//! Measures the in-memory index: heap bytes per needle and the time to open
//! a volume of N needles from its index file (default 10 million).
//!
//! `cargo run --release -p hayloft-benches --bin index-memory [-- N]`
//!
//! The volume files are written directly with the format module (writing
//! 10 million needles through the volume would measure the disk, not the
//! index), then opened the normal way. Heap use is counted by a global
//! allocator wrapper, so it includes everything `Volume::open` keeps.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use hayloft_benches::bench_dir;
use hayloft_storage::format::{IndexEntry, IndexHeader, Superblock, encode_needle};
use hayloft_storage::volume::volume_paths;
use hayloft_storage::{
    Cookie, Durability, NeedleId, NeedleMeta, Tier, Volume, VolumeConfig, VolumeId,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged and only
// keeps a count on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let needles: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10_000_000);
    let dir = bench_dir();
    let id = VolumeId(1);
    let (dat, idx, _) = volume_paths(dir.path(), id);
    let first_id = 7u64 << 32;

    let write_start = Instant::now();
    let mut data = BufWriter::with_capacity(8 << 20, File::create(&dat)?);
    let mut index = BufWriter::with_capacity(8 << 20, File::create(&idx)?);
    data.write_all(
        &Superblock {
            volume_id: id,
            created_at: 0,
            // Records without chunk CRCs (flags 0 below): format 1.
            version: hayloft_storage::format::FORMAT_VERSION_1,
        }
        .encode(),
    )?;
    index.write_all(&IndexHeader { volume_id: id }.encode())?;
    let mut offset = hayloft_storage::format::SUPERBLOCK_LEN as u64;
    let mut record = Vec::new();
    let mut entry = Vec::new();
    for n in 0..needles {
        record.clear();
        let needle_id = NeedleId(first_id + n);
        encode_needle(
            &mut record,
            0,
            needle_id,
            Cookie(n as u32),
            &[],
            &NeedleMeta::default(),
        )?;
        data.write_all(&record)?;
        entry.clear();
        IndexEntry {
            needle_id,
            offset,
            record_len: record.len() as u64,
            tombstone: false,
        }
        .encode(&mut entry);
        index.write_all(&entry)?;
        offset += record.len() as u64;
    }
    data.into_inner()?.sync_all()?;
    index.into_inner()?.sync_all()?;
    eprintln!(
        "wrote {needles} needles ({offset} bytes) in {:.1?}",
        write_start.elapsed()
    );

    let config = VolumeConfig {
        max_size: 32 << 30,
        durability: Durability::Always,
    };
    let mut best = f64::MAX;
    for round in 0..3 {
        let before = LIVE.load(Ordering::Relaxed);
        let start = Instant::now();
        let volume = Volume::open(dir.path(), id, Tier::Hot, config)?;
        let elapsed = start.elapsed().as_secs_f64();
        best = best.min(elapsed);
        let heap = LIVE.load(Ordering::Relaxed) - before;
        let stats = volume.stats();
        assert_eq!(stats.needles, needles);
        assert!(volume.recovery_report().is_clean());
        println!(
            "round {round}: open {needles} needles in {elapsed:.3} s; heap held by the volume \
             {heap} bytes = {:.2} bytes/needle (index alone {:.2} bytes/needle)",
            heap as f64 / needles as f64,
            stats.index_memory_bytes as f64 / needles as f64,
        );
    }
    println!("best open time: {best:.3} s");
    Ok(())
}
