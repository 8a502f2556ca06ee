//! Online compaction: rewrite a volume without its deleted and overwritten
//! needles while it keeps serving reads, writes and deletes.
//!
//! # Protocol (see also ARCHITECTURE.md, "Compaction")
//!
//! 1. **Check**: refuse if the disk cannot hold the live bytes plus the
//!    configured headroom. Make every enqueued write durable, then under the
//!    read-state lock take a snapshot of the index and start the compaction
//!    log (every write and delete applied from now on is also logged).
//! 2. **Copy** the snapshot's records, in file order and verified, into
//!    `<id>.cpd` (a new data file) and `<id>.cpx` (its index), throttled.
//! 3. **Catch up**: copy what the log gathered meanwhile (new records, and
//!    tombstones, so that a delete during the copy is not undone); repeat
//!    while the log is long.
//! 4. **Quiesce**: hold new streamed writes back and wait for the running
//!    ones to finish; then hold back every new write, wait for the few in
//!    flight, and sync. Readers are never held back.
//! 5. **Swap**, holding the sync role: drain the log a last time, fsync the new
//!    files, rename `<id>.cpx` over `<id>.idx`, fsync the directory, rename
//!    `<id>.cpd` over `<id>.dat` (the commit point), fsync the directory,
//!    then publish the new index and map to readers in one lock. Readers that
//!    already hold slices of the old map keep them: the old file is unlinked,
//!    not truncated.
//!
//! # Recovery of an interrupted compaction (on open)
//!
//! - `<id>.cpd` and `<id>.cpx` both present: the swap had not begun; delete
//!   both (roll back: the old files are whole, and they hold every write).
//! - `<id>.cpd` present, `<id>.cpx` gone: the new index was renamed over the
//!   old one, but the data rename did not happen; delete `<id>.cpd` and the
//!   (new) `<id>.idx`, which recovery then rebuilds from the old data file.
//! - `<id>.cpd` gone: the swap committed (or never started); a stray
//!   `<id>.cpx` is deleted.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Files, IndexFile, Volume, unix_now, volume_paths};
use crate::error::{Error, Result};
use crate::file::{VolumeFile, available_space, sync_parent};
use crate::format::{
    self, INDEX_HEADER_LEN, IndexEntry, IndexHeader, NEEDLE_HEADER_LEN, NeedleHeader,
    SUPERBLOCK_LEN, Superblock,
};
use crate::index::NeedleIndex;
use crate::mapped::MappedFile;
use crate::throttle::Throttle;
use crate::types::VolumeId;

/// Room a compaction leaves free beyond what it writes (by default), and
/// what the free-space reserve keeps beyond the largest compaction.
pub const COMPACTION_MARGIN: u64 = 1 << 20;

/// How a compaction runs.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Copy at most this many bytes a second (`None`: as fast as the disk goes).
    pub bytes_per_sec: Option<u64>,
    /// Refuse to start unless the disk keeps at least this much free after
    /// the copy. Small: the disk's free-space reserve (see
    /// [`crate::space`]) keeps room for the copy itself.
    pub min_free_after: u64,
    /// How long to wait for running streamed uploads before the swap; the
    /// compaction gives up (and rolls back) past it.
    pub quiesce_timeout: Duration,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            bytes_per_sec: None,
            min_free_after: COMPACTION_MARGIN,
            quiesce_timeout: Duration::from_secs(60),
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    /// The volume.
    pub volume: VolumeId,
    /// Data file size before.
    pub bytes_before: u64,
    /// Data file size after.
    pub bytes_after: u64,
    /// Live needles copied.
    pub needles: u64,
    /// Records that failed their checksum and were dropped (and logged).
    pub corrupt_dropped: u64,
    /// How long the swap held writers back.
    pub writer_pause: Duration,
}

