//! A real sealed volume encoded, shards lost and corrupted, every needle
//! read back byte for byte.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::Error;
use crate::format::NeedleMeta;
use crate::meta::VolumeMeta;
use crate::sealed::read_index_file;
use crate::throttle::Throttle;
use crate::types::{Cookie, NeedleId, Tier, VolumeId};
use crate::volume::{Durability, NeedleWrite, Volume, VolumeConfig, volume_paths};

const VOLUME: VolumeId = VolumeId(7);

/// Writes `sizes` blobs (contents derived from their index), seals the
/// volume, and returns the blobs.
fn sealed_volume(dir: &Path, sizes: &[usize]) -> Vec<(NeedleId, Cookie, Vec<u8>)> {
    let config = VolumeConfig {
        max_size: 1 << 30,
        durability: Durability::Never,
    };
    let volume = Volume::create(dir, VOLUME, Tier::Warm, "photos", config).unwrap();
    let mut blobs = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let id = NeedleId(i as u64 + 1);
        let cookie = Cookie(0xC0 + i as u32);
        let data: Vec<u8> = (0..size).map(|b| (b * 7 + i * 13) as u8).collect();
        volume
            .write(&NeedleWrite {
                id,
                cookie,
                data: &data,
                meta: NeedleMeta::default(),
            })
            .unwrap();
        blobs.push((id, cookie, data));
    }
    volume.seal().unwrap();
    volume.close().unwrap();
    blobs
}

/// Encodes the sealed volume in `src` and installs it, with every shard,
/// in `dst`.
fn encode(src: &Path, dst: &Path, code: Code, max_block: u64) -> EcVolume {
    let (dat, idx, meta) = volume_paths(src, VOLUME);
    let data_len = std::fs::metadata(&dat).unwrap().len();
    let layout = Layout::plan(code, data_len, max_block);
    let digests = encode_to_dir(&dat, VOLUME, layout, dst, &mut Throttle::new(0)).unwrap();
    let entries = read_index_file(&idx, VOLUME).unwrap();
    let meta = VolumeMeta::load(&meta).unwrap().unwrap();
    EcVolume::install(
        dst,
        VOLUME,
        &EcManifest::new(layout, digests),
        &entries,
        &meta,
        &[],
    )
    .unwrap();
    EcVolume::open(dst, VOLUME).unwrap()
}

/// Reads a needle from the shards held, restoring pieces of the shards in
/// `lost` from the others.
fn read(volume: &EcVolume, id: NeedleId, cookie: Cookie, lost: &[u8]) -> crate::Result<Vec<u8>> {
    let located = volume.locate(id)?;
    let mut record = Vec::new();
    for piece in located.pieces {
        let bytes = match volume.read_piece(piece)? {
            Some(bytes) if !lost.contains(&piece.shard) => bytes,
            _ => {
                let range = piece.widened();
                let have: BTreeMap<u8, Vec<u8>> = volume
                    .held()
                    .into_iter()
                    .filter(|s| !lost.contains(s) && *s != piece.shard)
                    .map(|s| {
                        let file = volume.shard(s).unwrap();
                        (s, file.read(range.start, range.end - range.start).unwrap())
                    })
                    .collect();
                restore_piece(volume.layout(), piece, &have)?
            }
        };
        record.extend_from_slice(&bytes);
    }
    Ok(volume
        .decode(id, cookie, Bytes::from(record))?
        .data
        .to_vec())
}

