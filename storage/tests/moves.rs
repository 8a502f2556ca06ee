//! Tier moves in the storage engine: local moves, the switch to and from
//! cold, and what opening a store does with a move interrupted at each step.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use hayloft_storage::cold::{ColdManifest, MANIFEST_VERSION, cold_paths};
use hayloft_storage::moves::{MoveJob, moving_paths};
use hayloft_storage::volume::volume_paths;
use hayloft_storage::{
    Cookie, Error, Handle, Location, NeedleId, NeedleMeta, Store, StoreConfig, Tier, VolumeConfig,
    VolumeId,
};

const V: VolumeId = VolumeId(7);

fn open(root: &Path) -> Store {
    Store::open(StoreConfig {
        locations: Location::hot_and_warm(root),
        volume: VolumeConfig {
            max_size: 64 << 20,
            ..VolumeConfig::default()
        },
        reserve: hayloft_storage::Reserve::NONE,
    })
    .unwrap()
}

fn data(i: u64) -> Vec<u8> {
    (0..(100 + i * 37)).map(|b| (b as u8) ^ (i as u8)).collect()
}

fn fill(store: &Store, count: u64) {
    store.create_volume(V, Tier::Hot, "c").unwrap();
    for i in 0..count {
        store
            .write(
                V,
                NeedleId(i),
                Cookie(i as u32 + 9),
                &data(i),
                NeedleMeta::default(),
            )
            .unwrap();
    }
}

fn check(store: &Store, count: u64, deleted: &[u64]) {
    let volume = store.volume(V).unwrap();
    for i in 0..count {
        let read = volume.read_verified(NeedleId(i), Cookie(i as u32 + 9));
        if deleted.contains(&i) {
            assert!(read.unwrap_err().is_not_found(), "needle {i}");
        } else {
            assert_eq!(&read.unwrap().data[..], &data(i)[..], "needle {i}");
        }
    }
}

fn read_cold(store: &Store, object: &[u8], i: u64) -> Result<Vec<u8>, Error> {
    let cold = store.cold_volume(V).unwrap();
    let range = cold.locate(NeedleId(i))?;
    let bytes = Bytes::copy_from_slice(&object[range.start as usize..range.end as usize]);
    Ok(cold
        .decode(NeedleId(i), Cookie(i as u32 + 9), bytes)?
        .data
        .to_vec())
}

#[test]
fn local_move_copies_verifies_switches_and_deletes_the_source() {
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    fill(&store, 50);
    let progress = AtomicU64::new(0);
    store.move_local(V, Tier::Warm, 0, &progress).unwrap();
    assert!(progress.into_inner() > 0);
    assert_eq!(store.volume(V).unwrap().tier(), Tier::Warm);
    assert!(!volume_paths(&root.path().join("hot"), V).0.exists());
    check(&store, 50, &[]);
    // Sealed by the move; deletes still work on the new copy.
    store.delete(V, NeedleId(3), Cookie(12)).unwrap();
    drop(store);
    let store = open(root.path());
    assert_eq!(store.volume(V).unwrap().tier(), Tier::Warm);
    check(&store, 50, &[3]);
}

#[test]
fn interrupted_local_moves_roll_back_before_the_rename_and_finish_after() {
    // Crash during the copy: the partial copy goes, the source stays.
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    fill(&store, 20);
    drop(store);
    let (hot, warm) = (root.path().join("hot"), root.path().join("warm"));
    std::fs::write(moving_paths(&warm, V).0, b"partial copy").unwrap();
    std::fs::copy(volume_paths(&hot, V).1, volume_paths(&warm, V).1).unwrap();
    let job = MoveJob::Local {
        volume: V.0,
        from: hot.clone(),
        to: warm.clone(),
        to_tier: Tier::Warm,
    };
    job.store().unwrap();
    let store = open(root.path());
    assert_eq!(store.volume(V).unwrap().tier(), Tier::Hot);
    assert!(!moving_paths(&warm, V).0.exists());
    assert!(!volume_paths(&warm, V).1.exists());
    assert!(!MoveJob::path(&hot, V).exists());
    check(&store, 20, &[]);
    drop(store);

    // Crash after the rename of the data file (the commit): the source goes.
    let (dat, idx, meta) = volume_paths(&hot, V);
    let (wdat, widx, wmeta) = volume_paths(&warm, V);
    std::fs::copy(&dat, &wdat).unwrap();
    std::fs::copy(&idx, &widx).unwrap();
    std::fs::copy(&meta, &wmeta).unwrap();
    job.store().unwrap();
    let store = open(root.path());
    assert_eq!(store.volume(V).unwrap().tier(), Tier::Warm);
    assert!(!dat.exists() && !idx.exists() && !meta.exists());
    check(&store, 20, &[]);
}

