//! The index of a sealed data file that is not on this disk as one local
//! file: an object in the cold store ([`crate::cold`]) or the data shards of
//! an erasure-coded volume ([`crate::erasure`]).
//!
//! Both keep the same three things locally: the index of the data file as it
//! was sealed (same format as `.idx`), a journal of the needles deleted since
//! (16 bytes each, fsynced per delete), and from the two the live needles with
//! their records' places. A read fetches the record's bytes from wherever the
//! data is and hands them to [`SealedIndex::decode`], which verifies the
//! record's checksum before any byte is served.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::file::write_atomically;
use crate::format::{
    self, ALIGNMENT, INDEX_ENTRY_LEN, INDEX_HEADER_LEN, IndexEntry, IndexHeader, NEEDLE_HEADER_LEN,
    NeedleHeader,
};
use crate::index::NeedleIndex;
use crate::types::{Cookie, NeedleId, VolumeId, unix_now};
use crate::volume::Needle;

/// Length of one entry of a delete journal (`.tomb`, `.ecj`): needle id
/// (u64 LE), CRC-32 of those 8 bytes (u32 LE), 4 zero bytes.
pub const TOMB_ENTRY_LEN: usize = 16;

/// Reads an index file's entries, stopping at a torn tail.
pub fn read_index_file(path: &Path, id: VolumeId) -> Result<Vec<IndexEntry>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_index(&bytes, id, path)
}

/// Decodes the bytes of an index file of volume `id` (`path` names them
/// in errors), stopping at a torn tail.
pub fn parse_index(bytes: &[u8], id: VolumeId, path: &Path) -> Result<Vec<IndexEntry>> {
    if bytes.len() < INDEX_HEADER_LEN {
        return Err(Error::BadFile {
            path: path.to_owned(),
            reason: "index shorter than its header".into(),
        });
    }
    let header = IndexHeader::decode(&bytes[..INDEX_HEADER_LEN]).map_err(|e| Error::BadFile {
        path: path.to_owned(),
        reason: format!("bad index header: {e}"),
    })?;
    if header.volume_id != id {
        return Err(Error::BadFile {
            path: path.to_owned(),
            reason: format!("index of volume {}", header.volume_id),
        });
    }
    Ok(bytes[INDEX_HEADER_LEN..]
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(IndexEntry::decode)
        .collect())
}

/// Writes an index file holding `entries`, atomically.
pub fn write_index_file(path: &Path, id: VolumeId, entries: &[IndexEntry]) -> Result<()> {
    let mut buf = Vec::with_capacity(INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN);
    buf.extend_from_slice(&IndexHeader { volume_id: id }.encode());
    for entry in entries {
        entry.encode(&mut buf);
    }
    write_atomically(path, &buf)
}

/// Reads the needle ids in a delete journal, ignoring a torn or corrupt
/// tail; a missing journal is an empty one.
pub fn read_tomb_file(path: &Path) -> Result<Vec<NeedleId>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(parse_tombs(&bytes))
}

/// Decodes the bytes of a delete journal, ignoring a torn or corrupt tail.
pub fn parse_tombs(bytes: &[u8]) -> Vec<NeedleId> {
    let mut ids = Vec::new();
    for chunk in bytes.chunks_exact(TOMB_ENTRY_LEN) {
        let id: [u8; 8] = chunk[..8].try_into().unwrap_or_default();
        let crc: [u8; 4] = chunk[8..12].try_into().unwrap_or_default();
        if crc32fast::hash(&id) != u32::from_le_bytes(crc) {
            break;
        }
        ids.push(NeedleId(u64::from_le_bytes(id)));
    }
    ids
}

/// Writes a delete journal holding `ids`, atomically.
pub fn write_tomb_file(path: &Path, ids: &[NeedleId]) -> Result<()> {
    let mut buf = Vec::with_capacity(ids.len() * TOMB_ENTRY_LEN);
    for id in ids {
        buf.extend_from_slice(&tomb_entry(*id));
    }
    write_atomically(path, &buf)
}

/// One journal entry deleting `id`.
pub fn tomb_entry(id: NeedleId) -> [u8; TOMB_ENTRY_LEN] {
    let mut entry = [0u8; TOMB_ENTRY_LEN];
    entry[..8].copy_from_slice(&id.0.to_le_bytes());
    entry[8..12].copy_from_slice(&crc32fast::hash(&id.0.to_le_bytes()).to_le_bytes());
    entry
}