#[test]
fn every_needle_reads_back_from_its_shard_and_with_m_shards_lost() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Blobs that cross block ends: blocks of one chunk, needles up to 3.
    let sizes: Vec<usize> = (0..40).map(|i| (i * 7919) % 200_000 + 1).collect();
    let blobs = sealed_volume(src.path(), &sizes);
    let code = Code::new(4, 2).unwrap();
    let volume = encode(src.path(), dst.path(), code, CHUNK_LEN);
    assert!(volume.layout().rows() > 1);
    assert_eq!(volume.held(), vec![0, 1, 2, 3, 4, 5]);
    for (id, cookie, data) in &blobs {
        assert_eq!(&read(&volume, *id, *cookie, &[]).unwrap(), data);
        // Any two shards lost: data shards, parity shards, or one of each.
        for lost in [[0u8, 1], [2, 3], [0, 4], [4, 5], [1, 3]] {
            assert_eq!(
                &read(&volume, *id, *cookie, &lost).unwrap(),
                data,
                "lost {lost:?}"
            );
        }
    }
}

#[test]
fn more_than_m_shards_lost_is_unavailable_never_other_bytes() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let blobs = sealed_volume(src.path(), &[5000, 70_000, 3]);
    let volume = encode(src.path(), dst.path(), Code::new(2, 1).unwrap(), CHUNK_LEN);
    let (id, cookie, _) = &blobs[1];
    let error = read(&volume, *id, *cookie, &[0, 1]).unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("1 of the 2 shards"), "{error}");
}

#[test]
fn a_flipped_byte_fails_the_needle_checksum_and_the_restored_piece_is_right() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let blobs = sealed_volume(src.path(), &[1000, 50_000, 20_000]);
    let volume = encode(src.path(), dst.path(), Code::new(3, 2).unwrap(), 1 << 30);
    let (id, cookie, data) = &blobs[1];
    let piece = volume.locate(*id).unwrap().pieces[0];
    let file = volume.shard(piece.shard).unwrap();
    // Flip one byte in the middle of the needle, inside the shard file.
    let at = shard::SHARD_HEADER_LEN + piece.offset + piece.len / 2;
    flip(file.path(), at);
    let error = read(&volume, *id, *cookie, &[]).unwrap_err();
    assert!(error.is_corruption(), "{error}");
    assert_eq!(&read(&volume, *id, *cookie, &[piece.shard]).unwrap(), data);
    // Scrub names the chunk; the chunk restored from the others mends it.
    let bad = file.scrub(&mut Throttle::new(0)).unwrap();
    let chunk = (piece.offset + piece.len / 2) / CHUNK_LEN;
    assert_eq!(bad, vec![chunk]);
    let chunk_piece = Piece {
        shard: piece.shard,
        offset: chunk * CHUNK_LEN,
        len: CHUNK_LEN,
    };
    let have: BTreeMap<u8, Vec<u8>> = volume
        .held()
        .into_iter()
        .filter(|&s| s != piece.shard)
        .map(|s| {
            (
                s,
                volume
                    .shard(s)
                    .unwrap()
                    .read(chunk * CHUNK_LEN, CHUNK_LEN)
                    .unwrap(),
            )
        })
        .collect();
    let restored = restore_piece(volume.layout(), chunk_piece, &have).unwrap();
    file.repair_chunk(chunk, &restored).unwrap();
    assert!(file.scrub(&mut Throttle::new(0)).unwrap().is_empty());
    assert_eq!(&read(&volume, *id, *cookie, &[]).unwrap(), data);
    // Wrong bytes are never written back.
    assert!(
        file.repair_chunk(chunk, &vec![0u8; CHUNK_LEN as usize])
            .is_err()
    );
}

#[test]
fn a_shard_that_differs_from_the_manifest_is_not_taken() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sealed_volume(src.path(), &[1000, 2000]);
    let volume = encode(src.path(), dst.path(), Code::new(2, 1).unwrap(), 1 << 30);
    let path = volume.shard(2).unwrap().path().to_owned();
    drop(volume);
    // A flipped byte in the checksum table: the digest no longer matches.
    let len = std::fs::metadata(&path).unwrap().len();
    flip(&path, len - 6);
    let volume = EcVolume::open(dst.path(), VOLUME).unwrap();
    assert_eq!(volume.held(), vec![0, 1]);
    assert_eq!(volume.damaged().len(), 1);
    assert_eq!(volume.damaged()[0].0, 2);
    // A torn shard (cut short) is refused the same way.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    assert!(volume.add_shard(2).is_err());
}