impl CompactReport {
    /// Bytes given back to the file system.
    pub fn reclaimed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

fn compact_paths(dir: &Path, id: VolumeId) -> (PathBuf, PathBuf) {
    (dir.join(format!("{id}.cpd")), dir.join(format!("{id}.cpx")))
}

/// Finishes or rolls back a compaction interrupted by a crash; see the
/// module docs. Runs before a volume is opened.
pub(crate) fn settle_interrupted(dir: &Path, id: VolumeId) -> Result<()> {
    let (cpd, cpx) = compact_paths(dir, id);
    let (_, idx, _) = volume_paths(dir, id);
    let remove = |path: &Path| match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    };
    let mut changed = false;
    if cpd.exists() {
        if !cpx.exists() {
            tracing::warn!(volume = %id, "compaction interrupted mid-swap: rolling back, rebuilding index");
            changed |= remove(&idx)?;
        } else {
            tracing::warn!(volume = %id, "compaction interrupted: rolling back");
        }
        changed |= remove(&cpd)?;
    }
    changed |= remove(&cpx)?;
    if changed {
        sync_parent(&idx)?;
    }
    Ok(())
}

/// The new files being written.
struct Target {
    data: BufWriter<File>,
    data_file: File,
    index: BufWriter<File>,
    end: u64,
    index_len: u64,
    entries: NeedleIndex,
    deleted: std::collections::HashMap<crate::NeedleId, u64>,
    live_bytes: u64,
    garbage_bytes: u64,
    needles: u64,
    corrupt_dropped: u64,
}

impl Target {
    /// A new data file of format `version` (the volume's: its records are
    /// copied byte for byte).
    fn create(cpd: &Path, cpx: &Path, id: VolumeId, version: u16) -> Result<Target> {
        // Read and write: `record_len` reads headers back when a logged
        // write replaces a needle already copied.
        let data_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(cpd)
            .map_err(|e| Error::io(cpd, e))?;
        let index_file = File::create(cpx).map_err(|e| Error::io(cpx, e))?;
        let mut target = Target {
            data: BufWriter::with_capacity(
                1 << 20,
                data_file.try_clone().map_err(|e| Error::io(cpd, e))?,
            ),
            data_file,
            index: BufWriter::with_capacity(1 << 16, index_file),
            end: SUPERBLOCK_LEN as u64,
            index_len: INDEX_HEADER_LEN as u64,
            entries: NeedleIndex::new(),
            deleted: std::collections::HashMap::new(),
            live_bytes: 0,
            garbage_bytes: 0,
            needles: 0,
            corrupt_dropped: 0,
        };
        let superblock = Superblock {
            volume_id: id,
            created_at: unix_now(),
            version,
        };
        target
            .data
            .write_all(&superblock.encode())
            .map_err(|e| Error::io(cpd, e))?;
        target
            .index
            .write_all(&IndexHeader { volume_id: id }.encode())
            .map_err(|e| Error::io(cpx, e))?;
        Ok(target)
    }

    /// Length of the record at `offset` in the new data file.
    fn record_len(&mut self, offset: u64, cpd: &Path) -> Result<u64> {
        self.data.flush().map_err(|e| Error::io(cpd, e))?;
        let mut header = [0u8; NEEDLE_HEADER_LEN];
        self.data_file
            .read_exact_at(&mut header, offset)
            .map_err(|e| Error::io(cpd, e))?;
        NeedleHeader::decode(&header)
            .map(|h| h.record_len())
            .map_err(|_| Error::BadFile {
                path: cpd.to_owned(),
                reason: "compaction wrote an unreadable header".into(),
            })
    }

