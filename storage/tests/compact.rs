//! Online compaction: concurrency, crash at every step, disk space.

#![allow(clippy::unwrap_used)] // test helpers may panic on setup failures

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hayloft_storage::volume::volume_paths;
use hayloft_storage::{
    CompactOptions, Cookie, Durability, Error, NeedleId, NeedleMeta, NeedleWrite, Tier, Volume,
    VolumeConfig, VolumeId,
};

const VID: VolumeId = VolumeId(1);

fn config() -> VolumeConfig {
    VolumeConfig {
        max_size: 1 << 30,
        durability: Durability::Always,
    }
}

fn blob(id: u64) -> Vec<u8> {
    let len = (id.wrapping_mul(2654435761) % 5000) as usize + 1;
    (0..len)
        .map(|i| (id as usize).wrapping_add(i * 17) as u8)
        .collect()
}

fn put(volume: &Volume, id: u64) {
    volume
        .write(&NeedleWrite {
            id: NeedleId(id),
            cookie: Cookie(id as u32),
            data: &blob(id),
            meta: NeedleMeta::default(),
        })
        .unwrap();
}

#[test]
fn compaction_reclaims_space_and_keeps_every_live_needle() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Volume::create(dir.path(), VID, Tier::Hot, "", config()).unwrap();
    for id in 0..2000 {
        put(&volume, id);
    }
    for id in (0..2000).filter(|id| id % 4 != 0) {
        volume.delete(NeedleId(id), Cookie(id as u32)).unwrap();
    }
    let held = volume.read(NeedleId(4), Cookie(4)).unwrap();
    let before = volume.stats();
    let report = volume.compact(&CompactOptions::default()).unwrap();
    let after = volume.stats();
    assert_eq!(after.needles, 500);
    assert_eq!(after.garbage_bytes, 0);
    assert_eq!(report.bytes_before, before.file_bytes);
    assert_eq!(report.bytes_after, after.file_bytes);
    assert!(report.reclaimed() > before.file_bytes / 2, "{report:?}");
    let (dat, _, _) = volume_paths(dir.path(), VID);
    assert_eq!(std::fs::metadata(&dat).unwrap().len(), after.file_bytes);
    // A read taken before the swap still sees its bytes.
    assert_eq!(&held.data[..], &blob(4)[..]);
    for id in 0..2000 {
        let read = volume.read_verified(NeedleId(id), Cookie(id as u32));
        if id % 4 == 0 {
            assert_eq!(&read.unwrap().data[..], &blob(id)[..]);
        } else {
            assert!(read.unwrap_err().is_not_found());
        }
    }
    // Writes go on after the swap, and everything survives a reopen.
    put(&volume, 5000);
    drop(volume);
    let volume = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap();
    assert!(
        volume.recovery_report().is_clean(),
        "{:?}",
        volume.recovery_report()
    );
    assert_eq!(volume.stats().needles, 501);
    assert_eq!(
        &volume.read(NeedleId(5000), Cookie(5000)).unwrap().data[..],
        &blob(5000)[..]
    );
    assert!(
        volume
            .read(NeedleId(1), Cookie(1))
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn compaction_under_concurrent_writes_deletes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Arc::new(Volume::create(dir.path(), VID, Tier::Hot, "", config()).unwrap());
    for id in 0..3000 {
        put(&volume, id);
    }
    for id in (0..3000).step_by(2) {
        volume.delete(NeedleId(id), Cookie(id as u32)).unwrap();
    }
    let garbage_before = volume.stats().garbage_bytes;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(100_000));
    let read_errors = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    // Writers (some streamed), which also delete some of their own needles.
    for t in 0..3 {
        let (volume, stop, next) = (Arc::clone(&volume), Arc::clone(&stop), Arc::clone(&next));
        threads.push(std::thread::spawn(move || {
            let mut live = Vec::new();
            let mut deleted = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if t == 0 && id % 3 == 0 {
                    let data = blob(id);
                    let mut writer = volume
                        .begin_write(
                            NeedleId(id),
                            Cookie(id as u32),
                            data.len() as u64,
                            NeedleMeta::default(),
                        )
                        .unwrap();
                    for chunk in data.chunks(512) {
                        writer.write(chunk).unwrap();
                    }
                    writer.finish().unwrap();
                } else {
                    put(&volume, id);
                }
                if id % 7 == 0 {
                    volume.delete(NeedleId(id), Cookie(id as u32)).unwrap();
                    deleted.push(id);
                } else {
                    live.push(id);
                }
            }
            (live, deleted)
        }));
    }
    // Readers of the needles that live throughout.
    for _ in 0..2 {
        let (volume, stop, errors) = (
            Arc::clone(&volume),
            Arc::clone(&stop),
            Arc::clone(&read_errors),
        );
        threads.push(std::thread::spawn(move || {
            let mut id = 1;
            while !stop.load(Ordering::Relaxed) {
                match volume.read(NeedleId(id), Cookie(id as u32)) {
                    Ok(needle) if needle.data == blob(id) => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                id = (id + 2) % 3000;
            }
            (Vec::new(), Vec::new())
        }));
    }
    std::thread::sleep(Duration::from_millis(50));
    let report = volume
        .compact(&CompactOptions {
            bytes_per_sec: Some(20 << 20),
            ..CompactOptions::default()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let mut live = Vec::new();
    let mut deleted = Vec::new();
    for thread in threads {
        let (l, d) = thread.join().unwrap();
        live.extend(l);
        deleted.extend(d);
    }
    assert_eq!(
        read_errors.load(Ordering::Relaxed),
        0,
        "a read failed or returned wrong bytes"
    );
    // The file may have grown (writers kept appending), but the garbage of the
    // snapshot (half the needles) is gone: what garbage is left is at most
    // the records the writers deleted meanwhile (tombstones are kept, and
    // count as live).
    assert!(report.needles >= 1500, "{report:?}");
    let meta_len = NeedleMeta::default().encoded_len();
    let deleted_by_writers: u64 = deleted
        .iter()
        .map(|id| hayloft_storage::format::record_len(blob(*id).len() as u64, meta_len, true))
        .sum();
    let garbage_after = volume.stats().garbage_bytes;
    assert!(
        garbage_after <= deleted_by_writers && garbage_before > 0,
        "{garbage_after} bytes of garbage after, {deleted_by_writers} deleted by writers, \
         {garbage_before} before: {report:?}"
    );
    assert!(!live.is_empty());
    let check = |volume: &Volume| {
        for id in live.iter().copied().chain((1..3000).step_by(2)) {
            let needle = volume
                .read_verified(NeedleId(id), Cookie(id as u32))
                .unwrap_or_else(|e| panic!("needle {id} lost: {e}"));
            assert_eq!(needle.data, blob(id));
        }
        for id in deleted.iter().copied().chain((0..3000).step_by(2)) {
            assert!(
                volume.read(NeedleId(id), Cookie(id as u32)).is_err(),
                "needle {id} resurrected"
            );
        }
    };
    check(&volume);
    drop(volume);
    let volume = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap();
    check(&volume);
}

#[test]
fn not_enough_space_is_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Volume::create(dir.path(), VID, Tier::Hot, "", config()).unwrap();
    for id in 0..100 {
        put(&volume, id);
    }
    for id in 0..50 {
        volume.delete(NeedleId(id), Cookie(id as u32)).unwrap();
    }
    let before = volume.stats();
    let (dat, _, _) = volume_paths(dir.path(), VID);
    let bytes = std::fs::read(&dat).unwrap();
    let err = volume
        .compact(&CompactOptions {
            min_free_after: u64::MAX / 4,
            ..CompactOptions::default()
        })
        .unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert_eq!(volume.stats(), before);
    assert_eq!(std::fs::read(&dat).unwrap(), bytes);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        3,
        "no temp files left"
    );
    assert!(!volume.is_compacting());
    // The volume still works, and a later compaction with room succeeds.
    put(&volume, 1000);
    volume.compact(&CompactOptions::default()).unwrap();
    assert_eq!(volume.stats().needles, 51);
}

