//! Opening a volume after a crash.
//!
//! 1. Load the index file. Its entries were appended only after the data
//!    they point at was fsynced, so each is trusted after a bounds check; the
//!    last one is checked against the data file's header. A zero-filled or
//!    partial entry at the end is a torn index tail: it is cut off. A missing,
//!    foreign or inconsistent index file is rebuilt from the data file.
//! 2. Scan the data file from the end of the last indexed record, validating
//!    every record (header checksum, then record checksum):
//!    - a valid record is indexed;
//!    - a valid header whose record runs past the end of the file, or a bad
//!      record with nothing after it, is a torn tail and is cut off;
//!    - a valid header over a bad body (bit rot, or an upload abandoned before
//!      a crash) is skipped whole, reported, and counted as garbage;
//!    - bytes with no valid header are skipped up to the next valid record
//!      (reported), or cut off if none follows.
//! 3. fsync the data file (the scanned records become durable if they were
//!    only in the page cache), then append their entries to the index file
//!    (or write a rebuilt one atomically) and fsync it.

use std::path::Path;
use std::sync::Arc;

use super::{Files, ReadState};
use crate::error::Result;
use crate::file::{VolumeFile, write_atomically};
use crate::format::{
    self, INDEX_ENTRY_LEN, INDEX_HEADER_LEN, IndexEntry, IndexHeader, NEEDLE_HEADER_LEN,
    NEEDLE_MAGIC, NeedleHeader, SUPERBLOCK_LEN,
};
use crate::mapped::MappedFile;
use crate::types::VolumeId;

/// A range of the data file that recovery skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRange {
    /// Offset of the first skipped byte.
    pub offset: u64,
    /// Bytes skipped.
    pub len: u64,
    /// Why.
    pub reason: &'static str,
}

/// What recovery found and did when a volume was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Entries loaded from the index file.
    pub index_entries_loaded: u64,
    /// Why the index file was rebuilt from the data file, if it was.
    pub index_rebuilt: Option<&'static str>,
    /// Records found by scanning the data file past the index.
    pub records_scanned: u64,
    /// Bytes of torn tail cut off the data file.
    pub torn_tail_bytes: u64,
    /// Corrupt ranges skipped in the middle of the data file.
    pub skipped: Vec<SkippedRange>,
}

impl RecoveryReport {
    /// True if the volume was closed cleanly: nothing scanned, cut or skipped.
    pub fn is_clean(&self) -> bool {
        self.index_rebuilt.is_none()
            && self.records_scanned == 0
            && self.torn_tail_bytes == 0
            && self.skipped.is_empty()
    }
}

pub(crate) struct Recovered {
    pub(crate) state: ReadState,
    pub(crate) index_file_len: u64,
    pub(crate) report: RecoveryReport,
}

pub(crate) fn recover(id: VolumeId, files: &Arc<Files>, idx_path: &Path) -> Result<Recovered> {
    let (data, map) = (&files.data, &files.map);
    let mut report = RecoveryReport::default();
    let mut state = ReadState::new(Arc::clone(files));
    let (scan_from, index_len) = match load_index(id, map, idx_path, &mut state) {
        Ok(loaded) => {
            report.index_entries_loaded = loaded.entries;
            (loaded.indexed_end, loaded.valid_len)
        }
        Err(reason) => {
            tracing::warn!(volume = %id, reason, "rebuilding index file from data file");
            report.index_rebuilt = Some(reason);
            state = ReadState::new(Arc::clone(files));
            (SUPERBLOCK_LEN as u64, INDEX_HEADER_LEN as u64)
        }
    };

    let mut scanned = Vec::new();
    if let Some(cut) = scan(map, scan_from, &mut state, &mut scanned, &mut report) {
        report.torn_tail_bytes = map.readable_len() - cut;
        tracing::warn!(volume = %id, offset = cut, bytes = report.torn_tail_bytes, "cutting torn tail");
        map.shrink_readable(cut);
        data.truncate(cut)?;
    }
    report.records_scanned = scanned.len() as u64;
    for skipped in &report.skipped {
        tracing::error!(volume = %id, offset = skipped.offset, len = skipped.len, reason = skipped.reason,
            "skipped corrupt range in data file");
    }

    if !scanned.is_empty() {
        data.sync_data()?;
    }
    let mut entries = Vec::with_capacity(scanned.len() * INDEX_ENTRY_LEN);
    for entry in &scanned {
        entry.encode(&mut entries);
    }
    let index_file_len = if report.index_rebuilt.is_some() {
        let mut contents = IndexHeader { volume_id: id }.encode().to_vec();
        contents.extend_from_slice(&entries);
        write_atomically(idx_path, &contents)?;
        contents.len() as u64
    } else {
        let index_file = VolumeFile::open(idx_path)?;
        if index_file.len()? != index_len {
            index_file.truncate(index_len)?;
        }
        if !entries.is_empty() {
            index_file.write_at(&entries, index_len)?;
            index_file.sync_data()?;
        }
        index_len + entries.len() as u64
    };
    state.index.shrink_to_fit();
    Ok(Recovered {
        state,
        index_file_len,
        report,
    })
}

struct LoadedIndex {
    entries: u64,
    /// End of the last indexed record in the data file.
    indexed_end: u64,
    /// Length of the valid part of the index file.
    valid_len: u64,
}