    /// Appends a verified record and applies it to the new index.
    fn append(&mut self, record: &[u8], entry: IndexEntry, cpd: &Path, cpx: &Path) -> Result<()> {
        let new = IndexEntry {
            offset: self.end,
            ..entry
        };
        self.data.write_all(record).map_err(|e| Error::io(cpd, e))?;
        let mut encoded = Vec::with_capacity(format::INDEX_ENTRY_LEN);
        new.encode(&mut encoded);
        self.index
            .write_all(&encoded)
            .map_err(|e| Error::io(cpx, e))?;
        self.end += new.record_len;
        self.index_len += encoded.len() as u64;
        let replaced = if new.tombstone {
            // Tombstones are kept for good (see `ReadState::deleted`).
            self.live_bytes += new.record_len;
            if let Some(old) = self.deleted.insert(new.needle_id, new.offset) {
                let len = self.record_len(old, cpd)?;
                self.live_bytes = self.live_bytes.saturating_sub(len);
                self.garbage_bytes += len;
            }
            self.entries.remove(new.needle_id)
        } else {
            self.live_bytes += new.record_len;
            self.needles += 1;
            self.entries
                .insert(new.needle_id, new.offset, new.record_len)
        };
        if let Some(old) = replaced {
            let len = self.record_len(old, cpd)?;
            self.live_bytes = self.live_bytes.saturating_sub(len);
            self.garbage_bytes += len;
        }
        Ok(())
    }
}

/// Clears the compaction state whatever happens.
struct CompactionGuard<'a> {
    volume: &'a Volume,
    cpd: PathBuf,
    cpx: PathBuf,
    committed: bool,
}

impl Drop for CompactionGuard<'_> {
    fn drop(&mut self) {
        self.volume.state.write().compaction_log = None;
        {
            let mut writer = self.volume.writer.lock();
            writer.paused = false;
            writer.streams_paused = false;
            self.volume.writer_changed.notify_all();
        }
        if !self.committed {
            let _ = std::fs::remove_file(&self.cpd);
            let _ = std::fs::remove_file(&self.cpx);
        }
        self.volume
            .compaction_progress
            .0
            .store(0, Ordering::Relaxed);
        self.volume
            .compaction_progress
            .1
            .store(0, Ordering::Relaxed);
        self.volume.compacting.store(false, Ordering::Release);
    }
}

impl Volume {
    /// True while a compaction of this volume runs.
    pub fn is_compacting(&self) -> bool {
        self.compacting.load(Ordering::Acquire)
    }

    /// `(copied, total)` bytes of the running compaction, if one runs.
    pub fn compaction_progress(&self) -> Option<(u64, u64)> {
        self.is_compacting().then(|| {
            (
                self.compaction_progress.0.load(Ordering::Relaxed),
                self.compaction_progress.1.load(Ordering::Relaxed),
            )
        })
    }

    /// Rewrites the volume without its garbage while it keeps serving; see
    /// the module docs for the protocol. Blocking: run it on a thread of its
    /// own.
    pub fn compact(&self, options: &CompactOptions) -> Result<CompactReport> {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Err(Error::Busy(self.id));
        }
        let (cpd, cpx) = compact_paths(&self.dir, self.id);
        let mut guard = CompactionGuard {
            volume: self,
            cpd: cpd.clone(),
            cpx: cpx.clone(),
            committed: false,
        };
        let stats = self.stats();
        let needed = self.compaction_needs() + options.min_free_after;
        let available = available_space(&self.dir)?;
        if available < needed {
            return Err(Error::NoSpace {
                path: self.dir.clone(),
                needed,
                available,
            });
        }

        // 1. Snapshot.
        self.sync_now()?;
        let (snapshot, old_files) = {
            let mut state = self.state.write();
            state.compaction_log = Some(Vec::new());
            // Live needles and tombstones (kept, so that no copy of the
            // volume ever brings a deleted needle back).
            let mut snapshot: Vec<(u64, crate::NeedleId)> = state
                .index
                .iter()
                .chain(state.deleted.iter().map(|(id, offset)| (*id, *offset)))
                .map(|(id, offset)| (offset, id))
                .collect();
            snapshot.sort_unstable();
            (snapshot, Arc::clone(&state.files))
        };
        let bytes_before = old_files.map.readable_len();
        self.compaction_progress
            .1
            .store(stats.live_bytes, Ordering::Relaxed);
        tracing::info!(volume = %self.id, needles = snapshot.len(), live_bytes = stats.live_bytes,
            garbage_bytes = stats.garbage_bytes, "compaction started");

