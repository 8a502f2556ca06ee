//! A blob id is written once (invariant 10): a second write of a live or
//! deleted id is refused, except an exact retry, which is answered as the
//! first write was, with nothing written.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};

use hayloft_storage::volume::volume_paths;
use hayloft_storage::{
    CompactOptions, Cookie, Durability, Error, NeedleId, NeedleMeta, NeedleWrite, Queued, Tier,
    Volume, VolumeConfig, VolumeId,
};

const VID: VolumeId = VolumeId(7);

fn config(durability: Durability) -> VolumeConfig {
    VolumeConfig {
        max_size: 64 << 20,
        durability,
    }
}

fn meta(content_type: &str, last_modified: u64) -> NeedleMeta {
    NeedleMeta {
        content_type: content_type.to_owned(),
        last_modified,
        ..NeedleMeta::default()
    }
}

fn write(
    volume: &Volume,
    id: u64,
    cookie: u32,
    data: &[u8],
    meta: NeedleMeta,
) -> Result<hayloft_storage::WriteReceipt, Error> {
    volume.write(&NeedleWrite {
        id: NeedleId(id),
        cookie: Cookie(cookie),
        data,
        meta,
    })
}

fn data_file_len(dir: &std::path::Path) -> u64 {
    std::fs::metadata(volume_paths(dir, VID).0).unwrap().len()
}

#[test]
fn a_live_id_takes_only_an_exact_retry_and_every_refusal_keeps_the_first_bytes() {
    for durability in [Durability::Always, Durability::Never] {
        let dir = tempfile::tempdir().unwrap();
        let volume = Volume::create(dir.path(), VID, Tier::Hot, "", config(durability)).unwrap();
        let first = write(&volume, 1, 11, b"first bytes", meta("text/plain", 100)).unwrap();
        let len = data_file_len(dir.path());

        // The same bytes, cookie and metadata: answered as the first write
        // (its offset and checksum, so the same ETag), nothing written. The
        // time a server stamps is not compared.
        let again = write(&volume, 1, 11, b"first bytes", meta("text/plain", 999)).unwrap();
        assert_eq!(again, first);
        assert_eq!(
            data_file_len(dir.path()),
            len,
            "{durability:?}: a retry wrote"
        );

        // Anything else is refused.
        for (cookie, data, content_type) in [
            (11, &b"other bytes"[..], "text/plain"),
            (11, &b"first bytes, longer"[..], "text/plain"),
            (11, &b""[..], "text/plain"),
            (12, &b"first bytes"[..], "text/plain"),
            (11, &b"first bytes"[..], "image/png"),
        ] {
            let refused = write(&volume, 1, cookie, data, meta(content_type, 100));
            assert!(
                matches!(refused, Err(Error::NeedleExists { .. })),
                "{durability:?} {cookie} {data:?} {content_type}: {refused:?}"
            );
        }
        assert_eq!(data_file_len(dir.path()), len);
        assert_eq!(volume.stats().needles, 1);
        let read = volume.read_verified(NeedleId(1), Cookie(11)).unwrap();
        assert_eq!(&read.data[..], b"first bytes");
        assert_eq!(read.meta.last_modified, 100);
    }
}

#[test]
fn a_deleted_id_is_refused_even_for_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let volume =
        Volume::create(dir.path(), VID, Tier::Hot, "", config(Durability::Always)).unwrap();
    write(&volume, 1, 11, b"gone", NeedleMeta::default()).unwrap();
    volume.delete(NeedleId(1), Cookie(11)).unwrap();
    let refused = write(&volume, 1, 11, b"gone", NeedleMeta::default());
    assert!(
        matches!(refused, Err(Error::NeedleDeleted { .. })),
        "{refused:?}"
    );
    let volume = Arc::new(volume);
    let refused = volume.begin_write(NeedleId(1), Cookie(11), 4, NeedleMeta::default());
    assert!(matches!(refused, Err(Error::NeedleDeleted { .. })));
}

