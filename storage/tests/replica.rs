//! What copies of a volume compare and exchange: needle states, range
//! digests, tombstones kept for good, needles copied byte for byte.

#![allow(clippy::unwrap_used)] // test helpers may panic on setup failures

use std::sync::Arc;

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

fn meta(id: u64) -> NeedleMeta {
    NeedleMeta {
        content_type: "image/jpeg".into(),
        file_name: format!("{id}.jpg"),
        last_modified: 1_700_000_000 + id,
        expires_at: None,
    }
}

fn blob(id: u64) -> Vec<u8> {
    let len = (id.wrapping_mul(2654435761) % 3000) as usize + 1;
    (0..len)
        .map(|i| (id as usize).wrapping_add(i * 7) as u8)
        .collect()
}

fn put(volume: &Volume, id: u64) {
    volume
        .write(&NeedleWrite {
            id: NeedleId(id),
            cookie: Cookie(id as u32 ^ 0xabcd),
            data: &blob(id),
            meta: meta(id),
        })
        .unwrap();
}

fn cookie(id: u64) -> Cookie {
    Cookie(id as u32 ^ 0xabcd)
}

/// Copies every needle and tombstone `from` has and `to` lacks.
fn sync(from: &Volume, to: &Arc<Volume>) {
    let theirs = from.needle_states(NeedleId(0), NeedleId(u64::MAX));
    for state in theirs {
        if state.deleted {
            to.delete_copied(state.id, state.cookie).unwrap();
        } else if !to.is_deleted(state.id) && to.read(state.id, state.cookie).is_err() {
            let needle = from.read_for_copy(state.id, state.cookie).unwrap();
            let mut writer = to
                .begin_copy(
                    state.id,
                    state.cookie,
                    needle.data.len() as u64,
                    needle.meta,
                )
                .unwrap();
            writer.write(&needle.data).unwrap();
            let receipt = writer.finish().unwrap();
            assert_eq!(receipt.checksum, needle.checksum, "same record bytes");
        }
    }
}

#[test]
fn copies_written_in_any_order_have_equal_digests() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Volume::create(a_dir.path(), VID, Tier::Hot, "", config()).unwrap();
    let b = Volume::create(b_dir.path(), VID, Tier::Hot, "", config()).unwrap();
    for id in 0..500 {
        put(&a, id);
    }
    for id in (0..500).rev() {
        put(&b, id);
    }
    for id in (0..500).step_by(7) {
        a.delete(NeedleId(id), cookie(id)).unwrap();
        b.delete(NeedleId(id), cookie(id)).unwrap();
    }
    assert_eq!(a.range_digests(6), b.range_digests(6));
    assert_eq!(a.range_digests(6).len(), 500usize.div_ceil(64));
    // One more delete on one side changes exactly one range.
    a.delete(NeedleId(130), cookie(130)).unwrap();
    let (da, db) = (a.range_digests(6), b.range_digests(6));
    let differing: Vec<_> = da.iter().zip(&db).filter(|(x, y)| x != y).collect();
    assert_eq!(differing.len(), 1);
    assert_eq!(differing[0].0.start, NeedleId(128));
}

#[test]
fn tombstones_survive_compaction_and_reopen_and_refuse_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Volume::create(dir.path(), VID, Tier::Hot, "", config()).unwrap();
    for id in 0..300 {
        put(&volume, id);
    }
    for id in 0..200 {
        volume.delete(NeedleId(id), cookie(id)).unwrap();
    }
    let before = volume.needle_states(NeedleId(0), NeedleId(300));
    assert_eq!(before.iter().filter(|s| s.deleted).count(), 200);
    volume.compact(&CompactOptions::default()).unwrap();
    assert_eq!(
        volume.stats().garbage_bytes,
        0,
        "tombstones are not garbage"
    );
    assert_eq!(volume.needle_states(NeedleId(0), NeedleId(300)), before);
    volume.close().unwrap();
    drop(volume);
    let volume = Volume::open(dir.path(), VID, Tier::Hot, config()).unwrap();
    assert_eq!(volume.needle_states(NeedleId(0), NeedleId(300)), before);
    // A deleted id is never written again.
    let error = volume
        .write(&NeedleWrite {
            id: NeedleId(5),
            cookie: cookie(5),
            data: b"again",
            meta: NeedleMeta::default(),
        })
        .unwrap_err();
    assert!(matches!(error, Error::NeedleDeleted { .. }), "{error}");
    // A second compaction keeps them too, and reclaims nothing more.
    volume.compact(&CompactOptions::default()).unwrap();
    assert_eq!(volume.needle_states(NeedleId(0), NeedleId(300)), before);
}

