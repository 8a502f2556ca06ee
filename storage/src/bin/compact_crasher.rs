//! Test helper for the compaction crash tests: fills a volume (or reopens
//! it), deletes every third needle, then compacts while a second thread
//! keeps writing and printing each acknowledged id. Run with
//! `HAYLOFT_FAILPOINT=<step>` to abort the process at that step.
//!
//! Usage: `hayloft-compact-crasher DIR`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hayloft_storage::{
    CompactOptions, Cookie, Durability, NeedleId, NeedleMeta, NeedleWrite, Tier, Volume,
    VolumeConfig, VolumeId,
};

/// The bytes of needle `id` (the test recomputes them).
fn content(id: u64) -> Vec<u8> {
    let len = (id.wrapping_mul(2654435761) % 5000) as usize + 1;
    (0..len)
        .map(|i| (id as usize).wrapping_add(i * 17) as u8)
        .collect()
}

fn write(volume: &Volume, id: u64) -> Result<(), hayloft_storage::Error> {
    volume
        .write(&NeedleWrite {
            id: NeedleId(id),
            cookie: Cookie(id as u32),
            data: &content(id),
            meta: NeedleMeta::default(),
        })
        .map(|_| ())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("missing DIR")?);
    let config = VolumeConfig {
        max_size: 1 << 30,
        durability: Durability::Always,
    };
    let volume = Arc::new(Volume::create(&dir, VolumeId(1), Tier::Hot, "", config)?);
    let mut out = std::io::stdout().lock();
    for id in 1..=3000 {
        write(&volume, id)?;
        writeln!(out, "put {id}")?;
    }
    for id in (1..=3000).step_by(3) {
        volume.delete(NeedleId(id), Cookie(id as u32))?;
        writeln!(out, "del {id}")?;
    }
    out.flush()?;
    drop(out);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let volume = Arc::clone(&volume);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> Result<(), hayloft_storage::Error> {
            let mut id = 10_000;
            while !stop.load(Ordering::Relaxed) {
                write(&volume, id)?;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "put {id}");
                let _ = out.flush();
                if id % 5 == 0 {
                    volume.delete(NeedleId(id - 1), Cookie((id - 1) as u32))?;
                    let _ = writeln!(out, "del {}", id - 1);
                    let _ = out.flush();
                }
                id += 1;
            }
            Ok(())
        })
    };
    let report = volume.compact(&CompactOptions::default())?;
    stop.store(true, Ordering::Relaxed);
    writer.join().map_err(|_| "writer panicked")??;
    println!("compacted {}", report.reclaimed());
    Ok(())
}
