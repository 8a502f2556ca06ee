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
    Cookie, Durability, Error, NeedleId, NeedleMeta, NeedleWrite, ReadPlan, Tier, Volume,
    VolumeConfig, VolumeId,
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
        .offset
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
        assert_eq!(
            read.needle.data.as_ref(),
            blob(id, len).as_slice(),
            "needle {id}"
        );
        assert_eq!(read.needle.meta.content_type, "image/jpeg");
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