        // 2. Copy.
        let mut target = Target::create(&cpd, &cpx, self.id, self.format_version)?;
        let min_id = snapshot.iter().map(|(_, id)| *id).min();
        let max_id = snapshot.iter().map(|(_, id)| *id).max();
        if let (Some(min), Some(max)) = (min_id, max_id) {
            target.entries = NeedleIndex::for_range(min, max, snapshot.len());
        }
        let mut throttle = Throttle::new(options.bytes_per_sec.unwrap_or(0));
        for (offset, id) in snapshot {
            let entry = IndexEntry {
                needle_id: id,
                offset,
                record_len: 0,
                tombstone: false,
            };
            let copied = self.copy_record(&old_files.map, entry, &mut target, &cpd, &cpx)?;
            self.compaction_progress
                .0
                .fetch_add(copied, Ordering::Relaxed);
            throttle.block_for(copied);
        }
        crate::failpoint::abort_at("compact-after-copy");

        // 3. Catch up while writes go on.
        for _ in 0..16 {
            let log = self.take_log();
            let small = log.len() < 256;
            for entry in log {
                let copied = self.copy_record(&old_files.map, entry, &mut target, &cpd, &cpx)?;
                throttle.block_for(copied);
            }
            if small {
                break;
            }
        }
        crate::failpoint::abort_at("compact-after-catch-up");
        // Sync the bulk of the copy now, so the fsync inside the writer pause
        // only covers the last catch-up.
        target.data.flush().map_err(|e| Error::io(&cpd, e))?;
        target
            .data_file
            .sync_data()
            .map_err(|e| Error::io(&cpd, e))?;

        // 4. Quiesce: streamed uploads first (small writes go on meanwhile).
        let pause_started = self.quiesce(options.quiesce_timeout, |volume| {
            for entry in volume.take_log() {
                volume.copy_record(&old_files.map, entry, &mut target, &cpd, &cpx)?;
            }
            Ok(())
        })?;