#[test]
fn deletes_are_journaled_and_outlive_a_reopen() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let blobs = sealed_volume(src.path(), &[10, 20, 30]);
    let volume = encode(src.path(), dst.path(), Code::new(2, 1).unwrap(), 1 << 30);
    let before = volume.stats();
    volume.delete(blobs[1].0).unwrap();
    assert!(
        read(&volume, blobs[1].0, blobs[1].1, &[])
            .unwrap_err()
            .is_not_found()
    );
    let after = volume.stats();
    assert_eq!(after.needles, before.needles - 1);
    assert!(after.garbage_bytes > before.garbage_bytes);
    drop(volume);
    let volume = EcVolume::open(dst.path(), VOLUME).unwrap();
    assert!(
        read(&volume, blobs[1].0, blobs[1].1, &[])
            .unwrap_err()
            .is_not_found()
    );
    assert_eq!(
        read(&volume, blobs[0].0, blobs[0].1, &[]).unwrap(),
        blobs[0].2
    );
    // A wrong cookie reads as missing.
    assert!(
        read(&volume, blobs[2].0, Cookie(1), &[])
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn a_writer_refuses_a_short_body_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::plan(Code::new(2, 1).unwrap(), 1000, 1 << 30);
    let mut writer = ShardWriter::create(dir.path(), VOLUME, 0, layout).unwrap();
    writer.append(&[1u8; 100]).unwrap();
    assert!(writer.finish(None).is_err());
    let mut writer = ShardWriter::create(dir.path(), VOLUME, 1, layout).unwrap();
    writer.append(&[1u8; 100]).unwrap();
    drop(writer);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Any code, any blob sizes, any `m` or fewer shards lost: every needle
    /// reads back byte for byte.
    #[test]
    fn encode_lose_up_to_m_shards_and_read_back(
        k in 1u8..7,
        m in 1u8..4,
        sizes in prop::collection::vec(1usize..150_000, 1..12),
        blocks in 1u64..4,
        lost_seed in any::<u64>(),
    ) {
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let blobs = sealed_volume(src.path(), &sizes);
        let code = Code::new(k, m).unwrap();
        let volume = encode(src.path(), dst.path(), code, blocks * CHUNK_LEN);
        let n = code.shards() as u64;
        let lost: Vec<u8> = (0..lost_seed % (u64::from(m) + 1))
            .map(|i| ((lost_seed / 7 + i * 5) % n) as u8)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for (id, cookie, data) in &blobs {
            prop_assert_eq!(&read(&volume, *id, *cookie, &lost).unwrap(), data);
        }
    }
}

