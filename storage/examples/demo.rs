//! A tour of the storage engine: opens a store under `./data` (or the
//! directory given), writes a few blobs, reads them back, deletes one,
//! and prints the volume stats. Run it twice: the second run recovers the
//! first run's volume and finds its blobs.
//!
//! `cargo run --release -p hayloft-storage --example demo [DIR]`

use std::path::PathBuf;
use std::time::Instant;

use hayloft_storage::{
    Cookie, Durability, Location, NeedleId, NeedleMeta, Store, StoreConfig, Tier, VolumeConfig,
    VolumeId,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("data"), PathBuf::from);
    let store = Store::open(StoreConfig {
        locations: Location::hot_and_warm(&root),
        volume: VolumeConfig {
            durability: Durability::Always,
            ..VolumeConfig::default()
        },
        reserve: hayloft_storage::Reserve::NONE,
    })?;
    let volume = VolumeId(1);
    if store.volume(volume).is_err() {
        store.create_volume(volume, Tier::Hot, "demo")?;
        println!("created volume {volume} under {}", root.display());
    }
    let base = store.volume(volume)?.stats().needles * 10 + 1_000;
    let blobs: Vec<(NeedleId, Cookie, String)> = (0..5)
        .map(|i| {
            (
                NeedleId(base + i),
                Cookie(rand_cookie(base + i)),
                format!("hello from needle {}", base + i),
            )
        })
        .collect();
    let start = Instant::now();
    for (id, cookie, text) in &blobs {
        let meta = NeedleMeta {
            content_type: "text/plain".into(),
            file_name: format!("{id}.txt"),
            last_modified: 0,
            expires_at: None,
        };
        let receipt = store.write(volume, *id, *cookie, text.as_bytes(), meta)?;
        println!(
            "wrote needle {id} at offset {} ({} bytes, crc {:08x})",
            receipt.offset, receipt.record_len, receipt.checksum
        );
    }
    println!("5 durable writes in {:.1?}", start.elapsed());
    for (id, cookie, text) in &blobs {
        let needle = store.read_verified(volume, *id, *cookie)?;
        assert_eq!(needle.data, text.as_bytes());
        println!(
            "read needle {id}: {:?} ({})",
            String::from_utf8_lossy(&needle.data),
            needle.meta.content_type
        );
    }
    let (id, cookie, _) = &blobs[0];
    store.delete(volume, *id, *cookie)?;
    println!(
        "deleted needle {id}: read now says {:?}",
        store
            .read(volume, *id, *cookie)
            .err()
            .map(|e| e.to_string())
    );
    println!(
        "wrong cookie says {:?}",
        store
            .read(volume, blobs[1].0, Cookie(0))
            .err()
            .map(|e| e.to_string())
    );
    for stats in store.stats() {
        println!(
            "volume {} ({}): {} needles, {} live bytes, {} garbage bytes, {} bytes on disk, index {} bytes",
            stats.id,
            stats.tier,
            stats.needles,
            stats.live_bytes,
            stats.garbage_bytes,
            stats.file_bytes,
            stats.index_memory_bytes
        );
    }
    store.close()?;
    Ok(())
}

fn rand_cookie(seed: u64) -> u32 {
    // A demo needs stable cookies to show reads across runs; real cookies come
    // from the directory's random number generator.
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}
