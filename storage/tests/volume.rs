//! Behaviour of one volume: reads, writes, deletes, bad input, corruption and
//! recovery.
//!
//! Why one file of ~790 lines: 20 tests of one volume's behaviour (reads,
//! writes, deletes, bad input, corruption, recovery) over one set of helpers;
//! splitting would duplicate them.

#![allow(clippy::unwrap_used)] // test helpers may panic on setup failures

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hayloft_storage::volume::{NEVER_SYNC_EVERY, volume_paths};
use hayloft_storage::{
    Cookie, Durability, Error, NeedleId, NeedleMeta, NeedleWrite, Queued, QueuedWrite, Tier,
    Volume, VolumeConfig, VolumeId, Wake,
};

const VID: VolumeId = VolumeId(7);

fn config() -> VolumeConfig {
    VolumeConfig {
        max_size: 64 << 20,
        durability: Durability::Always,
    }
}

fn create(dir: &Path) -> Volume {
    Volume::create(dir, VID, Tier::Hot, "photos", config()).expect("create volume")
}

fn reopen(dir: &Path) -> Volume {
    Volume::open(dir, VID, Tier::Hot, config()).expect("reopen volume")
}

fn put(volume: &Volume, id: u64, data: &[u8]) {
    volume
        .write(&NeedleWrite {
            id: NeedleId(id),
            cookie: Cookie(id as u32 + 1),
            data,
            meta: NeedleMeta {
                content_type: "image/jpeg".into(),
                file_name: format!("{id}.jpg"),
                last_modified: 1_700_000_000,
                expires_at: None,
            },
        })
        .expect("write");
}

fn get(volume: &Volume, id: u64) -> Result<Vec<u8>, Error> {
    volume
        .read_verified(NeedleId(id), Cookie(id as u32 + 1))
        .map(|n| n.data.to_vec())
}

fn blob(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 ^ id) as u8).collect()
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x20;
    file.write_all_at(&byte, offset).unwrap();
}

#[test]
fn write_read_delete_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    put(&volume, 100, b"hello");
    let needle = volume.read(NeedleId(100), Cookie(101)).unwrap();
    assert_eq!(&needle.data[..], b"hello");
    assert_eq!(needle.meta.content_type, "image/jpeg");
    assert_eq!(needle.meta.file_name, "100.jpg");
    assert_eq!(needle.meta.last_modified, 1_700_000_000);

    volume.delete(NeedleId(100), Cookie(101)).unwrap();
    assert!(matches!(
        volume.read(NeedleId(100), Cookie(101)),
        Err(Error::NeedleNotFound { .. })
    ));
    let stats = volume.stats();
    assert_eq!(stats.needles, 0);
    // The tombstone is kept for good (copies must agree the needle is gone):
    // it counts as live; the deleted record is garbage. (Header 32,
    // metadata 20, record CRC 4, trailer CRC 4 in format 2, padding.)
    assert_eq!(stats.live_bytes, 64);
    assert!(stats.garbage_bytes > 0);
    assert_eq!(volume.collection(), "photos");
}

#[test]
fn wrong_cookie_and_missing_needle_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    put(&volume, 5, b"secret");
    let wrong = volume.read(NeedleId(5), Cookie(999)).unwrap_err();
    assert!(matches!(wrong, Error::WrongCookie { .. }));
    assert!(wrong.is_not_found());
    assert!(matches!(
        volume.read(NeedleId(6), Cookie(7)),
        Err(Error::NeedleNotFound { .. })
    ));
    assert!(matches!(
        volume.delete(NeedleId(5), Cookie(999)),
        Err(Error::WrongCookie { .. })
    ));
    // The failed delete changed nothing.
    assert_eq!(get(&volume, 5).unwrap(), b"secret");
}

#[test]
fn reads_outlive_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    put(&volume, 1, &blob(1, 10_000));
    let needle = volume.read(NeedleId(1), Cookie(2)).unwrap();
    volume.close().unwrap();
    drop(volume);
    std::fs::remove_dir_all(dir.path()).unwrap();
    assert_eq!(&needle.data[..], &blob(1, 10_000)[..]);
}