#[test]
fn a_copy_catches_up_needles_and_tombstones_and_never_resurrects() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Arc::new(Volume::create(a_dir.path(), VID, Tier::Hot, "", config()).unwrap());
    let b = Arc::new(Volume::create(b_dir.path(), VID, Tier::Hot, "", config()).unwrap());
    // Both had 0..100; b was away while a took 100..200 and deleted 0..50.
    for id in 0..100 {
        put(&a, id);
        put(&b, id);
    }
    for id in 100..200 {
        put(&a, id);
    }
    for id in 0..50 {
        a.delete(NeedleId(id), cookie(id)).unwrap();
    }
    // a, meanwhile, compacted: the deleted needles' bytes are gone, their
    // tombstones are not.
    a.compact(&CompactOptions::default()).unwrap();
    // b is sealed (full) by now: copies still go in.
    b.seal().unwrap();
    sync(&a, &b);
    sync(&b, &a);
    assert_eq!(a.range_digests(5), b.range_digests(5));
    for id in 0..50 {
        assert!(
            b.read(NeedleId(id), cookie(id)).is_err(),
            "{id} stays deleted"
        );
    }
    for id in 50..200 {
        let needle = b.read(NeedleId(id), cookie(id)).unwrap();
        assert_eq!(needle.data.as_ref(), blob(id).as_slice());
        assert_eq!(needle.meta, meta(id));
    }
    // A tombstone for a needle b never had is stored all the same.
    assert!(b.delete_copied(NeedleId(9999), Cookie(1)).unwrap());
    assert!(b.is_deleted(NeedleId(9999)));
    assert!(!b.delete_copied(NeedleId(9999), Cookie(1)).unwrap());
    // And a copy cannot bring a deleted needle back.
    let refused = b.begin_copy(NeedleId(3), cookie(3), 3, NeedleMeta::default());
    assert!(matches!(refused, Err(Error::NeedleDeleted { .. })));
}

#[test]
fn read_for_copy_verifies_the_checksum_and_ignores_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Volume::create(dir.path(), VID, Tier::Hot, "", config()).unwrap();
    volume
        .write(&NeedleWrite {
            id: NeedleId(1),
            cookie: Cookie(1),
            data: b"expired already",
            meta: NeedleMeta {
                expires_at: Some(1),
                ..NeedleMeta::default()
            },
        })
        .unwrap();
    assert!(volume.read(NeedleId(1), Cookie(1)).is_err());
    let copied = volume.read_for_copy(NeedleId(1), Cookie(1)).unwrap();
    assert_eq!(copied.data.as_ref(), b"expired already");
    assert_eq!(copied.meta.expires_at, Some(1));
}

/// A copy's log lists its writes and tombstones in the order they became
/// durable, from any position, with each needle's cookie and length; a
/// compaction rewrites it (another log id).
#[test]
fn the_log_lists_writes_and_tombstones_in_order_from_any_position() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Volume::create(dir.path(), VID, Tier::Hot, "", config()).unwrap();
    for id in [5, 3, 9] {
        put(&volume, id);
    }
    volume.delete(NeedleId(3), cookie(3)).unwrap();
    put(&volume, 7);
    let log = volume.read_log(0, 100).unwrap();
    assert_eq!(log.total, 5);
    let seen: Vec<(u64, bool)> = log.entries.iter().map(|e| (e.id.0, e.deleted)).collect();
    assert_eq!(
        seen,
        [(5, false), (3, false), (9, false), (3, true), (7, false)]
    );
    for entry in &log.entries {
        assert_eq!(entry.cookie, cookie(entry.id.0));
        let len = if entry.deleted {
            0
        } else {
            blob(entry.id.0).len() as u64
        };
        assert_eq!(entry.data_len, len);
    }
    assert!(volume.holds(NeedleId(5)) && !volume.holds(NeedleId(3)) && !volume.holds(NeedleId(4)));

    let tail = volume.read_log(3, 1).unwrap();
    assert_eq!(tail.entries, log.entries[3..4]);
    assert_eq!((tail.total, tail.log_id), (5, log.log_id));
    assert!(volume.read_log(5, 10).unwrap().entries.is_empty());
    assert!(volume.read_log(99, 10).unwrap().entries.is_empty());

    volume.seal().unwrap();
    volume.compact(&CompactOptions::default()).unwrap();
    let compacted = volume.read_log(0, 100).unwrap();
    assert_ne!(
        compacted.log_id, log.log_id,
        "a compaction starts another log"
    );
    let live: Vec<u64> = compacted
        .entries
        .iter()
        .filter(|e| !e.deleted)
        .map(|e| e.id.0)
        .collect();
    assert_eq!(live.len(), 3);
    assert!(!live.contains(&3));
}