#[test]
fn a_store_holds_what_was_installed_and_forgets_half_written_shards() {
    use crate::store::{Location, Store, StoreConfig};
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let blobs = sealed_volume(src.path(), &[3000, 9000]);
    let open = || {
        Store::open(StoreConfig {
            locations: Location::hot_and_warm(root.path()),
            volume: VolumeConfig::default(),
            reserve: crate::space::Reserve::NONE,
        })
        .unwrap()
    };
    let store = open();
    let (dat, idx, meta) = volume_paths(src.path(), VOLUME);
    let layout = Layout::plan(
        Code::new(2, 1).unwrap(),
        std::fs::metadata(&dat).unwrap().len(),
        1 << 30,
    );
    // Shards written before the manifest (as an encode does), then installed.
    let mut encoder = Encoder::open(&dat, layout).unwrap();
    let mut writers: Vec<_> = (0..3)
        .map(|s| store.shard_writer(VOLUME, s, layout).unwrap())
        .collect();
    while let Some(stripe) = encoder.next_stripe().unwrap() {
        for (writer, slice) in writers.iter_mut().zip(&stripe.slices) {
            writer.append(slice).unwrap();
        }
    }
    let digests = encoder.digests();
    for (shard, (writer, digest)) in writers.into_iter().zip(&digests).enumerate() {
        store
            .finish_shard(VOLUME, shard as u8, writer, *digest)
            .unwrap();
    }
    let manifest = EcManifest::new(layout, digests);
    let entries = read_index_file(&idx, VOLUME).unwrap();
    let meta = VolumeMeta::load(&meta).unwrap().unwrap();
    let held = store
        .install_erasure(VOLUME, &manifest, &entries, &meta, &[])
        .unwrap();
    assert_eq!(held.held(), vec![0, 1, 2]);
    assert_eq!(held.dir(), root.path().join("warm"));
    // The same manifest again is the same volume; another one is refused.
    store
        .install_erasure(VOLUME, &manifest, &entries, &meta, &[])
        .unwrap();
    let other = EcManifest::new(layout, vec![1, 2, 3]);
    assert!(matches!(
        store.install_erasure(VOLUME, &other, &entries, &meta, &[]),
        Err(Error::VolumeExists(_))
    ));
    // A shard a crash left half written is gone when the store opens again.
    let tmp = root.path().join("warm").join(format!("{VOLUME}.ec01.tmp"));
    std::fs::write(&tmp, b"half").unwrap();
    drop((held, store));
    let store = open();
    assert!(!tmp.exists());
    let held = store.erasure(VOLUME).unwrap();
    assert_eq!(
        read(&held, blobs[1].0, blobs[1].1, &[0]).unwrap(),
        blobs[1].2
    );
    store.remove_erasure(VOLUME).unwrap();
    assert!(store.erasure(VOLUME).is_err());
    assert_eq!(
        std::fs::read_dir(root.path().join("warm")).unwrap().count(),
        0
    );
}

#[test]
fn a_decoded_copy_is_staged_unseen_then_served_with_its_deletes_across_a_crash() {
    use std::collections::BTreeSet;

    use crate::store::{Location, Store, StoreConfig};
    let root = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let blobs = sealed_volume(src.path(), &[3000, 70_000, 5, 130_000, 900]);
    let open = || {
        Store::open(StoreConfig {
            locations: Location::hot_and_warm(root.path()),
            volume: VolumeConfig::default(),
            reserve: crate::space::Reserve::NONE,
        })
        .unwrap()
    };
    let store = open();
    let (dat, idx, meta) = volume_paths(src.path(), VOLUME);
    let bytes = std::fs::read(&dat).unwrap();
    // The data file written out of order (as data shards arrive), padding
    // past its end dropped.
    let writer = store.decoded_writer(VOLUME, bytes.len() as u64).unwrap();
    let half = bytes.len() / 2;
    writer.write_at(half as u64, &bytes[half..]).unwrap();
    writer.write_at(0, &bytes[..half]).unwrap();
    let mut padded = bytes.clone();
    padded.resize(bytes.len() + 4096, 0);
    writer.write_at(0, &padded).unwrap();
    let entries = read_index_file(&idx, VOLUME).unwrap();
    let meta = VolumeMeta::load(&meta).unwrap().unwrap();
    let deleted: BTreeSet<NeedleId> = [blobs[1].0, NeedleId(999)].into();
    let counts = store
        .stage_decoded(writer, &entries, &meta, &deleted)
        .unwrap();
    assert_eq!((counts.needles, counts.deleted), (4, 1));
    // Staged: not served, not opened by a store, listed.
    assert!(store.volume(VOLUME).is_err());
    drop(store);
    let store = open();
    assert!(store.volume(VOLUME).is_err());
    assert_eq!(store.staged_decodes(), [VOLUME]);
    // A delete made at the holders later (the journals step).
    let later: BTreeSet<NeedleId> = [blobs[1].0, blobs[3].0].into();
    let counts = store.apply_staged_deletes(VOLUME, &later).unwrap();
    assert_eq!((counts.needles, counts.deleted), (3, 1));
    // A crash midway through the activation: state and index moved, the
    // data file not: still no volume; the next activation finishes.
    let staging = root.path().join("warm").join(decode::STAGING_DIR);
    let (s_dat, s_idx, s_meta) = volume_paths(&staging, VOLUME);
    let (w_dat, w_idx, w_meta) = volume_paths(&root.path().join("warm"), VOLUME);
    std::fs::rename(&s_meta, &w_meta).unwrap();
    std::fs::rename(&s_idx, &w_idx).unwrap();
    drop(store);
    let store = open();
    assert!(store.volume(VOLUME).is_err());
    assert!(s_dat.exists() && !w_dat.exists());
    let activated = store.activate_decoded(VOLUME).unwrap();
    assert!(matches!(activated, crate::Handle::Local(v) if v.is_sealed()));
    assert!(store.staged_decodes().is_empty());
    // Served; again after a restart; a second activation is a no-op.
    drop(store);
    let store = open();
    store.activate_decoded(VOLUME).unwrap();
    for (i, (id, cookie, data)) in blobs.iter().enumerate() {
        let read = store.read(VOLUME, *id, *cookie);
        if i == 1 || i == 3 {
            assert!(read.unwrap_err().is_not_found(), "blob {i} deleted");
        } else {
            assert_eq!(read.unwrap().data, Bytes::from(data.clone()), "blob {i}");
        }
    }
    // A copy served here already: a new decode here is refused.
    assert!(matches!(
        store.decoded_writer(VOLUME, 10),
        Err(Error::VolumeExists(_))
    ));
    // An aborted decode leaves nothing staged.
    store.abort_decoded(VolumeId(8)).unwrap();
    let other = store.decoded_writer(VolumeId(8), 4096).unwrap();
    drop(other);
    store.abort_decoded(VolumeId(8)).unwrap();
    assert!(std::fs::read_dir(&staging).unwrap().next().is_none());
}