fn to_cold(store: &Store, root: &Path) -> Vec<u8> {
    let volume = store.volume(V).unwrap();
    volume.seal().unwrap();
    let object = std::fs::read(volume_paths(volume.dir(), V).0).unwrap();
    let job = MoveJob::ToCold {
        volume: V.0,
        dir: root.join("hot"),
        bucket: "b".into(),
        key: "k".into(),
        storage_class: "STANDARD".into(),
        part_size: 5 << 20,
        object_len: object.len() as u64,
        upload_id: Some("u".into()),
        parts: Vec::new(),
    };
    job.store().unwrap();
    let manifest = ColdManifest {
        version: MANIFEST_VERSION,
        bucket: "b".into(),
        key: "k".into(),
        storage_class: "STANDARD".into(),
        object_len: object.len() as u64,
        etag: "e".into(),
        part_size: 5 << 20,
        uploaded_at: 1,
        expires_at: None,
    };
    store.commit_to_cold(V, &manifest, &job).unwrap();
    object
}

#[test]
fn cold_round_trip_keeps_deletes_made_before_during_and_after() {
    let root = tempfile::tempdir().unwrap();
    let hot = root.path().join("hot");
    let store = open(root.path());
    fill(&store, 40);
    store.delete(V, NeedleId(1), Cookie(10)).unwrap();
    let object = to_cold(&store, root.path());
    assert!(matches!(store.handle(V).unwrap(), Handle::Cold(_)));
    assert!(!volume_paths(&hot, V).0.exists(), "local data file removed");
    assert!(!MoveJob::path(&hot, V).exists());
    assert_eq!(read_cold(&store, &object, 5).unwrap(), data(5));
    assert!(read_cold(&store, &object, 1).unwrap_err().is_not_found());
    // A wrong cookie is refused.
    let cold = store.cold_volume(V).unwrap();
    let range = cold.locate(NeedleId(6)).unwrap();
    let bytes = Bytes::copy_from_slice(&object[range.start as usize..range.end as usize]);
    assert!(matches!(
        cold.decode(NeedleId(6), Cookie(1), bytes.clone()),
        Err(Error::WrongCookie { .. })
    ));
    // A flipped bit is an error, never data.
    let mut bad = bytes.to_vec();
    bad[40] ^= 1;
    assert!(matches!(
        cold.decode(NeedleId(6), Cookie(15), Bytes::from(bad)),
        Err(Error::Corrupt { .. })
    ));
    cold.delete(NeedleId(2)).unwrap();
    drop(cold);
    drop(store);

    // Reopening reads only local files.
    let store = open(root.path());
    assert!(read_cold(&store, &object, 2).unwrap_err().is_not_found());
    assert_eq!(read_cold(&store, &object, 39).unwrap(), data(39));
    assert_eq!(store.stats()[0].tier, Tier::Cold);

    // Back: the download lands as .dat.moving, then the switch.
    std::fs::write(moving_paths(&hot, V).0, &object).unwrap();
    store.commit_from_cold(V).unwrap();
    assert!(!cold_paths(&hot, V).0.exists());
    check(&store, 40, &[1, 2]);
    assert_eq!(store.volume(V).unwrap().tier(), Tier::Hot);
    store
        .move_local(V, Tier::Warm, 0, &AtomicU64::new(0))
        .unwrap();
    assert_eq!(store.volume(V).unwrap().tier(), Tier::Warm);
    check(&store, 40, &[1, 2]);
    drop(store);
    let store = open(root.path());
    check(&store, 40, &[1, 2]);
}