struct State {
    index: NeedleIndex,
    /// Start offsets (divided by 8) of every record in the data file,
    /// sorted: a record ends at most where the next one starts.
    bounds: Vec<u32>,
    live_bytes: u64,
    garbage_bytes: u64,
    /// Record length of each live needle, to account deletes.
    lens: HashMap<NeedleId, u64>,
}

/// Live needles, sizes and the delete journal of a sealed data file of
/// `data_len` bytes held elsewhere.
pub struct SealedIndex {
    volume: VolumeId,
    data_len: u64,
    state: RwLock<State>,
    journal: Mutex<File>,
    journal_path: PathBuf,
}

impl std::fmt::Debug for SealedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedIndex")
            .field("volume", &self.volume)
            .field("journal", &self.journal_path)
            .finish_non_exhaustive()
    }
}

/// Counts of a [`SealedIndex`], for stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedCounts {
    /// Live needles.
    pub needles: u64,
    /// Bytes of live records (and tombstone records of the sealed file).
    pub live_bytes: u64,
    /// Bytes of deleted or overwritten records.
    pub garbage_bytes: u64,
    /// Heap bytes of the index.
    pub memory_bytes: u64,
}

impl SealedIndex {
    /// Builds the index of volume `volume` from the sealed file's index
    /// `entries` and the journal at `journal_path` (created if missing).
    pub fn open(
        volume: VolumeId,
        entries: &[IndexEntry],
        data_len: u64,
        journal_path: &Path,
    ) -> Result<SealedIndex> {
        let mut index = NeedleIndex::new();
        let mut lens = HashMap::new();
        let mut bounds = Vec::with_capacity(entries.len());
        let (mut live_bytes, mut garbage_bytes) = (0u64, 0u64);
        for entry in entries {
            if entry.offset + entry.record_len <= data_len {
                bounds.push((entry.offset / ALIGNMENT) as u32);
            }
            if entry.tombstone {
                // Kept for good, as in a local volume: live, not garbage.
                live_bytes += entry.record_len;
                if index.remove(entry.needle_id).is_some() {
                    let len = lens.remove(&entry.needle_id).unwrap_or(0);
                    live_bytes -= len;
                    garbage_bytes += len;
                }
            } else if entry.offset + entry.record_len <= data_len {
                if index
                    .insert(entry.needle_id, entry.offset, entry.record_len)
                    .is_some()
                {
                    let len = lens.remove(&entry.needle_id).unwrap_or(0);
                    live_bytes -= len;
                    garbage_bytes += len;
                }
                lens.insert(entry.needle_id, entry.record_len);
                live_bytes += entry.record_len;
            }
        }
        for needle in read_tomb_file(journal_path)? {
            if index.remove(needle).is_some() {
                let len = lens.remove(&needle).unwrap_or(0);
                live_bytes -= len;
                garbage_bytes += len;
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(journal_path)
            .map_err(|e| Error::io(journal_path, e))?;
        Ok(SealedIndex {
            volume,
            data_len,
            state: RwLock::new(State {
                index,
                bounds,
                live_bytes,
                garbage_bytes,
                lens,
            }),
            journal: Mutex::new(journal),
            journal_path: journal_path.to_owned(),
        })
    }

    /// Length of the sealed data file.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The byte range of the data file holding a live needle's record: the
    /// record exactly if the index knows its length, else up to the next
    /// record's start (never past it).
    pub fn locate(&self, id: NeedleId) -> Result<Range<u64>> {
        let state = self.state.read();
        let (offset, len) = state.index.get_record(id).ok_or(Error::NeedleNotFound {
            volume: self.volume,
            needle: id,
        })?;
        if let Some(len) = len {
            return Ok(offset..(offset + len).min(self.data_len));
        }
        let key = (offset / ALIGNMENT) as u32;
        let next = state.bounds.partition_point(|&b| b <= key);
        let end = state
            .bounds
            .get(next)
            .map_or(self.data_len, |&b| u64::from(b) * ALIGNMENT);
        Ok(offset..end.min(self.data_len))
    }

    /// Checks the header fetched from the start of a needle's range: the
    /// right needle, and the right cookie.
    pub fn check_header(&self, id: NeedleId, cookie: Cookie, bytes: &[u8]) -> Result<NeedleHeader> {
        let corrupt = |reason| Error::Corrupt {
            volume: self.volume,
            offset: 0,
            reason,
        };
        let header = NeedleHeader::decode(bytes.get(..NEEDLE_HEADER_LEN).ok_or(corrupt("short"))?)
            .map_err(|_| corrupt("bad needle header"))?;
        if header.needle_id != id || header.is_tombstone() {
            return Err(corrupt("index points at another record"));
        }
        if header.cookie != cookie {
            return Err(Error::WrongCookie {
                volume: self.volume,
                needle: id,
            });
        }
        Ok(header)
    }

    /// Turns the bytes fetched for [`SealedIndex::locate`]'s range into the
    /// needle, verifying the record checksum (corrupt bytes are an error,
    /// never data) and the cookie.
    pub fn decode(&self, id: NeedleId, cookie: Cookie, bytes: Bytes) -> Result<Needle> {
        let header = self.check_header(id, cookie, &bytes)?;
        let record_len = header.record_len() as usize;
        let corrupt = |reason| Error::Corrupt {
            volume: self.volume,
            offset: 0,
            reason,
        };
        let record = bytes.get(..record_len).ok_or(corrupt("record cut short"))?;
        let decoded = format::decode_needle(record).map_err(|_| corrupt("checksum mismatch"))?;
        let meta = decoded.meta.clone();
        if meta.expires_at.is_some_and(|t| t <= unix_now()) {
            return Err(Error::Expired {
                volume: self.volume,
                needle: id,
            });
        }
        let checksum = decoded.checksum;
        let data = bytes.slice(NEEDLE_HEADER_LEN..NEEDLE_HEADER_LEN + header.data_len as usize);
        Ok(Needle {
            id,
            data,
            meta,
            checksum,
        })
    }

    /// Deletes a needle: appends it to the journal and fsyncs. The caller
    /// has checked the cookie (see [`SealedIndex::check_header`]).
    pub fn delete(&self, id: NeedleId) -> Result<()> {
        let mut journal = self.journal.lock();
        if self.state.read().index.get(id).is_none() {
            return Err(Error::NeedleNotFound {
                volume: self.volume,
                needle: id,
            });
        }
        journal
            .write_all(&tomb_entry(id))
            .and_then(|()| journal.sync_data())
            .map_err(|e| Error::io(&self.journal_path, e))?;
        let mut state = self.state.write();
        if state.index.remove(id).is_some() {
            let len = state.lens.remove(&id).unwrap_or(0);
            state.live_bytes -= len;
            state.garbage_bytes += len;
        }
        Ok(())
    }

    /// Deletes every needle of `ids` still live here: one journal append
    /// and one fsync for all of them. Ids not live here (deleted already,
    /// or never in this volume) are skipped. Answers how many were deleted.
    pub fn delete_many(&self, ids: &[NeedleId]) -> Result<usize> {
        let mut journal = self.journal.lock();
        let live: Vec<NeedleId> = {
            let state = self.state.read();
            let mut seen = std::collections::HashSet::new();
            ids.iter()
                .copied()
                .filter(|id| state.index.get(*id).is_some() && seen.insert(*id))
                .collect()
        };
        if live.is_empty() {
            return Ok(0);
        }
        let entries: Vec<u8> = live.iter().flat_map(|id| tomb_entry(*id)).collect();
        journal
            .write_all(&entries)
            .and_then(|()| journal.sync_data())
            .map_err(|e| Error::io(&self.journal_path, e))?;
        let mut state = self.state.write();
        for id in &live {
            if state.index.remove(*id).is_some() {
                let len = state.lens.remove(id).unwrap_or(0);
                state.live_bytes -= len;
                state.garbage_bytes += len;
            }
        }
        Ok(live.len())
    }

    /// Holds deletes while `f` runs (a move or a decode applies the journal
    /// to a data file under it).
    pub fn with_deletes_held<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _journal = self.journal.lock();
        f()
    }

    /// Every live needle id.
    pub fn needle_ids(&self) -> Vec<NeedleId> {
        self.state.read().index.iter().map(|(id, _)| id).collect()
    }

    /// Live needles and bytes.
    pub fn counts(&self) -> SealedCounts {
        let state = self.state.read();
        SealedCounts {
            needles: state.index.len() as u64,
            live_bytes: state.live_bytes,
            garbage_bytes: state.garbage_bytes,
            memory_bytes: (state.index.memory_bytes() + state.bounds.capacity() * 4) as u64,
        }
    }
}
