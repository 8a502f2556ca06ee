//! A volume's log, for copies in other regions that follow it (see
//! ARCHITECTURE.md, "Shipping between regions").
//!
//! The index file is the log: one entry per needle write or tombstone, in
//! the order they became durable (an entry is appended only after the data
//! it points at is fsynced). A follower reads it from its position on; the
//! cookie of each entry comes from its record's header. The log is this
//! copy's: another copy of the volume, or this one after a compaction
//! rewrote the index, has another log with other positions, told apart by
//! [`VolumeLog::log_id`].

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::Volume;
use crate::error::{Error, Result};
use crate::format::{
    INDEX_ENTRY_LEN, INDEX_HEADER_LEN, IndexEntry, NEEDLE_HEADER_LEN, NeedleHeader,
};
use crate::types::{Cookie, NeedleId};

/// Most entries one [`Volume::read_log`] returns.
pub const MAX_LOG_ENTRIES: usize = 4096;

/// One entry of a volume's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    /// The needle written or deleted.
    pub id: NeedleId,
    /// Its cookie.
    pub cookie: Cookie,
    /// A tombstone.
    pub deleted: bool,
    /// Length of its data (0 for a tombstone).
    pub data_len: u64,
}

/// A slice of a volume's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeLog {
    /// Entries from the position asked for.
    pub entries: Vec<LogEntry>,
    /// Entries in the log now.
    pub total: u64,
    /// Which index file this is (its inode): another after a compaction.
    pub log_id: u64,
}

impl Volume {
    /// Up to `max` (at most [`MAX_LOG_ENTRIES`]) entries of this copy's log
    /// from entry `from` (none if `from` is at or past its end).
    ///
    /// # Errors
    /// I/O errors reading the index; [`Error::Corrupt`] if an entry does not
    /// match its record (the index was swapped by a compaction meanwhile:
    /// asking again reads the new one).
    pub fn read_log(&self, from: u64, max: usize) -> Result<VolumeLog> {
        let max = max.clamp(1, MAX_LOG_ENTRIES) as u64;
        // The data file's map first, then the index: a compaction swaps the
        // index after the map, so entries read here never point past it
        // unless they changed in between, which the header check catches.
        let files = Arc::clone(&self.state.read().files);
        let (bytes, total, log_id) = {
            let index = self.index_file.lock();
            let total = index.end.saturating_sub(INDEX_HEADER_LEN as u64) / INDEX_ENTRY_LEN as u64;
            let log_id = index
                .file
                .file()
                .metadata()
                .map_err(|e| Error::io(index.file.path(), e))?
                .ino();
            let count = total.saturating_sub(from).min(max);
            let mut bytes = vec![0u8; (count as usize) * INDEX_ENTRY_LEN];
            if count > 0 {
                index.file.read_at(
                    &mut bytes,
                    INDEX_HEADER_LEN as u64 + from * INDEX_ENTRY_LEN as u64,
                )?;
            }
            (bytes, total, log_id)
        };
        let mut entries = Vec::with_capacity(bytes.len() / INDEX_ENTRY_LEN);
        for raw in bytes.chunks_exact(INDEX_ENTRY_LEN) {
            let entry = IndexEntry::decode(raw);
            let header = files
                .map
                .slice(entry.offset, NEEDLE_HEADER_LEN as u64)
                .and_then(|b| NeedleHeader::decode(b).ok())
                .filter(|h| h.needle_id == entry.needle_id)
                .ok_or_else(|| self.corrupt(entry.offset, "log entry does not match its record"))?;
            entries.push(LogEntry {
                id: entry.needle_id,
                cookie: header.cookie,
                deleted: entry.tombstone,
                data_len: if entry.tombstone {
                    0
                } else {
                    u64::from(header.data_len)
                },
            });
        }
        Ok(VolumeLog {
            entries,
            total,
            log_id,
        })
    }

    /// True if a needle is live here (written, not deleted).
    pub fn holds(&self, id: NeedleId) -> bool {
        let state = self.state.read();
        state.index.get(id).is_some() && !state.deleted.contains_key(&id)
    }
}
