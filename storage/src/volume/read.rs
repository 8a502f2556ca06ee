//! Reads that never wait for the disk on the caller's thread.
//!
//! [`Volume::plan_read`] looks the needle up and asks the kernel whether its
//! whole record is in the page cache (`mincore` on the map: no I/O). If it
//! is, the needle is read through the map at once, zero copy, as before:
//! [`ReadPlan::Resident`]. If not, nothing of the record is touched and the
//! caller gets a [`DiskRead`] to run on a thread that may block (the volume
//! server runs it on a bounded pool), so the event loop never waits for the
//! disk and a hot read never queues behind a cold one.
//!
//! A [`DiskRead`] is one `pread` of the whole record (the index knows the
//! lengths of records up to [`crate::index::MAX_KNOWN_LEN`]) through a
//! descriptor opened with `POSIX_FADV_RANDOM`, so the device reads the
//! record's pages and no readahead window: one disk operation of about the
//! blob's size, as in Haystack. The checksum is verified on the bytes read,
//! and they are served from that buffer (the pages are in the page cache
//! too now, so the next read of the blob is a resident one).
//!
//! Records longer than [`BUFFERED_READ_MAX`] are not buffered whole: they
//! are read in 1 MiB chunks, checksummed as they pass, which leaves their
//! pages in the page cache, and then served through the map. Memory per
//! read in flight is therefore at most `BUFFERED_READ_MAX` or one chunk.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Files, Needle, Volume, unix_now};
use crate::error::{Error, Result};
use crate::format::{self, NEEDLE_HEADER_LEN, NeedleHeader};
use crate::types::{Cookie, NeedleId, VolumeId};

/// Records up to this length are read from disk into a buffer of their own
/// and served from it; longer ones are read in chunks into the page cache
/// and served through the map.
pub const BUFFERED_READ_MAX: u64 = crate::index::MAX_KNOWN_LEN;

/// Chunk of a long record read from disk.
const CHUNK: u64 = 1 << 20;

/// What a read comes to without waiting for the disk.
#[derive(Debug)]
pub enum ReadPlan {
    /// The record is in the page cache: the needle, read through the map.
    Resident(Needle),
    /// Some of the record is on the disk only: run [`DiskRead::run`] where
    /// blocking is fine.
    Disk(DiskRead),
}

/// A read that must wait for the disk: the record's place, and what to check.
pub struct DiskRead {
    volume: VolumeId,
    id: NeedleId,
    cookie: Cookie,
    files: Arc<Files>,
    offset: u64,
    /// The record's length, if the index knows it.
    len: Option<u64>,
    verify_up_to: u64,
}

impl std::fmt::Debug for DiskRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskRead")
            .field("volume", &self.volume)
            .field("id", &self.id)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A needle read from disk, and the bytes read to get it.
#[derive(Debug)]
pub struct FromDisk {
    /// The needle (checksummed if at most the `verify_up_to` given).
    pub needle: Needle,
    /// Bytes read from the file (the kernel reads them in whole pages).
    pub disk_bytes: u64,
}

impl Volume {
    /// Looks `id` up and reads it if its record is in the page cache (the
    /// checksum verified if the blob is at most `verify_up_to` bytes);
    /// otherwise says how to read it from disk, having touched nothing of
    /// the record. Never waits for the disk (see the module doc for the
    /// one exception, a page evicted between the check and the read).
    pub fn plan_read(&self, id: NeedleId, cookie: Cookie, verify_up_to: u64) -> Result<ReadPlan> {
        let (found, files) = {
            let state = self.state.read();
            (state.index.get_record(id), Arc::clone(&state.files))
        };
        let (offset, len) = found.ok_or(Error::NeedleNotFound {
            volume: self.id,
            needle: id,
        })?;
        let map = &files.map;
        let resident = match len {
            Some(len) => map.is_resident(offset, len),
            None => {
                map.is_resident(offset, NEEDLE_HEADER_LEN as u64)
                    && super::record_len_at(map, offset)
                        .is_none_or(|len| map.is_resident(offset, len))
            }
        };
        if !resident {
            return Ok(ReadPlan::Disk(DiskRead {
                volume: self.id,
                id,
                cookie,
                files,
                offset,
                len,
                verify_up_to,
            }));
        }
        let header = self.header_at(map, offset, id)?;
        if header.cookie != cookie {
            return Err(Error::WrongCookie {
                volume: self.id,
                needle: id,
            });
        }
        self.needle_in_map(&files, offset, header, Some(verify_up_to))
            .map(ReadPlan::Resident)
    }
}

impl DiskRead {
    /// Reads the needle from disk: blocks; run it off the event loop.
    pub fn run(self) -> Result<FromDisk> {
        // Tests hold reads here to show that nothing waits for them.
        while crate::failpoint::active("disk-read-hold") {
            std::thread::sleep(Duration::from_millis(5));
        }
        // A disk that fails the read (tests).
        crate::failpoint::fail_at("disk-read").map_err(|e| Error::io(self.files.data.path(), e))?;
        let mut disk_bytes = 0;
        let len = match self.len {
            Some(len) => len,
            None => {
                let mut header = [0u8; NEEDLE_HEADER_LEN];
                self.read_at(&mut header, self.offset)?;
                disk_bytes += header.len() as u64;
                self.checked_header(&header)?.record_len()
            }
        };
        if self.offset.saturating_add(len) > self.files.map.readable_len() {
            return Err(self.corrupt("record past end of file"));
        }
        if len <= BUFFERED_READ_MAX {
            let record = crate::file::read_to_vec(&self.files.reader, len as usize, self.offset)
                .map_err(|e| Error::io(self.files.data.path(), e))?;
            disk_bytes += len;
            let needle = self.needle_from_buffer(record)?;
            return Ok(FromDisk { needle, disk_bytes });
        }
        self.read_long(len, disk_bytes)
    }