#[test]
fn interrupted_moves_to_and_from_cold_settle_on_open() {
    let root = tempfile::tempdir().unwrap();
    let hot = root.path().join("hot");
    let store = open(root.path());
    fill(&store, 10);
    store.volume(V).unwrap().seal().unwrap();
    let dat = std::fs::read(volume_paths(&hot, V).0).unwrap();
    drop(store);

    // Upload under way: the job is kept for the server to resume.
    let job = MoveJob::ToCold {
        volume: V.0,
        dir: hot.clone(),
        bucket: "b".into(),
        key: "k".into(),
        storage_class: "GLACIER".into(),
        part_size: 5 << 20,
        object_len: dat.len() as u64,
        upload_id: None,
        parts: Vec::new(),
    };
    job.store().unwrap();
    let store = open(root.path());
    assert_eq!(store.take_pending_moves(), vec![job.clone()]);
    check(&store, 10, &[]);

    // Switched (manifest written) but the data file not yet deleted.
    let object = to_cold(&store, root.path());
    drop(store);
    std::fs::write(volume_paths(&hot, V).0, &object).unwrap();
    job.store().unwrap();
    let store = open(root.path());
    assert!(matches!(store.handle(V).unwrap(), Handle::Cold(_)));
    assert!(!volume_paths(&hot, V).0.exists());
    assert!(store.take_pending_moves().is_empty());
    drop(store);

    // Back from cold, crashed after the download's rename but before the
    // manifest went: rolled back to cold.
    std::fs::write(volume_paths(&hot, V).0, &object).unwrap();
    let back = MoveJob::FromCold {
        keep_object: false,
        volume: V.0,
        dir: hot.clone(),
        bucket: "b".into(),
        key: "k".into(),
        committed: false,
    };
    back.store().unwrap();
    let store = open(root.path());
    assert!(matches!(store.handle(V).unwrap(), Handle::Cold(_)));
    assert!(!volume_paths(&hot, V).0.exists());
    assert_eq!(read_cold(&store, &object, 4).unwrap(), data(4));
}

#[test]
fn sharing_a_cold_object_refuses_a_copy_with_needles_it_lacks() {
    // Two copies of one volume; the first goes cold (the object is its data
    // file as uploaded), the second shares that object.
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(root_a.path()), open(root_b.path()));
    fill(&a, 30);
    fill(&b, 30);
    // Deleted on b only before the share, on a only after it went cold.
    b.delete(V, NeedleId(2), Cookie(11)).unwrap();
    let object = to_cold(&a, root_a.path());
    let cold_a = a.cold_volume(V).unwrap();
    cold_a.delete(NeedleId(3)).unwrap();
    let (manifest, cidx, tomb) = cold_paths(cold_a.dir(), V);
    let manifest = ColdManifest::load(&manifest).unwrap();
    let index = std::fs::read(&cidx).unwrap();
    let tombstones = hayloft_storage::cold::read_tomb_file(&tomb).unwrap();

    // A needle only b has: refused, b's copy unchanged and still served.
    b.write(
        V,
        NeedleId(99),
        Cookie(108),
        &data(99),
        NeedleMeta::default(),
    )
    .unwrap();
    let err = b.adopt_cold(V, &manifest, &index, &tombstones).unwrap_err();
    assert!(matches!(err, Error::Diverged(_)), "{err}");
    assert!(matches!(b.handle(V).unwrap(), Handle::Local(_)));
    assert!(!cold_paths(&root_b.path().join("hot"), V).0.exists());
    check(&b, 30, &[2]);

    // Once that needle is deleted there too, the share goes through.
    b.delete(V, NeedleId(99), Cookie(108)).unwrap();
    b.adopt_cold(V, &manifest, &index, &tombstones).unwrap();
    let hot_b = root_b.path().join("hot");
    assert!(!volume_paths(&hot_b, V).0.exists(), "b's data file is gone");
    for store in [b, open(root_b.path())] {
        assert!(matches!(store.handle(V).unwrap(), Handle::Cold(_)));
        for i in 0..30 {
            let read = read_cold(&store, &object, i);
            if [2, 3].contains(&i) {
                assert!(read.unwrap_err().is_not_found(), "needle {i} stays deleted");
            } else {
                assert_eq!(read.unwrap(), data(i), "needle {i}");
            }
        }
        assert!(read_cold(&store, &object, 99).unwrap_err().is_not_found());
    }
}