/// Encodes the sealed volume in `src` 2+1 into `store`: served, or with
/// `staged` as a re-encode's next generation. Returns its manifest.
fn encode_into(store: &crate::store::Store, src: &Path, staged: bool) -> EcManifest {
    let (dat, idx, meta) = volume_paths(src, VOLUME);
    let layout = Layout::plan(
        Code::new(2, 1).unwrap(),
        std::fs::metadata(&dat).unwrap().len(),
        1 << 30,
    );
    let mut encoder = Encoder::open(&dat, layout).unwrap();
    let mut writers: Vec<_> = (0..3)
        .map(|s| {
            if staged {
                store.staged_shard_writer(VOLUME, s, layout).unwrap()
            } else {
                store.shard_writer(VOLUME, s, layout).unwrap()
            }
        })
        .collect();
    while let Some(stripe) = encoder.next_stripe().unwrap() {
        for (writer, slice) in writers.iter_mut().zip(&stripe.slices) {
            writer.append(slice).unwrap();
        }
    }
    let digests = encoder.digests();
    for (shard, (writer, digest)) in writers.into_iter().zip(&digests).enumerate() {
        if staged {
            store.finish_staged_shard(writer, *digest).unwrap();
        } else {
            store
                .finish_shard(VOLUME, shard as u8, writer, *digest)
                .unwrap();
        }
    }
    let manifest = EcManifest::new(layout, digests);
    let entries = read_index_file(&idx, VOLUME).unwrap();
    let meta = VolumeMeta::load(&meta).unwrap().unwrap();
    if staged {
        store
            .install_staged_erasure(VOLUME, &manifest, &entries, &meta, &["a".into()])
            .unwrap();
    } else {
        store
            .install_erasure(VOLUME, &manifest, &entries, &meta, &[])
            .unwrap();
    }
    manifest
}