    /// A record of more than [`BUFFERED_READ_MAX`]: read in chunks (into
    /// the page cache), checksummed on the way if asked, then served
    /// through the map.
    fn read_long(self, len: u64, mut disk_bytes: u64) -> Result<FromDisk> {
        let mut chunk = vec![0u8; CHUNK.min(len) as usize];
        let mut hasher = crc32fast::Hasher::new();
        let mut header = None;
        let mut at = 0;
        while at < len {
            let n = CHUNK.min(len - at) as usize;
            self.read_at(&mut chunk[..n], self.offset + at)?;
            disk_bytes += n as u64;
            // The header comes with the first chunk: a wrong cookie reads
            // no more.
            let header = match header {
                Some(header) => header,
                None => *header.insert(self.checked_header(&chunk[..n])?),
            };
            let crc_at = header.checksum_offset() as u64;
            let hashed = crc_at.saturating_sub(at).min(n as u64) as usize;
            hasher.update(&chunk[..hashed]);
            at += n as u64;
        }
        let Some(header) = header else {
            return Err(self.corrupt("empty record"));
        };
        let verify = u64::from(header.data_len) <= self.verify_up_to;
        // Every page of the record is in the page cache now (a page evicted
        // already is faulted in again, here, off the event loop).
        let needle = needle_from_map(self.volume, &self.files, self.offset, header)?;
        if verify && hasher.finalize() != needle.checksum {
            return Err(self.corrupt("checksum mismatch"));
        }
        Ok(FromDisk { needle, disk_bytes })
    }

    /// Decodes and verifies a whole record read into `record`.
    fn needle_from_buffer(&self, record: Vec<u8>) -> Result<Needle> {
        let header = self.checked_header(&record)?;
        let (meta, checksum, data_len) = if u64::from(header.data_len) <= self.verify_up_to {
            let decoded =
                format::decode_needle(&record).map_err(|_| self.corrupt("checksum mismatch"))?;
            (decoded.meta, decoded.checksum, decoded.data.len())
        } else {
            let crc_at = header.checksum_offset();
            let data_end = NEEDLE_HEADER_LEN + header.data_len as usize;
            let meta = format::NeedleMeta::decode(&record[data_end..crc_at])
                .map_err(|_| self.corrupt("unreadable metadata"))?;
            let mut checksum = [0u8; 4];
            checksum.copy_from_slice(&record[crc_at..crc_at + 4]);
            (meta, u32::from_le_bytes(checksum), header.data_len as usize)
        };
        if meta.expires_at.is_some_and(|t| t <= unix_now()) {
            return Err(Error::Expired {
                volume: self.volume,
                needle: self.id,
            });
        }
        let data = Bytes::from(record).slice(NEEDLE_HEADER_LEN..NEEDLE_HEADER_LEN + data_len);
        Ok(Needle {
            id: self.id,
            data,
            meta,
            checksum,
        })
    }

    /// The record's header from its first bytes: valid, this needle's (not
    /// a tombstone), with the right cookie, and no longer than the index says.
    fn checked_header(&self, bytes: &[u8]) -> Result<NeedleHeader> {
        let header = NeedleHeader::decode(bytes).map_err(|_| self.corrupt("bad needle header"))?;
        if header.needle_id != self.id || header.is_tombstone() {
            return Err(self.corrupt("index points at another record"));
        }
        if self.len.is_some_and(|len| len != header.record_len()) {
            return Err(self.corrupt("record length differs from the index"));
        }
        if header.cookie != self.cookie {
            return Err(Error::WrongCookie {
                volume: self.volume,
                needle: self.id,
            });
        }
        Ok(header)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.files
            .reader
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(self.files.data.path(), e))
    }

    fn corrupt(&self, reason: &'static str) -> Error {
        corrupt(self.volume, self.offset, reason)
    }
}

fn corrupt(volume: VolumeId, offset: u64, reason: &'static str) -> Error {
    tracing::error!(%volume, offset, reason, "corrupt needle");
    Error::Corrupt {
        volume,
        offset,
        reason,
    }
}

/// The needle whose checked header is at `offset`, read through the map
/// (zero copy), its checksum not checked (callers check it, or not).
pub(super) fn needle_from_map(
    volume: VolumeId,
    files: &Files,
    offset: u64,
    header: NeedleHeader,
) -> Result<Needle> {
    let map = &files.map;
    let record = map
        .slice(offset, header.record_len())
        .ok_or_else(|| corrupt(volume, offset, "record past end of file"))?;
    let crc_at = header.checksum_offset();
    let meta =
        format::NeedleMeta::decode(&record[NEEDLE_HEADER_LEN + header.data_len as usize..crc_at])
            .map_err(|_| corrupt(volume, offset, "unreadable metadata"))?;
    if meta.expires_at.is_some_and(|t| t <= unix_now()) {
        return Err(Error::Expired {
            volume,
            needle: header.needle_id,
        });
    }
    let mut checksum = [0u8; 4];
    checksum.copy_from_slice(&record[crc_at..crc_at + 4]);
    let data = crate::mapped::mapped_bytes(
        map,
        offset + NEEDLE_HEADER_LEN as u64,
        u64::from(header.data_len),
    )
    .ok_or_else(|| corrupt(volume, offset, "record past end of file"))?;
    Ok(Needle {
        id: header.needle_id,
        data,
        meta,
        checksum: u32::from_le_bytes(checksum),
    })
}
