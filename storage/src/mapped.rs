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

    /// Length of the mapping (the most the file may grow to while mapped).
    pub(crate) fn capacity(&self) -> u64 {
        self.map.len() as u64
    }
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