#[test]
fn a_staged_generation_is_unseen_until_swapped_and_a_crashed_swap_is_finished_on_open() {
    use crate::store::{Location, Store, StoreConfig};
    let root = tempfile::tempdir().unwrap();
    let (old_src, new_src) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old_blobs = sealed_volume(old_src.path(), &[3000, 90_000, 20_000]);
    let new_blobs = sealed_volume(new_src.path(), &[3000]);
    let open = || {
        Store::open(StoreConfig {
            locations: Location::hot_and_warm(root.path()),
            volume: VolumeConfig::default(),
            reserve: crate::space::Reserve::NONE,
        })
        .unwrap()
    };
    let warm = root.path().join("warm");
    let staging = warm.join(reencode::REENCODE_DIR);
    let store = open();
    let old = encode_into(&store, old_src.path(), false);
    let new = encode_into(&store, new_src.path(), true);
    assert_eq!(store.staged_erasure_manifest(VOLUME), Some(new.clone()));
    // Staged: not served, not even after a restart.
    assert_eq!(store.erasure(VOLUME).unwrap().manifest(), &old);
    drop(store);
    let store = open();
    assert_eq!(store.erasure(VOLUME).unwrap().manifest(), &old);
    // A swap naming another generation is refused.
    assert!(store.swap_reencoded(VOLUME, &[1, 2, 3]).is_err());

    // A crash part way through a swap: the marker written, the served
    // manifest gone, one shard renamed. The next open finishes it.
    std::fs::write(staging.join(format!("{VOLUME}.ecswap")), b"swap\n").unwrap();
    std::fs::remove_file(warm.join(format!("{VOLUME}.ecm"))).unwrap();
    std::fs::rename(
        staging.join(format!("{VOLUME}.ec01")),
        warm.join(format!("{VOLUME}.ec01")),
    )
    .unwrap();
    drop(store);
    let store = open();
    let held = store.erasure(VOLUME).unwrap();
    assert_eq!(held.manifest(), &new);
    assert_eq!(held.held(), vec![0, 1, 2]);
    assert!(held.damaged().is_empty());
    let (id, cookie, data) = &new_blobs[0];
    assert_eq!(&read(&held, *id, *cookie, &[1]).unwrap(), data);
    assert!(matches!(
        read(&held, old_blobs[1].0, old_blobs[1].1, &[]),
        Err(e) if e.is_not_found()
    ));
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    // Swapping again: done already.
    assert!(!store.swap_reencoded(VOLUME, &new.digests).unwrap());

    // A staged generation that is dropped (a re-encode that failed) leaves
    // the served one as it is.
    let again = encode_into(&store, old_src.path(), true);
    assert_ne!(again, new);
    store.drop_staged_erasure(VOLUME).unwrap();
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    assert_eq!(store.erasure(VOLUME).unwrap().manifest(), &new);
    // Staged and swapped in by the call: served at once.
    let third = encode_into(&store, old_src.path(), true);
    assert!(store.swap_reencoded(VOLUME, &third.digests).unwrap());
    let held = store.erasure(VOLUME).unwrap();
    assert_eq!(held.manifest(), &third);
    let (id, cookie, data) = &old_blobs[2];
    assert_eq!(&read(&held, *id, *cookie, &[0]).unwrap(), data);
}

#[test]
fn a_cached_shard_read_gives_the_same_bytes_and_refuses_the_same_ranges() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let blobs = sealed_volume(src.path(), &[1000, 50_000, 20_000]);
    let volume = encode(src.path(), dst.path(), Code::new(3, 2).unwrap(), 1 << 30);
    let (id, _, _) = &blobs[1];
    let piece = volume.locate(*id).unwrap().pieces[0];
    let file = volume.shard(piece.shard).unwrap();
    let read = file.read(piece.offset, piece.len).unwrap();
    // Just read: in the page cache, so served without waiting.
    let cached = file.read_cached(piece.offset, piece.len).unwrap();
    assert_eq!(cached.as_deref(), Some(&read[..]));
    let past = file.header().layout.body_len();
    assert!(matches!(
        file.read_cached(past, 1).unwrap_err(),
        Error::BadFile { .. }
    ));
}
