//! Reads that never wait for the disk on the caller's thread: a needle in
//! the page cache is read at once; one that is not is planned as a read
//! from disk, which reads the whole record in one go, checks it, and leaves
//! it in the page cache. Pages are evicted for real (`POSIX_FADV_DONTNEED`
//! on the volume's data file; the tests check that they went).

#![allow(clippy::unwrap_used)] // test helpers may panic on setup failures

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hayloft_storage::{
    Cookie, Durability, Error, Hint, NeedleId, NeedleMeta, NeedleWrite, Part, ReadPlan, Tier,
    Volume, VolumeConfig, VolumeId,
};

const VID: VolumeId = VolumeId(3);

fn open(dir: &Path) -> Volume {
    Volume::create(
        dir,
        VID,
        Tier::Hot,
        "",
        VolumeConfig {
            max_size: 1 << 30,
            durability: Durability::Always,
        },
    )
    .unwrap()
}

fn blob(id: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (id as usize).wrapping_mul(31).wrapping_add(i * 7) as u8)
        .collect()
}

fn cookie(id: u64) -> Cookie {
    Cookie(id as u32 ^ 0x5a5a)
}

/// Writes needle `id` of `len` bytes; returns the record's offset.
fn put(volume: &Volume, id: u64, len: usize) -> u64 {
    put_receipt(volume, id, len).offset
}

/// Writes needle `id` of `len` bytes.
fn put_receipt(volume: &Volume, id: u64, len: usize) -> hayloft_storage::WriteReceipt {
    volume
        .write(&NeedleWrite {
            id: NeedleId(id),
            cookie: cookie(id),
            data: &blob(id, len),
            meta: NeedleMeta {
                content_type: "image/jpeg".into(),
                file_name: String::new(),
                last_modified: 1_700_000_000,
                expires_at: None,
            },
        })
        .unwrap()
}

fn data_file(dir: &Path) -> PathBuf {
    dir.join(format!("{VID}.dat"))
}

/// Drops the data file's pages from the page cache (they are clean: every
/// write was fsynced) and checks that none is left.
fn evict(dir: &Path) {
    let file = std::fs::File::open(data_file(dir)).unwrap();
    file.sync_all().unwrap();
    // SAFETY: a plain syscall on a descriptor this function owns.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

fn plan_is_disk(volume: &Volume, id: u64) -> bool {
    match volume
        .plan_read(NeedleId(id), cookie(id), u64::MAX)
        .unwrap()
    {
        ReadPlan::Resident(needle) => {
            assert_eq!(needle.data.as_ref(), blob(id, needle.data.len()).as_slice());
            false
        }
        ReadPlan::Disk(_) => true,
    }
}

#[test]
fn an_evicted_needle_is_read_from_disk_once_then_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let volume = open(dir.path());
    // 10 bytes, 4 KiB and 64 KiB (buffered whole), 700 KiB (read in
    // chunks, past what the index keeps the length of). In this order, each
    // needle has a page of its own that the reads before it did not bring
    // in (a read brings in whole pages, and so the starts of the next
    // records).
    let sizes = [(4, 10), (1, 4096), (2, 65_536), (3, 700 * 1024)];
    for (id, len) in sizes {
        put(&volume, id, len);
    }
    // (Not read before the eviction: pages this process maps through a
    // read from memory stay in the page cache until memory runs short,
    // whatever `POSIX_FADV_DONTNEED` says.)
    evict(dir.path());
    for (id, len) in sizes {
        let ReadPlan::Disk(plan) = volume
            .plan_read(NeedleId(id), cookie(id), u64::MAX)
            .unwrap()
        else {
            panic!("needle {id} still resident after eviction");
        };
        let read = plan.run().unwrap();
        let read_needle = &read.part.needle;
        assert_eq!(
            read_needle.data.as_ref(),
            blob(id, len).as_slice(),
            "needle {id}"
        );
        assert_eq!(read_needle.meta.content_type, "image/jpeg");
        // About the record, and never a readahead window.
        assert!(read.disk_bytes >= len as u64 && read.disk_bytes <= len as u64 + 128);
        // The read left the record in the page cache.
        assert!(
            !plan_is_disk(&volume, id),
            "needle {id} not resident after its read"
        );
    }
}