#[test]
fn everything_survives_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    for id in 0..500 {
        put(&volume, id, &blob(id, id as usize * 7));
    }
    for id in (0..500).step_by(3) {
        volume.delete(NeedleId(id), Cookie(id as u32 + 1)).unwrap();
    }
    let before = volume.stats();
    volume.close().unwrap();
    drop(volume);
    let volume = reopen(dir.path());
    assert!(
        volume.recovery_report().is_clean(),
        "{:?}",
        volume.recovery_report()
    );
    let after = volume.stats();
    assert_eq!(before.needles, after.needles);
    assert_eq!(before.live_bytes, after.live_bytes);
    assert_eq!(before.garbage_bytes, after.garbage_bytes);
    for id in 0..500 {
        if id % 3 == 0 {
            assert!(get(&volume, id).unwrap_err().is_not_found());
        } else {
            assert_eq!(get(&volume, id).unwrap(), blob(id, id as usize * 7));
        }
    }
}

#[test]
fn full_volume_rejects_writes_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let small = VolumeConfig {
        max_size: 64 * 1024,
        durability: Durability::Always,
    };
    let volume = Volume::create(dir.path(), VID, Tier::Hot, "", small).unwrap();
    let mut written = 0;
    let error = loop {
        match volume.write(&NeedleWrite {
            id: NeedleId(written),
            cookie: Cookie(1),
            data: &[7u8; 4000],
            meta: NeedleMeta::default(),
        }) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(error, Error::VolumeFull { .. }), "{error}");
    assert!(written >= 14);
    for id in 0..written {
        assert_eq!(
            volume.read(NeedleId(id), Cookie(1)).unwrap().data.len(),
            4000
        );
    }
}

#[test]
fn sealed_volume_refuses_writes_but_takes_deletes_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    put(&volume, 1, b"kept");
    volume.seal().unwrap();
    let err = volume
        .write(&NeedleWrite {
            id: NeedleId(2),
            cookie: Cookie(3),
            data: b"no",
            meta: NeedleMeta::default(),
        })
        .unwrap_err();
    assert!(matches!(err, Error::Sealed(_)));
    drop(volume);
    let volume = reopen(dir.path());
    assert!(volume.is_sealed());
    assert_eq!(get(&volume, 1).unwrap(), b"kept");
    // Sealing stops new blobs, not deletes: a full volume's blobs can still
    // be deleted (and compaction reclaims them).
    put_err_is_sealed(&volume);
    volume.delete(NeedleId(1), Cookie(2)).unwrap();
    assert!(get(&volume, 1).is_err());
    drop(volume);
    let volume = reopen(dir.path());
    assert!(get(&volume, 1).is_err());
}

fn put_err_is_sealed(volume: &Volume) {
    let err = volume
        .write(&NeedleWrite {
            id: NeedleId(5),
            cookie: Cookie(3),
            data: b"no",
            meta: NeedleMeta::default(),
        })
        .unwrap_err();
    assert!(matches!(err, Error::Sealed(_)));
}

#[test]
fn expired_needles_read_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    for (id, expires_at) in [(1, Some(1)), (2, Some(u64::MAX / 2)), (3, None)] {
        volume
            .write(&NeedleWrite {
                id: NeedleId(id),
                cookie: Cookie(0),
                data: b"x",
                meta: NeedleMeta {
                    expires_at,
                    ..NeedleMeta::default()
                },
            })
            .unwrap();
    }
    assert!(matches!(
        volume.read(NeedleId(1), Cookie(0)),
        Err(Error::Expired { .. })
    ));
    assert!(volume.read(NeedleId(2), Cookie(0)).is_ok());
    assert!(volume.read(NeedleId(3), Cookie(0)).is_ok());
}

#[test]
fn expiry_of_a_volume_is_its_latest_live_needle_and_stays_known_once_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    let write = |id: u64, expires_at: Option<u64>| {
        volume
            .write(&NeedleWrite {
                id: NeedleId(id),
                cookie: Cookie(0),
                data: b"x",
                meta: NeedleMeta {
                    expires_at,
                    ..NeedleMeta::default()
                },
            })
            .unwrap();
    };
    write(1, Some(100));
    write(2, Some(300));
    assert_eq!(volume.expires_at(), Some(300));
    write(3, None);
    assert_eq!(volume.expires_at(), None, "a needle that never expires");
    volume.delete(NeedleId(3), Cookie(0)).unwrap();
    assert_eq!(
        volume.expires_at(),
        Some(300),
        "writable: scanned each time"
    );

    volume.seal().unwrap();
    assert_eq!(volume.expires_at(), Some(300));
    volume.delete(NeedleId(2), Cookie(0)).unwrap();
    // Sealed: the first answer is kept; a delete can only make the truth
    // earlier, so the kept time never lets a volume go before its needles.
    assert_eq!(volume.expires_at(), Some(300));
    drop(volume);
    assert_eq!(reopen(dir.path()).expires_at(), Some(100));
}

