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
use crate::format::{self, NEEDLE_HEADER_LEN, NeedleHeader, NeedleMeta, chunks};
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
    /// The needle (checksummed if at most the `verify_up_to` given), or
    /// the part of it asked for ([`DiskRead::run_part`]).
    pub part: NeedlePart,
    /// Bytes read from the file (the kernel reads them in whole pages).
    pub disk_bytes: u64,
}

/// What a read will need of the blob, said before it starts, so that it can
/// choose how to read (see [`shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// No byte of the data: a HEAD, a gRPC `Stat`.
    Head,
    /// Probably a part of the data: a `Range`, a gRPC read at an offset.
    Range,
    /// All of it.
    Whole,
}

/// What a read needs of the blob, decided once its size, record CRC and
/// metadata are known (they decide conditional requests and ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// No byte of the data.
    Nothing,
    /// Bytes `start..end` of the data (clipped to the blob).
    Bytes {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// All of it.
    Whole,
}

/// What a read knows of a needle before any of its data: for [`Part`].
#[derive(Debug, Clone, Copy)]
pub struct NeedleInfo<'a> {
    /// The blob's length.
    pub size: u64,
    /// The record CRC (the ETag's source).
    pub checksum: u32,
    /// Content type, file name, times.
    pub meta: &'a NeedleMeta,
}

/// A needle, or a part of its data.
#[derive(Debug, Clone)]
pub struct NeedlePart {
    /// The needle; its `data` is bytes `start..start + data.len()` of the
    /// blob.
    pub needle: Needle,
    /// The blob's length.
    pub size: u64,
    /// Where `needle.data` starts in the blob.
    pub start: u64,
}

impl NeedlePart {
    /// The whole needle.
    pub fn whole(needle: Needle) -> Self {
        NeedlePart {
            size: needle.data.len() as u64,
            start: 0,
            needle,
        }
    }

    /// Bytes `start..end` of the blob, if this part holds them.
    pub fn bytes(&self, start: u64, end: u64) -> Option<Bytes> {
        let from = start.checked_sub(self.start)?;
        let to = end.checked_sub(self.start)?;
        (from <= to && to <= self.needle.data.len() as u64)
            .then(|| self.needle.data.slice(from as usize..to as usize))
    }
}

/// How a read from disk gets its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One `pread` of the whole record (its length known), checked whole:
    /// one device operation.
    Record,
    /// The header first; then, in format 2, the tail (metadata, record CRC,
    /// chunk CRCs: [`HEAD_BYTES`] or so) and only the chunks of data the
    /// read needs, each checked against its CRC. Format 1 has no chunk
    /// CRCs: the whole record then, as [`Shape::Record`].
    HeaderFirst,
}

/// A HEAD of a record up to this long reads it whole: its header and tail
/// are in the same page or two, which the device reads whole anyway.
pub const HEAD_RECORD_MAX: u64 = 8 << 10;

/// A ranged read of a record up to this long reads it whole, in one
/// operation; a longer one reads its header, its tail and the range's
/// chunks (three operations of about the range's bytes).
pub const RANGE_RECORD_MAX: u64 = 256 << 10;

/// About what the header and tail of a format-2 record take to read (two
/// pages); for the docs and the tests.
pub const HEAD_BYTES: u64 = 8 << 10;