#[test]
fn a_streamed_retry_is_compared_chunk_by_chunk_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Arc::new(
        Volume::create(dir.path(), VID, Tier::Hot, "", config(Durability::Always)).unwrap(),
    );
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = volume
        .begin_write(
            NeedleId(5),
            Cookie(55),
            blob.len() as u64,
            meta("video/mp4", 1),
        )
        .unwrap();
    for chunk in blob.chunks(300_001) {
        writer.write(chunk).unwrap();
    }
    let first = writer.finish().unwrap();
    let len = data_file_len(dir.path());

    // The same bytes in other chunks: the first write's answer.
    let mut writer = volume
        .begin_write(
            NeedleId(5),
            Cookie(55),
            blob.len() as u64,
            meta("video/mp4", 2),
        )
        .unwrap();
    for chunk in blob.chunks(1 << 20) {
        writer.write(chunk).unwrap();
    }
    assert_eq!(writer.finish().unwrap(), first);

    // One byte differs in the middle: that chunk is refused.
    let mut other = blob.clone();
    other[1_500_000] ^= 1;
    let mut writer = volume
        .begin_write(
            NeedleId(5),
            Cookie(55),
            blob.len() as u64,
            meta("video/mp4", 2),
        )
        .unwrap();
    let outcome = other
        .chunks(1 << 20)
        .try_for_each(|chunk| writer.write(chunk));
    assert!(
        matches!(outcome, Err(Error::NeedleExists { .. })),
        "{outcome:?}"
    );
    drop(writer);

    // Another length is refused at once.
    let refused = volume.begin_write(NeedleId(5), Cookie(55), 10, meta("video/mp4", 2));
    assert!(matches!(refused, Err(Error::NeedleExists { .. })));
    // A writer that stopped short neither wrote nor answered.
    let mut writer = volume
        .begin_write(
            NeedleId(5),
            Cookie(55),
            blob.len() as u64,
            meta("video/mp4", 2),
        )
        .unwrap();
    writer.write(&blob[..1000]).unwrap();
    assert!(matches!(writer.finish(), Err(Error::LengthMismatch { .. })));

    assert_eq!(data_file_len(dir.path()), len);
    assert_eq!(
        &volume.read_verified(NeedleId(5), Cookie(55)).unwrap().data[..],
        &blob[..]
    );
    // The claims were all given back: a new id and the retry still work.
    write(&volume, 6, 66, b"next", NeedleMeta::default()).unwrap();
    assert!(volume.claim(NeedleId(5)).unwrap().is_retry());
}

#[test]
fn an_id_being_written_is_refused_to_a_second_writer_until_the_first_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Arc::new(
        Volume::create(dir.path(), VID, Tier::Hot, "", config(Durability::Always)).unwrap(),
    );
    let writer = volume
        .begin_write(NeedleId(3), Cookie(33), 4, NeedleMeta::default())
        .unwrap();
    let refused = write(&volume, 3, 33, b"abcd", NeedleMeta::default());
    assert!(
        matches!(refused, Err(Error::WriteInProgress { .. })),
        "{refused:?}"
    );
    // Abandoned: the id is free again.
    drop(writer);
    write(&volume, 3, 33, b"abcd", NeedleMeta::default()).unwrap();

    // A queued write holds its id until the group commit applies it.
    let claim = volume.claim(NeedleId(4)).unwrap();
    let queued = match volume
        .try_write_queued(
            claim,
            &NeedleWrite {
                id: NeedleId(4),
                cookie: Cookie(44),
                data: b"queued",
                meta: NeedleMeta::default(),
            },
        )
        .unwrap()
    {
        Queued::Queued(queued) => queued,
        Queued::WouldWait(_) => panic!("nothing holds writers back"),
    };
    assert!(queued.seq > 0);
    assert!(matches!(
        volume.claim(NeedleId(4)),
        Err(Error::WriteInProgress { .. })
    ));
    volume.sync_now().unwrap();
    assert!(volume.claim(NeedleId(4)).unwrap().is_retry());
    // A claim is for its own id only.
    let claim = volume.claim(NeedleId(9)).unwrap();
    let wrong = volume.write_claimed(
        claim,
        &NeedleWrite {
            id: NeedleId(10),
            cookie: Cookie(1),
            data: b"x",
            meta: NeedleMeta::default(),
        },
    );
    assert!(matches!(wrong, Err(Error::InvalidNeedle(_))));
}

#[test]
fn racing_writers_of_one_id_leave_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Arc::new(
        Volume::create(
            dir.path(),
            VID,
            Tier::Hot,
            "",
            config(Durability::Batched(std::time::Duration::from_millis(2))),
        )
        .unwrap(),
    );
    for id in 0..200u64 {
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = [b'a', b'b']
            .into_iter()
            .map(|byte| {
                let (volume, barrier) = (Arc::clone(&volume), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let data = vec![byte; 100 + id as usize];
                    barrier.wait();
                    (byte, write(&volume, id, 1, &data, NeedleMeta::default()))
                })
            })
            .collect();
        let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<u8> = outcomes
            .iter()
            .filter(|(_, outcome)| outcome.is_ok())
            .map(|(byte, _)| *byte)
            .collect();
        assert_eq!(winners.len(), 1, "id {id}: {outcomes:?}");
        for (_, outcome) in &outcomes {
            if let Err(e) = outcome {
                assert!(
                    matches!(
                        e,
                        Error::NeedleExists { .. } | Error::WriteInProgress { .. }
                    ),
                    "{e}"
                );
            }
        }
        let read = volume.read_verified(NeedleId(id), Cookie(1)).unwrap();
        assert!(read.data.iter().all(|b| *b == winners[0]), "id {id}");
    }
    assert_eq!(volume.stats().needles, 200);
}

