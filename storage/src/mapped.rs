//! A read-only memory map of a growing, append-only data file, and zero-copy
//! slices of it that keep the mapping alive.
//!
//! The map reserves address space for the volume's maximum size up front, so
//! appends never remap: the writer extends the file with `pwrite`, and the
//! shared mapping sees the new bytes through the page cache. Only the part
//! below [`MappedFile::readable_len`] is ever touched; pages past the end of
//! the file would fault with SIGBUS.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, Result};

/// A shared, read-only map of one data file.
#[derive(Debug)]
pub(crate) struct MappedFile {
    map: Mmap,
    /// Bytes known to exist in the file (it only grows while mapped, except
    /// for recovery's torn-tail cut, which lowers this first).
    readable_len: AtomicU64,
}

impl MappedFile {
    /// Maps `file`, reserving `reserve` bytes of address space (at least the
    /// file's current length).
    pub(crate) fn map(
        file: &File,
        file_len: u64,
        reserve: u64,
        path: &std::path::Path,
    ) -> Result<Arc<Self>> {
        let len = reserve.max(file_len).max(1);
        let len = usize::try_from(len).map_err(|_| Error::BadFile {
            path: path.to_owned(),
            reason: "volume too large to map".into(),
        })?;
        // SAFETY: the map is read-only and private to this process's volume.
        // The file is only ever appended to by this volume (bytes below
        // `readable_len` are never rewritten while they are referenced), and
        // it is never truncated below `readable_len`. Another process
        // modifying a volume file is outside hayloft's contract, as for any
        // database file.
        let map =
            unsafe { MmapOptions::new().len(len).map(file) }.map_err(|e| Error::io(path, e))?;
        Ok(Arc::new(MappedFile {
            map,
            readable_len: AtomicU64::new(file_len),
        }))
    }

    /// Bytes of the file that may be read through the map.
    pub(crate) fn readable_len(&self) -> u64 {
        self.readable_len.load(Ordering::Acquire)
    }

    /// Records that the file now holds at least `len` bytes (called after the
    /// `pwrite` that put them there returned).
    pub(crate) fn extend_readable(&self, len: u64) {
        self.readable_len.fetch_max(len, Ordering::AcqRel);
    }

    /// Lowers the readable length before the file is truncated to `len`.
    pub(crate) fn shrink_readable(&self, len: u64) {
        self.readable_len.store(len, Ordering::Release);
    }

    /// The bytes at `offset .. offset + len`, or `None` past the readable end.
    #[inline]
    pub(crate) fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.readable_len() {
            return None;
        }
        // SAFETY: `end` is within the readable part of the file, which is
        // within the mapping (the mapping covers at least the file's length
        // at open plus the reserve, and appends are bounded by the reserve),
        // and those pages are backed by the file, so they are valid for reads
        // for as long as `self` (and so the mapping) lives.
        Some(unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(offset as usize), len as usize)
        })
    }

    /// True if every page of `offset .. offset + len` is in the page cache
    /// (`mincore`), so reading it through the map waits for no disk (a
    /// page not yet in this process's page tables is a minor fault: no
    /// I/O). False past the readable end, and if the kernel cannot say.
    ///
    /// A page may still be evicted between this answer and the read that
    /// follows; that read then faults it in from the disk (one page at a
    /// time, with readahead): rare, and bounded by one fault per read.
    pub(crate) fn is_resident(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if end > self.readable_len() {
            return false;
        }
        if len == 0 {
            return true;
        }
        let page = page_size();
        let start = offset / page * page;
        let pages = (end - start).div_ceil(page) as usize;
        let mut on_stack = [0u8; 64];
        let mut on_heap = Vec::new();
        let vec = if pages <= on_stack.len() {
            &mut on_stack[..pages]
        } else {
            on_heap.resize(pages, 0);
            &mut on_heap[..]
        };
        // SAFETY: `start` is page-aligned and `start .. end` lies inside the
        // mapping (`end` is within the readable part of the file, which is
        // within the mapping, and the mapping starts on a page boundary);
        // mincore writes one byte per page of that range into `vec`, which
        // holds exactly `pages` bytes. It reads no memory of the range.
        let rc = unsafe {
            libc::mincore(
                self.map.as_ptr().add(start as usize) as *mut libc::c_void,
                (end - start) as usize,
                vec.as_mut_ptr(),
            )
        };
        rc == 0 && vec.iter().all(|page| page & 1 == 1)
    }

    /// Length of the mapping (the most the file may grow to while mapped).
    pub(crate) fn capacity(&self) -> u64 {
        self.map.len() as u64
    }
}

/// The system's page size.
pub(crate) fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant; no memory of ours.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
    })
}

/// A range of a [`MappedFile`] that keeps the mapping alive.
struct MappedSlice {
    file: Arc<MappedFile>,
    offset: u64,
    len: u64,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        // The range was checked when the slice was made, and readable_len
        // never drops below a range handed out (see `shrink_readable`).
        self.file.slice(self.offset, self.len).unwrap_or_default()
    }
}

/// Zero-copy `Bytes` over `offset .. offset + len` of the map, or `None` if the
/// range is past the readable end. The bytes stay valid after the volume is
/// closed, compacted or moved: they hold the mapping, and the file they map is
/// never rewritten in place.
pub(crate) fn mapped_bytes(file: &Arc<MappedFile>, offset: u64, len: u64) -> Option<Bytes> {
    file.slice(offset, len)?;
    Some(Bytes::from_owner(MappedSlice {
        file: Arc::clone(file),
        offset,
        len,
    }))
}