        // 5. Swap, holding the sync role so no group commit runs meanwhile.
        self.sync_now()?;
        let swapped = self.with_sync_role(|| {
            for entry in self.take_log() {
                self.copy_record(&old_files.map, entry, &mut target, &cpd, &cpx)?;
            }
            let Target {
                data,
                index,
                end,
                index_len,
                entries,
                deleted,
                live_bytes,
                garbage_bytes,
                needles,
                corrupt_dropped,
                ..
            } = target;
            let data = data
                .into_inner()
                .map_err(|e| Error::io(&cpd, e.into_error()))?;
            data.sync_all().map_err(|e| Error::io(&cpd, e))?;
            let index = index
                .into_inner()
                .map_err(|e| Error::io(&cpx, e.into_error()))?;
            index.sync_all().map_err(|e| Error::io(&cpx, e))?;
            crate::failpoint::abort_at("compact-before-swap");
            let (dat_path, idx_path, _) = volume_paths(&self.dir, self.id);
            std::fs::rename(&cpx, &idx_path).map_err(|e| Error::io(&idx_path, e))?;
            sync_parent(&idx_path)?;
            crate::failpoint::abort_at("compact-after-index-rename");
            std::fs::rename(&cpd, &dat_path).map_err(|e| Error::io(&dat_path, e))?;
            sync_parent(&dat_path)?;
            crate::failpoint::abort_at("compact-after-data-rename");

            let data_file = VolumeFile::open(&dat_path)?;
            let map = MappedFile::map(
                data_file.file(),
                end,
                super::catch_up_limit(self.config.max_size),
                &dat_path,
            )?;
            let index_file = VolumeFile::open(&idx_path)?;
            let files = Arc::new(Files::new(data_file, map)?);
            {
                let mut state = self.state.write();
                state.index = entries;
                state.index.shrink_to_fit();
                state.deleted = deleted;
                state.files = files;
                state.live_bytes = live_bytes;
                state.garbage_bytes = garbage_bytes;
                state.compaction_log = None;
            }
            *self.index_file.lock() = IndexFile {
                file: index_file,
                end: index_len,
            };
            self.writer.lock().end = end;
            Ok(CompactReport {
                volume: self.id,
                bytes_before,
                bytes_after: end,
                needles,
                corrupt_dropped,
                writer_pause: pause_started.elapsed(),
            })
        });
        let report = swapped?;
        guard.committed = true;
        drop(guard);
        crate::failpoint::abort_at("compact-done");
        tracing::info!(volume = %self.id, reclaimed = report.reclaimed(), needles = report.needles,
            pause_ms = report.writer_pause.as_millis() as u64, "compaction finished");
        Ok(report)
    }

    fn take_log(&self) -> Vec<IndexEntry> {
        self.state
            .write()
            .compaction_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Copies one record (a snapshot entry, or a logged write or delete)
    /// from the old map, verified; returns the bytes copied. A corrupt record
    /// is dropped and logged, never copied.
    fn copy_record(
        &self,
        map: &MappedFile,
        entry: IndexEntry,
        target: &mut Target,
        cpd: &Path,
        cpx: &Path,
    ) -> Result<u64> {
        let decoded = match self.verify_record(map, entry.offset) {
            Ok(decoded) if decoded.header.needle_id == entry.needle_id => decoded,
            _ => {
                tracing::error!(volume = %self.id, needle = %entry.needle_id, offset = entry.offset,
                    "compaction dropped a corrupt record");
                target.corrupt_dropped += 1;
                return Ok(0);
            }
        };
        let len = decoded.header.record_len();
        let record = map.slice(entry.offset, len).ok_or(Error::Corrupt {
            volume: self.id,
            offset: entry.offset,
            reason: "record past end of file",
        })?;
        target.append(
            record,
            IndexEntry {
                record_len: len,
                tombstone: decoded.header.is_tombstone(),
                ..entry
            },
            cpd,
            cpx,
        )?;
        Ok(len)
    }

    /// Holds back new streamed writes until the running ones finish (calling
    /// `catch_up` meanwhile), then every new write until the in-flight ones
    /// are enqueued. Returns when writers are paused.
    pub(crate) fn quiesce(
        &self,
        timeout: Duration,
        mut catch_up: impl FnMut(&Volume) -> Result<()>,
    ) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        self.writer.lock().streams_paused = true;
        loop {
            catch_up(self)?;
            let mut writer = self.writer.lock();
            if writer.streams_in_flight == 0 {
                writer.paused = true;
                let paused_at = Instant::now();
                while writer.in_flight > 0 {
                    if self
                        .writer_changed
                        .wait_until(
                            &mut writer,
                            deadline.max(Instant::now() + Duration::from_secs(5)),
                        )
                        .timed_out()
                    {
                        return Err(Error::Busy(self.id));
                    }
                }
                return Ok(paused_at);
            }
            if Instant::now() > deadline {
                return Err(Error::Busy(self.id));
            }
            self.writer_changed
                .wait_for(&mut writer, Duration::from_millis(20));
        }
    }

    /// Runs `f` while holding the group-commit leader role, so that no batch
    /// is fsynced or published while it runs.
    fn with_sync_role<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut sync = self.sync.lock();
        while sync.syncing {
            self.synced.wait(&mut sync);
        }
        sync.syncing = true;
        let result = parking_lot::MutexGuard::unlocked(&mut sync, f);
        self.release_sync_role(&mut sync);
        result
    }
}
