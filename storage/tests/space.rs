//! The free-space reserve in the storage engine: what a store does with a
//! disk at its reserve. (The whole story, on a real small file system that
//! fills up and frees space again, is `e2e_faults`'s disk-full test.)

#![allow(clippy::unwrap_used)]

use std::path::Path;

use hayloft_storage::{
    COMPACTION_MARGIN, CompactOptions, Cookie, Error, Location, NeedleId, NeedleMeta, Reserve,
    Store, StoreConfig, Tier, VolumeConfig, VolumeId,
};

const V: VolumeId = VolumeId(3);

fn open(root: &Path, reserve: Reserve) -> Store {
    Store::open(StoreConfig {
        locations: Location::hot_and_warm(root),
        volume: VolumeConfig {
            max_size: 64 << 20,
            ..VolumeConfig::default()
        },
        reserve,
    })
    .unwrap()
}

fn write(store: &Store, i: u64) -> Result<(), Error> {
    store
        .write(
            V,
            NeedleId(i),
            Cookie(7),
            &vec![i as u8; 3000],
            NeedleMeta::default(),
        )
        .map(|_| ())
}

/// A reserve no disk can keep: every location is at it.
const ALL: Reserve = Reserve {
    bytes: u64::MAX / 4,
    percent: 0.0,
};

#[test]
fn at_its_reserve_a_disk_takes_deletes_and_compactions_but_no_new_blobs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), Reserve::NONE);
        store.create_volume(V, Tier::Hot, "c").unwrap();
        for i in 0..20 {
            write(&store, i).unwrap();
        }
        assert_eq!(store.volume(V).unwrap().paused(), None);
        store.close().unwrap();
    }

    let store = open(dir.path(), ALL);
    let volume = store.volume(V).unwrap();
    assert!(store.space().iter().all(|s| s.is_low()));
    let paused = volume.paused().unwrap();
    assert!(paused.contains("free-space reserve"), "{paused}");

    // No new blob, whole or streamed, and no new volume.
    let refused = write(&store, 100).unwrap_err();
    assert!(matches!(refused, Error::LowSpace { .. }), "{refused}");
    assert!(refused.to_string().contains("hot"), "{refused}");
    let Err(streamed) = volume.begin_write(NeedleId(101), Cookie(7), 10, NeedleMeta::default())
    else {
        panic!("a streamed write went into the reserve");
    };
    assert!(matches!(streamed, Error::LowSpace { .. }), "{streamed}");
    let created = store
        .create_volume(VolumeId(4), Tier::Hot, "c")
        .unwrap_err();
    assert!(matches!(created, Error::LowSpace { .. }), "{created}");

    // Deletes and a compaction go on; nothing written before is lost.
    for i in 0..10 {
        store.delete(V, NeedleId(i), Cookie(7)).unwrap();
    }
    let report = volume.compact(&CompactOptions::default()).unwrap();
    assert_eq!(report.needles, 10);
    assert!(report.bytes_after < report.bytes_before);
    for i in 10..20 {
        let read = store.read_verified(V, NeedleId(i), Cookie(7)).unwrap();
        assert_eq!(&read.data[..], &vec![i as u8; 3000][..]);
    }
    for i in 0..10 {
        assert!(
            store
                .read(V, NeedleId(i), Cookie(7))
                .unwrap_err()
                .is_not_found()
        );
    }
    store.close().unwrap();
    drop(volume);
    drop(store);

    // With room again, the same volume takes blobs.
    let store = open(dir.path(), Reserve::NONE);
    write(&store, 100).unwrap();
}

#[test]
fn the_reserve_always_covers_compacting_the_largest_volume() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Reserve::NONE);
    store.create_volume(V, Tier::Hot, "c").unwrap();
    store.create_volume(VolumeId(9), Tier::Warm, "c").unwrap();
    for i in 0..50 {
        write(&store, i).unwrap();
    }
    let needs = store.volume(V).unwrap().compaction_needs();
    assert!(needs > 50 * 3000, "{needs}");
    let spaces = store.refresh_space().unwrap();
    // Hot and warm share the temporary directory's file system, and its
    // reserve: the larger volume's compaction.
    for space in &spaces {
        assert_eq!(space.reserved, needs + COMPACTION_MARGIN);
    }
}