#[test]
fn oversized_metadata_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    let err = volume
        .write(&NeedleWrite {
            id: NeedleId(1),
            cookie: Cookie(0),
            data: b"x",
            meta: NeedleMeta {
                file_name: "n".repeat(70_000),
                ..NeedleMeta::default()
            },
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidNeedle(_)), "{err}");
}

#[test]
fn streamed_writes_and_their_failures() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Arc::new(create(dir.path()));
    // Larger than the writeback step (4 MiB), in chunks that do not divide
    // it nor a page: the writeback started along the way covers whole pages.
    let data = blob(9, (9 << 20) + 777);
    let mut writer = volume
        .begin_write(
            NeedleId(9),
            Cookie(10),
            data.len() as u64,
            NeedleMeta::default(),
        )
        .unwrap();
    for chunk in data.chunks(300_001) {
        writer.write(chunk).unwrap();
    }
    let receipt = writer.finish().unwrap();
    assert_eq!(get(&volume, 9).unwrap(), data);
    assert_eq!(
        volume.read(NeedleId(9), Cookie(10)).unwrap().checksum,
        receipt.checksum
    );

    // Too many bytes.
    let mut writer = volume
        .begin_write(NeedleId(10), Cookie(11), 4, NeedleMeta::default())
        .unwrap();
    assert!(matches!(
        writer.write(b"12345"),
        Err(Error::LengthMismatch { .. })
    ));
    drop(writer);
    // Too few bytes.
    let mut writer = volume
        .begin_write(NeedleId(11), Cookie(12), 10, NeedleMeta::default())
        .unwrap();
    writer.write(b"123").unwrap();
    assert!(matches!(writer.finish(), Err(Error::LengthMismatch { .. })));
    // Abandoned mid-way (a client that hung up), after its writeback began:
    // the file is cut back to where the record began.
    let (dat, _, _) = volume_paths(dir.path(), VID);
    let before = std::fs::metadata(&dat).unwrap().len();
    let mut writer = volume
        .begin_write(NeedleId(12), Cookie(13), 6 << 20, NeedleMeta::default())
        .unwrap();
    writer.write(&vec![1u8; 5 << 20]).unwrap();
    drop(writer);
    assert_eq!(std::fs::metadata(&dat).unwrap().len(), before);

    for id in [10, 11, 12] {
        assert!(get(&volume, id).unwrap_err().is_not_found());
    }
    put(&volume, 13, b"after");
    drop(volume);
    let volume = reopen(dir.path());
    assert_eq!(get(&volume, 9).unwrap(), data);
    assert_eq!(get(&volume, 13).unwrap(), b"after");
    assert!(get(&volume, 12).unwrap_err().is_not_found());
}