#[test]
fn a_corrupt_byte_on_disk_is_refused_and_a_wrong_cookie_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let volume = open(dir.path());
    let small = put(&volume, 1, 65_536);
    let long = put(&volume, 2, 700 * 1024);
    put(&volume, 3, 4096);
    // One flipped byte in the middle of each blob's data, written through
    // another descriptor, synced, then evicted: only the disk has it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data_file(dir.path()))
        .unwrap();
    for at in [small + 32 + 30_000, long + 32 + 500_000] {
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
    }
    evict(dir.path());
    for id in [1, 2] {
        let ReadPlan::Disk(plan) = volume
            .plan_read(NeedleId(id), cookie(id), u64::MAX)
            .unwrap()
        else {
            panic!("needle {id} still resident after eviction");
        };
        match plan.run() {
            Err(Error::Corrupt { reason, .. }) => assert_eq!(reason, "checksum mismatch"),
            other => panic!("needle {id}: {other:?}"),
        }
    }
    // A wrong cookie, found on disk: the same answer as a missing needle.
    let ReadPlan::Disk(plan) = volume.plan_read(NeedleId(3), Cookie(7), u64::MAX).unwrap() else {
        panic!("needle 3 still resident after eviction");
    };
    let error = plan.run().unwrap_err();
    assert!(matches!(error, Error::WrongCookie { .. }), "{error:?}");
    assert!(error.is_not_found());
    // Missing needles need no plan.
    assert!(
        volume
            .plan_read(NeedleId(99), cookie(99), u64::MAX)
            .unwrap_err()
            .is_not_found()
    );
}

/// Plans a read of needle `id`, which must not be in the page cache.
fn disk_plan(volume: &Volume, id: u64) -> hayloft_storage::DiskRead {
    match volume
        .plan_read(NeedleId(id), cookie(id), u64::MAX)
        .unwrap()
    {
        ReadPlan::Disk(plan) => plan,
        ReadPlan::Resident(_) => panic!("needle {id} still resident after eviction"),
    }
}

#[test]
fn a_head_reads_the_header_and_tail_and_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let volume = open(dir.path());
    assert_eq!(
        volume.format_version(),
        hayloft_storage::format::FORMAT_VERSION
    );
    // 64 KiB (length in the index), 3 MiB (past it).
    let sizes = [(1, 65_536), (2, 3 << 20)];
    // (Not read back: pages this process maps stay in the page cache.)
    let mut checksums = Vec::new();
    for (id, len) in sizes {
        checksums.push(put_receipt(&volume, id, len).checksum);
    }
    evict(dir.path());
    for ((id, len), checksum) in sizes.into_iter().zip(checksums) {
        let mut seen = None;
        let read = disk_plan(&volume, id)
            .run_part(Hint::Head, |info| {
                seen = Some((info.size, info.checksum, info.meta.content_type.clone()));
                Part::Nothing
            })
            .unwrap();
        assert_eq!(
            seen,
            Some((len as u64, checksum, "image/jpeg".to_owned())),
            "needle {id}"
        );
        assert_eq!(read.part.size, len as u64);
        assert_eq!(read.part.needle.checksum, checksum);
        assert!(read.part.needle.data.is_empty());
        // The header (32 bytes) and the tail: metadata, CRCs.
        assert!(read.disk_bytes < 32 + 300, "{} bytes read", read.disk_bytes);
    }
}