#[test]
fn reopened_and_compacted_volumes_still_refuse_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Durability::Always);
    let volume = Volume::create(dir.path(), VID, Tier::Hot, "", cfg).unwrap();
    for id in 1..=20u64 {
        write(
            &volume,
            id,
            7,
            format!("blob {id}").as_bytes(),
            NeedleMeta::default(),
        )
        .unwrap();
    }
    for id in 1..=10u64 {
        volume.delete(NeedleId(id), Cookie(7)).unwrap();
    }
    volume.compact(&CompactOptions::default()).unwrap();
    for volume in [
        volume,
        Volume::open(dir.path(), VID, Tier::Hot, cfg).unwrap(),
    ] {
        for id in 1..=10u64 {
            let refused = write(&volume, id, 7, b"new", NeedleMeta::default());
            assert!(
                matches!(refused, Err(Error::NeedleDeleted { .. })),
                "{refused:?}"
            );
        }
        for id in 11..=20u64 {
            let refused = write(&volume, id, 7, b"new", NeedleMeta::default());
            assert!(
                matches!(refused, Err(Error::NeedleExists { .. })),
                "{refused:?}"
            );
            let retry = write(
                &volume,
                id,
                7,
                format!("blob {id}").as_bytes(),
                NeedleMeta::default(),
            );
            assert!(retry.is_ok(), "{retry:?}");
            let read = volume.read_verified(NeedleId(id), Cookie(7)).unwrap();
            assert_eq!(&read.data[..], format!("blob {id}").as_bytes());
        }
        volume.close().unwrap();
    }
}

#[test]
fn a_copied_needle_already_here_is_compared_and_a_copied_tombstone_waits_for_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Arc::new(
        Volume::create(dir.path(), VID, Tier::Hot, "", config(Durability::Always)).unwrap(),
    );
    write(&volume, 1, 11, b"held", NeedleMeta::default()).unwrap();
    let len = data_file_len(dir.path());
    let mut copy = volume
        .begin_copy(NeedleId(1), Cookie(11), 4, NeedleMeta::default())
        .unwrap();
    copy.write(b"held").unwrap();
    copy.finish().unwrap();
    let mut copy = volume
        .begin_copy(NeedleId(1), Cookie(11), 4, NeedleMeta::default())
        .unwrap();
    assert!(matches!(
        copy.write(b"HELD"),
        Err(Error::NeedleExists { .. })
    ));
    drop(copy);
    assert_eq!(data_file_len(dir.path()), len);

    // A tombstone copied while the id is being written is refused for now
    // (it would be applied before the write and the needle come back).
    let writer = volume
        .begin_write(NeedleId(2), Cookie(22), 1, NeedleMeta::default())
        .unwrap();
    assert!(matches!(
        volume.delete_copied(NeedleId(2), Cookie(22)),
        Err(Error::WriteInProgress { .. })
    ));
    drop(writer);
    assert!(volume.delete_copied(NeedleId(2), Cookie(22)).unwrap());
    assert!(!volume.delete_copied(NeedleId(2), Cookie(22)).unwrap());
}

#[test]
fn only_a_copy_from_another_copy_replaces_a_needle_whose_bytes_rotted() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let volume = Arc::new(
        Volume::create(dir.path(), VID, Tier::Hot, "", config(Durability::Always)).unwrap(),
    );
    let receipt = write(&volume, 1, 11, b"good bytes", NeedleMeta::default()).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(volume_paths(dir.path(), VID).0)
        .unwrap();
    file.write_all_at(b"BAD", receipt.offset + 32).unwrap();
    assert!(volume.read_verified(NeedleId(1), Cookie(11)).is_err());
    // A client's write of the good bytes is not a retry of what is stored.
    let refused = write(&volume, 1, 11, b"good bytes", NeedleMeta::default());
    assert!(
        matches!(refused, Err(Error::NeedleExists { .. })),
        "{refused:?}"
    );
    // Scrub's copy from another copy replaces it.
    let mut copy = volume
        .begin_copy(NeedleId(1), Cookie(11), 10, NeedleMeta::default())
        .unwrap();
    copy.write(b"good bytes").unwrap();
    let healed = copy.finish().unwrap();
    assert!(healed.offset > receipt.offset);
    assert_eq!(
        &volume.read_verified(NeedleId(1), Cookie(11)).unwrap().data[..],
        b"good bytes"
    );
    // Healed, it is a live needle like any other: written once.
    let mut copy = volume
        .begin_copy(NeedleId(1), Cookie(11), 10, NeedleMeta::default())
        .unwrap();
    assert!(matches!(
        copy.write(b"other byte"),
        Err(Error::NeedleExists { .. })
    ));
}