#[test]
fn concurrent_writers_share_fsyncs_and_all_land() {
    for durability in [
        Durability::Always,
        Durability::Batched(Duration::from_millis(2)),
        Durability::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = VolumeConfig {
            max_size: 64 << 20,
            durability,
        };
        let volume = Arc::new(Volume::create(dir.path(), VID, Tier::Hot, "", config).unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let volume = Arc::clone(&volume);
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        let id = t * 1000 + i;
                        put(&volume, id, &blob(id, 100 + i as usize));
                        // Readable as soon as acknowledged.
                        assert_eq!(get(&volume, id).unwrap(), blob(id, 100 + i as usize));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        volume.close().unwrap();
        drop(volume);
        let volume = Volume::open(dir.path(), VID, Tier::Hot, config).unwrap();
        assert!(volume.recovery_report().is_clean(), "{durability:?}");
        assert_eq!(volume.stats().needles, 800);
    }
}

/// Waits as an async caller would: registers, runs the sync duty if handed
/// one (on its own thread), and registers again when told to lead.
fn wait_queued(volume: &Arc<Volume>, seq: u64) -> Wake {
    loop {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(duty) = volume.when_durable(
            seq,
            Box::new(move |wake| {
                let _ = tx.send(wake);
            }),
        ) {
            std::thread::spawn(move || duty.run());
        }
        match rx.recv().unwrap() {
            Wake::Lead => continue,
            wake => return wake,
        }
    }
}

fn queued(volume: &Volume, id: u64, data: &[u8]) -> Option<QueuedWrite> {
    let claim = volume.claim(NeedleId(id)).unwrap();
    match volume
        .try_write_queued(
            claim,
            &NeedleWrite {
                id: NeedleId(id),
                cookie: Cookie(id as u32 + 1),
                data,
                meta: NeedleMeta::default(),
            },
        )
        .unwrap()
    {
        Queued::Queued(queued) => Some(queued),
        Queued::WouldWait(_) => None,
    }
}

#[test]
fn queued_writes_become_durable_through_waiters_beside_blocking_writers() {
    for durability in [
        Durability::Always,
        Durability::Batched(Duration::from_millis(2)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = VolumeConfig {
            max_size: 64 << 20,
            durability,
        };
        let volume = Arc::new(Volume::create(dir.path(), VID, Tier::Hot, "", config).unwrap());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let volume = Arc::clone(&volume);
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        let id = t * 1000 + i;
                        let data = blob(id, 100 + i as usize);
                        if t % 2 == 0 {
                            put(&volume, id, &data);
                        } else {
                            let q = queued(&volume, id, &data).expect("not held back");
                            assert_eq!(wait_queued(&volume, q.seq), Wake::Durable);
                        }
                        assert_eq!(get(&volume, id).unwrap(), data);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(volume);
        // Dropped without close: every acknowledged write is in the index.
        let volume = Volume::open(dir.path(), VID, Tier::Hot, config).unwrap();
        assert!(volume.recovery_report().is_clean(), "{durability:?}");
        assert_eq!(volume.stats().needles, 800);
    }
}

#[test]
fn a_sync_duty_dropped_unrun_gives_the_role_back() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Arc::new(create(dir.path()));
    let q = queued(&volume, 1, b"one").unwrap();
    // Not readable before its group commit.
    assert!(get(&volume, 1).is_err());
    let (tx, rx) = std::sync::mpsc::channel();
    let duty = volume
        .when_durable(
            q.seq,
            Box::new(move |wake| {
                let _ = tx.send(wake);
            }),
        )
        .expect("nobody else syncs");
    drop(duty);
    assert_eq!(rx.recv().unwrap(), Wake::Lead);
    // A blocking writer can lead now, and its sync covers the queued write.
    put(&volume, 2, b"two");
    assert_eq!(wait_queued(&volume, q.seq), Wake::Durable);
    assert_eq!(get(&volume, 1).unwrap(), b"one");
}

#[test]
fn never_durable_queued_writes_are_acknowledged_at_once_until_the_periodic_sync_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let config = VolumeConfig {
        max_size: 64 << 20,
        durability: Durability::Never,
    };
    let volume = Arc::new(Volume::create(dir.path(), VID, Tier::Hot, "", config).unwrap());
    let q = queued(&volume, 1, b"x").expect("nothing holds writers back");
    // Readable and acknowledged before any fsync, without a sync duty.
    assert_eq!(get(&volume, 1).unwrap(), b"x");
    let (tx, rx) = std::sync::mpsc::channel();
    let duty = volume.when_durable(
        q.seq,
        Box::new(move |wake| {
            let _ = tx.send(wake);
        }),
    );
    assert!(duty.is_none());
    assert_eq!(rx.recv().unwrap(), Wake::Durable);
    // Up to the periodic sync; then the queued path steps aside for the
    // blocking write, which syncs.
    let mut id = 2;
    while let Some(q) = queued(&volume, id, b"y") {
        assert_eq!(wait_queued(&volume, q.seq), Wake::Durable);
        id += 1;
        assert!(id <= NEVER_SYNC_EVERY as u64 + 1, "never refused");
    }
    assert_eq!(id, NEVER_SYNC_EVERY as u64 + 1);
    let (_, idx, _) = volume_paths(dir.path(), VID);
    let indexed_before = std::fs::metadata(&idx).unwrap().len();
    put(&volume, id, b"z");
    assert!(std::fs::metadata(&idx).unwrap().len() > indexed_before);
    assert!(
        queued(&volume, id + 1, b"w").is_some(),
        "synced: queued again"
    );
    drop(volume);
    let volume = Volume::open(dir.path(), VID, Tier::Hot, config).unwrap();
    assert_eq!(volume.stats().needles, id + 1);
}