fn load_index(
    id: VolumeId,
    map: &MappedFile,
    idx_path: &Path,
    state: &mut ReadState,
) -> Result<LoadedIndex, &'static str> {
    // Streamed in 1 MiB reads rather than read whole: a buffer of the whole
    // file (16 bytes a needle) would outlive the load as free heap the
    // allocator keeps.
    use std::io::Read;
    let file = match std::fs::File::open(idx_path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("index file missing"),
        Err(_) => return Err("index file unreadable"),
    };
    let file_len = file.metadata().map_err(|_| "index file unreadable")?.len();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; INDEX_HEADER_LEN];
    reader
        .read_exact(&mut header)
        .map_err(|_| "bad index file header")?;
    let header = IndexHeader::decode(&header).map_err(|_| "bad index file header")?;
    if header.volume_id != id {
        return Err("index file belongs to another volume");
    }
    let data_len = map.readable_len();
    let whole =
        (file_len.saturating_sub(INDEX_HEADER_LEN as u64) / INDEX_ENTRY_LEN as u64) as usize;
    state.index.reserve(whole);
    let mut loaded = LoadedIndex {
        entries: 0,
        indexed_end: SUPERBLOCK_LEN as u64,
        valid_len: (INDEX_HEADER_LEN + whole * INDEX_ENTRY_LEN) as u64,
    };
    let mut last = None;
    let min_record = format::record_len(0, format::FIXED_METADATA_LEN, false);
    let mut chunk = [0u8; INDEX_ENTRY_LEN];
    for i in 0..whole {
        reader
            .read_exact(&mut chunk)
            .map_err(|_| "index file unreadable")?;
        if chunk.iter().all(|b| *b == 0) {
            // A zero-filled tail: the file's size reached disk before its data.
            loaded.valid_len = (INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN) as u64;
            break;
        }
        let entry = IndexEntry::decode(&chunk);
        let end = entry
            .offset
            .checked_add(entry.record_len)
            .ok_or("index entry overflows")?;
        if entry.offset < SUPERBLOCK_LEN as u64 || entry.record_len < min_record || end > data_len {
            return Err("index entry points outside the data file");
        }
        state.apply(&entry);
        loaded.indexed_end = loaded.indexed_end.max(end);
        loaded.entries += 1;
        last = Some(entry);
    }
    if let Some(last) = last {
        let header = map
            .slice(last.offset, NEEDLE_HEADER_LEN as u64)
            .and_then(|bytes| NeedleHeader::decode(bytes).ok())
            .ok_or("last index entry does not point at a record")?;
        if header.needle_id != last.needle_id
            || header.record_len() != last.record_len
            || header.is_tombstone() != last.tombstone
        {
            return Err("last index entry does not match the data file");
        }
    }
    Ok(loaded)
}

enum Parsed {
    Record(IndexEntry),
    /// A valid header whose record is unreadable; its length.
    BadBody(u64),
    /// No valid header here.
    NoHeader,
    /// A record that runs past the end of the file.
    Torn,
}

fn parse_at(map: &MappedFile, pos: u64, end: u64) -> Parsed {
    if end - pos < NEEDLE_HEADER_LEN as u64 {
        return Parsed::Torn;
    }
    let Some(header) = map
        .slice(pos, NEEDLE_HEADER_LEN as u64)
        .and_then(|bytes| NeedleHeader::decode(bytes).ok())
    else {
        return Parsed::NoHeader;
    };
    let len = header.record_len();
    if pos + len > end {
        return Parsed::Torn;
    }
    match map.slice(pos, len).map(format::decode_needle) {
        Some(Ok(_)) => Parsed::Record(IndexEntry {
            needle_id: header.needle_id,
            offset: pos,
            record_len: len,
            tombstone: header.is_tombstone(),
        }),
        _ => Parsed::BadBody(len),
    }
}

/// Scans records from `from`; returns where to cut a torn tail, if any.
fn scan(
    map: &MappedFile,
    from: u64,
    state: &mut ReadState,
    scanned: &mut Vec<IndexEntry>,
    report: &mut RecoveryReport,
) -> Option<u64> {
    let end = map.readable_len();
    let mut pos = from;
    while pos < end {
        match parse_at(map, pos, end) {
            Parsed::Record(entry) => {
                state.apply(&entry);
                scanned.push(entry);
                pos += entry.record_len;
            }
            Parsed::Torn => return Some(pos),
            Parsed::BadBody(len) if pos + len == end => return Some(pos),
            Parsed::BadBody(len) => {
                report.skipped.push(SkippedRange {
                    offset: pos,
                    len,
                    reason: "record checksum mismatch",
                });
                state.garbage_bytes += len;
                pos += len;
            }
            Parsed::NoHeader => {
                let next = (pos + format::ALIGNMENT..end)
                    .step_by(format::ALIGNMENT as usize)
                    .find(|p| {
                        map.slice(*p, 4) == Some(&NEEDLE_MAGIC[..])
                            && matches!(parse_at(map, *p, end), Parsed::Record(_))
                    });
                let Some(next) = next else {
                    return Some(pos);
                };
                report.skipped.push(SkippedRange {
                    offset: pos,
                    len: next - pos,
                    reason: "no valid record header",
                });
                state.garbage_bytes += next - pos;
                pos = next;
            }
        }
    }
    None
}
