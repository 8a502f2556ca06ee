//! Test helper for the crash test: writes needles with `fsync always` from
//! several threads and prints each id to stdout once its write is
//! acknowledged. The test kills it with SIGKILL at a random moment.
//!
//! Usage: `hayloft-crash-writer DIR FIRST_ID THREADS`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use hayloft_storage::{
    Cookie, Durability, NeedleId, NeedleMeta, NeedleWrite, Tier, Volume, VolumeConfig, VolumeId,
};

/// The bytes a needle with this id holds (the test recomputes them).
fn content(id: u64) -> Vec<u8> {
    let len = (id.wrapping_mul(2654435761) % 20_000) as usize + 1;
    (0..len)
        .map(|i| (id as usize).wrapping_add(i * 31) as u8)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("missing DIR")?);
    let first: u64 = args.next().ok_or("missing FIRST_ID")?.parse()?;
    let threads: u64 = args.next().ok_or("missing THREADS")?.parse()?;
    let config = VolumeConfig {
        max_size: 1 << 30,
        durability: Durability::Always,
    };
    let id = VolumeId(1);
    let volume = match Volume::open(&dir, id, Tier::Hot, config) {
        Ok(v) => v,
        Err(_) => Volume::create(&dir, id, Tier::Hot, "", config)?,
    };
    let volume = Arc::new(volume);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let volume = Arc::clone(&volume);
            std::thread::spawn(move || -> Result<(), hayloft_storage::Error> {
                let mut needle = first + t;
                loop {
                    let data = content(needle);
                    let meta = NeedleMeta {
                        content_type: "application/octet-stream".into(),
                        ..NeedleMeta::default()
                    };
                    let cookie = Cookie(needle as u32 ^ 0xabcd);
                    if t == 0 {
                        // One thread streams in small chunks, so that kills
                        // also land in the middle of a record.
                        let mut writer = volume.begin_write(
                            NeedleId(needle),
                            cookie,
                            data.len() as u64,
                            meta,
                        )?;
                        for chunk in data.chunks(1024) {
                            writer.write(chunk)?;
                        }
                        writer.finish()?;
                    } else {
                        volume.write(&NeedleWrite {
                            id: NeedleId(needle),
                            cookie,
                            data: &data,
                            meta,
                        })?;
                    }
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{needle}");
                    let _ = out.flush();
                    needle += threads;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().map_err(|_| "writer thread panicked")??;
    }
    Ok(())
}