#[test]
fn queued_writes_are_refused_where_they_cannot_be_cheap() {
    let always = tempfile::tempdir().unwrap();
    let volume = Arc::new(create(always.path()));
    let q = queued(&volume, 1, b"x").unwrap();
    assert_eq!(wait_queued(&volume, q.seq), Wake::Durable);
    volume.delete(NeedleId(1), Cookie(2)).unwrap();
    assert!(matches!(
        volume.claim(NeedleId(1)),
        Err(Error::NeedleDeleted { .. })
    ));
}

#[test]
fn flipped_bits_are_caught_by_verifying_read_scrub_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    for id in 1..=3 {
        put(&volume, id, &blob(id, 5000));
    }
    let victim = volume.read(NeedleId(2), Cookie(3)).unwrap();
    let offset_in_file = {
        let (dat, _, _) = volume_paths(dir.path(), VID);
        let bytes = std::fs::read(&dat).unwrap();
        let pos = bytes
            .windows(5000)
            .position(|w| w == &victim.data[..])
            .unwrap();
        pos as u64 + 1234
    };
    drop(victim);
    volume.close().unwrap();
    drop(volume);
    let (dat, idx, _) = volume_paths(dir.path(), VID);
    flip_byte(&dat, offset_in_file);

    let volume = reopen(dir.path());
    let err = get(&volume, 2).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert_eq!(volume.scrub().corrupt, vec![NeedleId(2)]);
    assert_eq!(get(&volume, 1).unwrap(), blob(1, 5000));
    assert_eq!(get(&volume, 3).unwrap(), blob(3, 5000));
    drop(volume);

    // Without the index file, recovery scans the data file, reports the bad
    // record, skips it, and keeps the ones after it.
    std::fs::remove_file(&idx).unwrap();
    let volume = reopen(dir.path());
    let report = volume.recovery_report();
    assert_eq!(report.index_rebuilt, Some("index file missing"));
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert!(get(&volume, 2).unwrap_err().is_not_found());
    assert_eq!(get(&volume, 1).unwrap(), blob(1, 5000));
    assert_eq!(get(&volume, 3).unwrap(), blob(3, 5000));
}

#[test]
fn torn_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let volume = create(dir.path());
    put(&volume, 1, b"one");
    put(&volume, 2, &blob(2, 3000));
    volume.close().unwrap();
    drop(volume);
    let (dat, idx, _) = volume_paths(dir.path(), VID);
    let full = std::fs::metadata(&dat).unwrap().len();
    // Cut needle 2 in half and forget it was indexed, as a crash before the
    // index append would.
    let file = OpenOptions::new().write(true).open(&dat).unwrap();
    file.set_len(full - 1500).unwrap();
    let idx_len = std::fs::metadata(&idx).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&idx)
        .unwrap()
        .set_len(idx_len - 16)
        .unwrap();

    let volume = reopen(dir.path());
    assert!(volume.recovery_report().torn_tail_bytes > 0);
    assert_eq!(get(&volume, 1).unwrap(), b"one");
    assert!(get(&volume, 2).unwrap_err().is_not_found());
    put(&volume, 3, b"three");
    drop(volume);
    let volume = reopen(dir.path());
    assert!(volume.recovery_report().is_clean());
    assert_eq!(get(&volume, 3).unwrap(), b"three");
}

#[test]
fn garbage_and_truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (dat, idx, _) = volume_paths(dir.path(), VID);
    // A data file that is not a volume.
    std::fs::write(&dat, vec![0xAB; 4096]).unwrap();
    let err = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap_err();
    assert!(matches!(err, Error::BadFile { .. }), "{err}");
    // One too short for a superblock.
    std::fs::write(&dat, b"HLVS").unwrap();
    let err = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap_err();
    assert!(matches!(err, Error::BadFile { .. }), "{err}");
    // A missing volume.
    std::fs::remove_file(&dat).unwrap();
    let err = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    // A garbage index file is rebuilt from the data file.
    let volume = create(dir.path());
    put(&volume, 1, b"x");
    put(&volume, 2, b"y");
    drop(volume);
    std::fs::write(&idx, vec![0x5A; 100]).unwrap();
    let volume = reopen(dir.path());
    assert_eq!(
        volume.recovery_report().index_rebuilt,
        Some("bad index file header")
    );
    assert_eq!(get(&volume, 2).unwrap(), b"y");
    drop(volume);
    // ...and one with a plausible header but entries pointing nowhere too.
    let mut bogus = std::fs::read(&idx).unwrap();
    bogus.extend_from_slice(&[0xFF; 16]);
    std::fs::write(&idx, bogus).unwrap();
    let volume = reopen(dir.path());
    assert!(volume.recovery_report().index_rebuilt.is_some());
    assert_eq!(get(&volume, 1).unwrap(), b"x");
}