/// Runs the crasher with a failpoint; returns the ids it acknowledged as
/// written and as deleted.
fn run_crasher(dir: &std::path::Path, failpoint: &str) -> (HashSet<u64>, HashSet<u64>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hayloft-compact-crasher"))
        .arg(dir)
        .env("HAYLOFT_FAILPOINT", failpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut put = HashSet::new();
    let mut deleted = HashSet::new();
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(id) = line.strip_prefix("put ") {
            put.insert(id.parse().unwrap());
        } else if let Some(id) = line.strip_prefix("del ") {
            deleted.insert(id.parse().unwrap());
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "{failpoint}: the crasher should have aborted"
    );
    (put, deleted)
}

#[test]
fn a_crash_at_any_step_leaves_every_live_needle_and_no_deleted_one() {
    for failpoint in [
        "compact-after-copy",
        "compact-after-catch-up",
        "compact-before-swap",
        "compact-after-index-rename",
        "compact-after-data-rename",
        "compact-done",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (put, deleted) = run_crasher(dir.path(), failpoint);
        let live: HashSet<u64> = put.difference(&deleted).copied().collect();
        let volume = Volume::open(dir.path(), VID, Tier::Hot, config())
            .unwrap_or_else(|e| panic!("{failpoint}: volume does not open: {e}"));
        for id in &live {
            let needle = volume
                .read_verified(NeedleId(*id), Cookie(*id as u32))
                .unwrap_or_else(|e| panic!("{failpoint}: needle {id} lost: {e}"));
            assert_eq!(needle.data, blob(*id), "{failpoint}: needle {id}");
        }
        for id in &deleted {
            assert!(
                volume.read(NeedleId(*id), Cookie(*id as u32)).is_err(),
                "{failpoint}: deleted needle {id} resurrected"
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".cpd") || n.ends_with(".cpx"))
            .collect();
        assert!(leftovers.is_empty(), "{failpoint}: {leftovers:?}");
        // A compaction after the crash completes.
        volume.compact(&CompactOptions::default()).unwrap();
        let counts: HashMap<_, _> = [("live", volume.stats().needles)].into();
        assert!(counts["live"] as usize >= live.len(), "{failpoint}");
    }
}