#[test]
fn a_range_of_a_large_blob_reads_about_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let volume = open(dir.path());
    let len = 8 << 20;
    put(&volume, 1, len);
    let data = blob(1, len);
    // Unaligned, a small one, one longer than a buffered read (served
    // through the map), the last bytes.
    let ranges = [
        (1 << 20 | 100, 2 << 20 | 100),
        (5, 6),
        (100_000, 100_000 + (3 << 20)),
        (len as u64 - 10, len as u64),
    ];
    for (start, end) in ranges {
        evict(dir.path());
        let read = disk_plan(&volume, 1)
            .run_part(Hint::Range, |info| {
                assert_eq!(info.size, len as u64);
                Part::Bytes { start, end }
            })
            .unwrap();
        assert_eq!(read.part.start, start);
        assert_eq!(
            read.part.bytes(start, end).unwrap().as_ref(),
            &data[start as usize..end as usize]
        );
        // The range's chunks (64 KiB each, one more at each unaligned end),
        // the header and the tail (128 chunk CRCs).
        let range = end - start;
        let most = range + 2 * hayloft_storage::format::CHUNK_LEN + 32 + 700;
        assert!(
            read.disk_bytes >= range && read.disk_bytes <= most,
            "{} bytes read for {range}",
            read.disk_bytes
        );
    }
}

#[test]
fn a_corrupt_byte_in_a_range_is_refused_and_one_outside_it_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let volume = open(dir.path());
    let len = 4 << 20;
    let offset = put(&volume, 1, len);
    let data = blob(1, len);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data_file(dir.path()))
        .unwrap();
    let bad = (2 << 20) + 12_345;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset + 32 + bad).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], offset + 32 + bad)
        .unwrap();
    evict(dir.path());
    let read = |start: u64, end: u64| {
        disk_plan(&volume, 1).run_part(Hint::Range, |_| Part::Bytes { start, end })
    };
    // A range holding the byte, small or long, and one whose chunk holds it.
    for (start, end) in [(bad, bad + 1), (1 << 20, 3 << 20), (bad - 100, bad - 50)] {
        match read(start, end) {
            Err(Error::Corrupt { reason, .. }) => assert_eq!(reason, "checksum mismatch"),
            other => panic!("{start}..{end}: {other:?}"),
        }
    }
    // A range whose chunks are all good: served, right.
    let good = read(0, 1 << 20).unwrap();
    assert_eq!(
        good.part.bytes(0, 1 << 20).unwrap().as_ref(),
        &data[..1 << 20]
    );
    // The whole blob: refused.
    assert!(matches!(
        disk_plan(&volume, 1).run(),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn a_version_1_volume_is_read_and_written_as_before() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    // Make the (empty) volume a version-1 one, as an older build wrote it.
    let superblock = hayloft_storage::format::Superblock {
        volume_id: VID,
        created_at: 1_700_000_000,
        version: hayloft_storage::format::FORMAT_VERSION_1,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(data_file(dir.path()))
        .unwrap()
        .write_all_at(&superblock.encode(), 0)
        .unwrap();
    let volume = Volume::open(dir.path(), VID, Tier::Hot, VolumeConfig::default()).unwrap();
    assert_eq!(volume.format_version(), 1);
    // Past what a range reads whole, within what is read into a buffer
    // (a read through the map would keep its pages in the page cache).
    let len = 300 << 10;
    let offset = put(&volume, 1, len);
    let mut header = [0u8; 32];
    std::fs::File::open(data_file(dir.path()))
        .unwrap()
        .read_exact_at(&mut header, offset)
        .unwrap();
    let header = hayloft_storage::format::NeedleHeader::decode(&header).unwrap();
    assert!(
        !header.has_chunk_crcs(),
        "a version-1 volume took a version-2 record"
    );
    evict(dir.path());
    // No chunk CRCs: a HEAD or a range reads and verifies the whole record.
    for hint in [Hint::Head, Hint::Range] {
        let read = disk_plan(&volume, 1)
            .run_part(hint, |_| Part::Bytes { start: 10, end: 20 })
            .unwrap();
        assert_eq!(read.part.start, 0);
        assert_eq!(read.part.needle.data.as_ref(), blob(1, len).as_slice());
        assert!(read.disk_bytes >= len as u64);
        evict(dir.path());
    }
    drop(volume);
    let volume = Volume::open(dir.path(), VID, Tier::Hot, VolumeConfig::default()).unwrap();
    assert_eq!(volume.format_version(), 1);
    assert_eq!(volume.scrub().corrupt, Vec::<NeedleId>::new());
}