#[test]
fn index_memory_stays_under_ten_bytes_a_needle() {
    let dir = tempfile::tempdir().unwrap();
    let config = VolumeConfig {
        max_size: 1 << 30,
        durability: Durability::Never,
    };
    let volume = Volume::create(dir.path(), VID, Tier::Hot, "", config).unwrap();
    for id in 0..200_000u64 {
        volume
            .write(&NeedleWrite {
                id: NeedleId(1 << 32 | id),
                cookie: Cookie(0),
                data: &[],
                meta: NeedleMeta::default(),
            })
            .unwrap();
    }
    let stats = volume.stats();
    assert!(
        stats.index_memory_bytes as f64 / stats.needles as f64 <= 10.0,
        "{stats:?}"
    );
    volume.close().unwrap();
    drop(volume);
    let volume = Volume::open(dir.path(), VID, Tier::Hot, config).unwrap();
    let stats = volume.stats();
    assert_eq!(stats.needles, 200_000);
    // 4 bytes of offset and 2 of record length a needle.
    assert!(
        stats.index_memory_bytes as f64 / stats.needles as f64 <= 6.5,
        "{stats:?}"
    );
}

#[test]
fn a_full_copy_takes_what_the_other_copies_hold_in_its_catch_up_room() {
    let dir = tempfile::tempdir().unwrap();
    let small = VolumeConfig {
        max_size: 64 * 1024,
        durability: Durability::Always,
    };
    let volume = Arc::new(Volume::create(dir.path(), VID, Tier::Hot, "", small).unwrap());
    let blob = |id: u64| NeedleWrite {
        id: NeedleId(id),
        cookie: Cookie(1),
        data: &[7u8; 4000],
        meta: NeedleMeta::default(),
    };
    let mut id = 0;
    while volume.write(&blob(id)).is_ok() {
        id += 1;
    }
    // A new write is refused at the maximum; the same write forwarded by
    // the primary (a claim for a copy) and a needle copied by anti-entropy
    // go in the catch-up room.
    assert!(matches!(
        volume.write(&blob(id)),
        Err(Error::VolumeFull { .. })
    ));
    assert!(!volume.is_sealed());
    let claim = volume.claim_for_copy(NeedleId(id)).unwrap();
    volume.write_claimed(claim, &blob(id)).unwrap();
    // Past the maximum, this copy is full: sealed, so the volume stops
    // taking writes (another forwarded write is refused) while the room
    // still takes what the other copies hold.
    assert!(volume.is_sealed());
    let claim = volume.claim_for_copy(NeedleId(id + 1)).unwrap();
    assert!(matches!(
        volume.write_claimed(claim, &blob(id + 1)),
        Err(Error::Sealed(_))
    ));
    let copy_in = |n: u64| -> Result<(), Error> {
        let mut copy = volume.begin_copy(NeedleId(n), Cookie(1), 4000, NeedleMeta::default())?;
        copy.write(&[7u8; 4000])?;
        copy.finish().map(|_| ())
    };
    copy_in(id + 1).unwrap();
    assert!(volume.data_len() > small.max_size);
    // The room is bounded too.
    let limit = hayloft_storage::volume::catch_up_limit(small.max_size);
    let mut next = id + 2;
    let error = loop {
        match copy_in(next) {
            Ok(()) => next += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(error, Error::VolumeFull { .. }), "{error}");
    assert!(volume.data_len() <= limit);
    drop(volume);
    // And all of it opens again.
    let volume = Volume::open(dir.path(), VID, Tier::Hot, small).unwrap();
    for n in 0..next {
        assert_eq!(
            volume
                .read_verified(NeedleId(n), Cookie(1))
                .unwrap()
                .data
                .len(),
            4000
        );
    }
}