/// How to read a record of `record_len` (`None`: longer than the index
/// keeps) for a read that needs `hint` of it. Pure.
pub fn shape(record_len: Option<u64>, hint: Hint) -> Shape {
    match (record_len, hint) {
        (Some(len), Hint::Head) if len <= HEAD_RECORD_MAX => Shape::Record,
        (Some(len), Hint::Range) if len <= RANGE_RECORD_MAX => Shape::Record,
        (Some(_), Hint::Whole) => Shape::Record,
        _ => Shape::HeaderFirst,
    }
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
    /// Reads the whole needle from disk: blocks; run it off the event loop.
    pub fn run(self) -> Result<FromDisk> {
        self.run_part(Hint::Whole, |_| Part::Whole)
    }

    /// Reads from disk what `want` asks for once the needle's size, record
    /// CRC and metadata are known (from its header and tail, in format 2,
    /// before any of its data is read); `hint` says what it will probably
    /// ask, to choose how to read ([`shape`]). Every byte returned is
    /// verified on the bytes read: by the record CRC, or in format 2 by the
    /// CRCs of the chunks that hold it. Blocks; run it off the event loop.
    pub fn run_part(
        self,
        hint: Hint,
        want: impl FnOnce(&NeedleInfo<'_>) -> Part,
    ) -> Result<FromDisk> {
        // Tests hold reads here to show that nothing waits for them.
        while crate::failpoint::active("disk-read-hold") {
            std::thread::sleep(Duration::from_millis(5));
        }
        // A disk that fails the read (tests).
        crate::failpoint::fail_at("disk-read").map_err(|e| Error::io(self.files.data.path(), e))?;
        if let (Shape::Record, Some(len)) = (shape(self.len, hint), self.len) {
            return self.read_record(len, 0);
        }
        let mut header = [0u8; NEEDLE_HEADER_LEN];
        self.read_at(&mut header, self.offset)?;
        let disk_bytes = header.len() as u64;
        let header = self.checked_header(&header)?;
        if header.has_chunk_crcs() {
            self.read_chunked(header, disk_bytes, want)
        } else {
            // Format 1: nothing verifies less than the whole record.
            self.read_record(header.record_len(), disk_bytes)
        }
    }

    /// The whole record, `len` bytes: in one `pread` if it is at most
    /// [`BUFFERED_READ_MAX`], else in chunks through the page cache.
    fn read_record(self, len: u64, disk_bytes: u64) -> Result<FromDisk> {
        if self.offset.saturating_add(len) > self.files.map.readable_len() {
            return Err(self.corrupt("record past end of file"));
        }
        if len <= BUFFERED_READ_MAX {
            let record = crate::file::read_to_vec(&self.files.reader, len as usize, self.offset)
                .map_err(|e| Error::io(self.files.data.path(), e))?;
            let needle = self.needle_from_buffer(record)?;
            return Ok(FromDisk {
                part: NeedlePart::whole(needle),
                disk_bytes: disk_bytes + len,
            });
        }
        self.read_long(len, disk_bytes)
    }

    /// A format-2 record, header read: its tail (one `pread`: metadata,
    /// record CRC, chunk CRCs, checked by the trailer CRC), then the chunks
    /// of data that hold what `want` asks for (one `pread`), each checked
    /// against its CRC.
    fn read_chunked(
        self,
        header: NeedleHeader,
        mut disk_bytes: u64,
        want: impl FnOnce(&NeedleInfo<'_>) -> Part,
    ) -> Result<FromDisk> {
        if self.offset.saturating_add(header.record_len()) > self.files.map.readable_len() {
            return Err(self.corrupt("record past end of file"));
        }
        let meta_at = header.metadata_offset();
        let mut tail = vec![0u8; header.tail_end() - meta_at];
        self.read_at(&mut tail, self.offset + meta_at as u64)?;
        disk_bytes += tail.len() as u64;
        let decoded =
            format::decode_tail(&header, &tail).map_err(|_| self.corrupt("checksum mismatch"))?;
        if decoded.meta.expires_at.is_some_and(|t| t <= unix_now()) {
            return Err(Error::Expired {
                volume: self.volume,
                needle: self.id,
            });
        }
        let size = u64::from(header.data_len);
        let info = NeedleInfo {
            size,
            checksum: decoded.checksum,
            meta: &decoded.meta,
        };
        let (start, end) = match want(&info) {
            Part::Nothing => (0, 0),
            Part::Bytes { start, end } => (start.min(end).min(size), end.min(size)),
            Part::Whole => (0, size),
        };
        let data = match chunks::covering(start, end, size) {
            None => Bytes::new(),
            Some((first, last)) => {
                disk_bytes += last - first;
                self.read_span(first, last, (start, end), decoded.chunk_crcs)?
            }
        };
        let needle = Needle {
            id: self.id,
            data,
            meta: decoded.meta,
            checksum: decoded.checksum,
        };
        Ok(FromDisk {
            part: NeedlePart {
                needle,
                size,
                start,
            },
            disk_bytes,
        })
    }

    /// Bytes `wanted` of the data, reading the whole chunks `first..last`
    /// and checking each against `crcs`. Up to [`BUFFERED_READ_MAX`] into a
    /// buffer served as it is; more in 1 MiB pieces, checked as they pass,
    /// which leaves them in the page cache, then served through the map.
    fn read_span(&self, first: u64, last: u64, wanted: (u64, u64), crcs: &[u8]) -> Result<Bytes> {
        let data_at = self.offset + NEEDLE_HEADER_LEN as u64;
        let (start, end) = wanted;
        if last - first <= BUFFERED_READ_MAX {
            let span = crate::file::read_to_vec(
                &self.files.reader,
                (last - first) as usize,
                data_at + first,
            )
            .map_err(|e| Error::io(self.files.data.path(), e))?;
            chunks::verify(&span, first, crcs).map_err(|_| self.corrupt("checksum mismatch"))?;
            return Ok(Bytes::from(span).slice((start - first) as usize..(end - first) as usize));
        }
        // CHUNK is a multiple of the chunk length: every piece is whole chunks.
        let mut piece = vec![0u8; CHUNK.min(last - first) as usize];
        let mut at = first;
        while at < last {
            let n = CHUNK.min(last - at) as usize;
            self.read_at(&mut piece[..n], data_at + at)?;
            chunks::verify(&piece[..n], at, crcs).map_err(|_| self.corrupt("checksum mismatch"))?;
            at += n as u64;
        }
        // Every page of the span is in the page cache now (a page evicted
        // already is faulted in again, here, off the event loop).
        crate::mapped::mapped_bytes(&self.files.map, data_at + start, end - start)
            .ok_or_else(|| self.corrupt("record past end of file"))
    }

    /// A format-1 record of more than [`BUFFERED_READ_MAX`]: read in chunks
    /// (into the page cache), checksummed on the way if asked, then served
    /// through the map.
    fn read_long(self, len: u64, mut disk_bytes: u64) -> Result<FromDisk> {
        let mut chunk = vec![0u8; CHUNK.min(len) as usize];
        let mut checked: Option<(NeedleHeader, crc32fast::Hasher)> = None;
        let mut at = 0;
        while at < len {
            let n = CHUNK.min(len - at) as usize;
            self.read_at(&mut chunk[..n], self.offset + at)?;
            disk_bytes += n as u64;
            // The header comes with the first chunk: a wrong cookie reads
            // no more. The record CRC covers it as `record_crc_start` says.
            if checked.is_none() {
                let header = self.checked_header(&chunk[..n])?;
                checked = Some((header, header.record_crc_start()));
            }
            if let Some((header, hasher)) = checked.as_mut() {
                let skip = (NEEDLE_HEADER_LEN as u64).saturating_sub(at).min(n as u64) as usize;
                let crc_at = header.checksum_offset() as u64;
                let hashed = crc_at.saturating_sub(at).min(n as u64) as usize;
                if hashed > skip {
                    hasher.update(&chunk[skip..hashed]);
                }
            }
            at += n as u64;
        }
        let Some((header, hasher)) = checked else {
            return Err(self.corrupt("empty record"));
        };
        let verify = u64::from(header.data_len) <= self.verify_up_to;
        // Every page of the record is in the page cache now (a page evicted
        // already is faulted in again, here, off the event loop).
        let needle = needle_from_map(self.volume, &self.files, self.offset, header)?;
        if verify && hasher.finalize() != needle.checksum {
            return Err(self.corrupt("checksum mismatch"));
        }
        Ok(FromDisk {
            part: NeedlePart::whole(needle),
            disk_bytes,
        })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn small_records_are_read_whole_and_large_ones_by_their_parts() {
        // The index knows the length: one pread of the record, unless a
        // HEAD or a range needs much less of it.
        assert_eq!(shape(Some(4176), Hint::Head), Shape::Record);
        assert_eq!(shape(Some(HEAD_RECORD_MAX), Hint::Head), Shape::Record);
        assert_eq!(
            shape(Some(HEAD_RECORD_MAX + 8), Hint::Head),
            Shape::HeaderFirst
        );
        assert_eq!(shape(Some(65_616), Hint::Range), Shape::Record);
        assert_eq!(shape(Some(RANGE_RECORD_MAX), Hint::Range), Shape::Record);
        assert_eq!(
            shape(Some(RANGE_RECORD_MAX + 8), Hint::Range),
            Shape::HeaderFirst
        );
        assert_eq!(shape(Some(BUFFERED_READ_MAX), Hint::Whole), Shape::Record);
        // Longer than the index keeps: the header says how long.
        for hint in [Hint::Head, Hint::Range, Hint::Whole] {
            assert_eq!(shape(None, hint), Shape::HeaderFirst);
        }
    }

    #[test]
    fn a_part_gives_only_the_bytes_it_holds() {
        let needle = Needle {
            id: NeedleId(1),
            data: Bytes::from_static(b"0123456789"),
            meta: NeedleMeta::default(),
            checksum: 0,
        };
        let whole = NeedlePart::whole(needle.clone());
        assert_eq!(whole.size, 10);
        assert_eq!(whole.bytes(2, 5).unwrap().as_ref(), b"234");
        assert!(whole.bytes(2, 11).is_none());
        let part = NeedlePart {
            needle: Needle {
                data: needle.data.slice(4..8),
                ..needle
            },
            size: 10,
            start: 4,
        };
        assert_eq!(part.bytes(4, 8).unwrap().as_ref(), b"4567");
        assert_eq!(part.bytes(5, 6).unwrap().as_ref(), b"5");
        assert!(part.bytes(3, 6).is_none());
        assert!(part.bytes(5, 9).is_none());
    }
}
