//! Decoding: an erasure-coded volume's sealed data file restored on one
//! server as a replicated sealed copy.
//!
//! The copy is *staged* in `<location>/decoding/` (the store opens only
//! `<id>.dat` files directly in a location, so a staged copy is neither
//! opened nor served nor reported) until the directory has committed the
//! replica set naming it; [`Store::activate_decoded`] then moves it into
//! place. Step by step:
//!
//! 1. [`Store::decoded_writer`]: `decoding/<id>.dat.tmp`, the data file's
//!    length, written at the offsets each data shard's bytes belong at.
//! 2. [`Store::stage_decoded`]: fsync, rename to `decoding/<id>.dat`, fsync
//!    the directory; the index (the `.ecx` entries inside the data file)
//!    and the state file written atomically; the copy opened there, every
//!    needle that the holders' journals (or the index's own tombstones)
//!    name written as deleted (a tombstone record, fsynced), sealed, closed.
//! 3. [`Store::apply_staged_deletes`]: the journals read again (after the
//!    directory fenced deletes at the holders), more tombstones.
//! 4. [`Store::activate_decoded`]: state file, index, then data file
//!    renamed into the location (the data file last: until it is there the
//!    location holds no volume `id`), the directory fsynced, the volume
//!    opened and served. Idempotent: a copy already active is answered as
//!    it is, and a crash between the renames is finished by the next call.
//!
//! [`Store::abort_decoded`] removes a staged copy (a decode that failed).

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cold::{cold_paths, remove_if_exists};
use crate::error::{Error, Result};
use crate::file::sync_parent;
use crate::format::IndexEntry;
use crate::meta::VolumeMeta;
use crate::sealed::write_index_file;
use crate::store::{Handle, Store};
use crate::types::{NeedleId, Tier, VolumeId};
use crate::volume::{Volume, volume_paths};

/// The folder of a location where decoded copies wait for their commit.
pub const STAGING_DIR: &str = "decoding";

/// Writes a decoded data file at the offsets its bytes belong at.
#[derive(Debug)]
pub struct DecodedWriter {
    id: VolumeId,
    staging: PathBuf,
    tmp: PathBuf,
    file: File,
    data_len: u64,
}

impl DecodedWriter {
    /// Writes `bytes` at data file offset `offset` (clamped to the file's
    /// length: padding past its end is not written).
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = (offset + bytes.len() as u64).min(self.data_len);
        if offset >= end {
            return Ok(());
        }
        self.file
            .write_all_at(&bytes[..(end - offset) as usize], offset)
            .map_err(|e| Error::io(&self.tmp, e))
    }

    /// The data file's length.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }
}

/// What a staged copy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodedCounts {
    /// Live needles.
    pub needles: u64,
    /// Needles written as deleted (by this call).
    pub deleted: u64,
}

/// A staged copy compacted for a re-encode ([`Store::compact_decoded`]).
#[derive(Debug, Clone)]
pub struct CompactedCopy {
    /// Its data file, index and state file.
    pub dat: PathBuf,
    /// Its index.
    pub idx: PathBuf,
    /// Its state file.
    pub meta: PathBuf,
    /// The data file's length after the compaction, and before.
    pub data_len: u64,
    /// The data file's length before the compaction.
    pub bytes_before: u64,
    /// Live needles.
    pub needles: u64,
}

/// The live needles of a sealed index: entries in order, a tombstone
/// removing its needle.
pub fn live_in(entries: &[IndexEntry]) -> HashSet<NeedleId> {
    let mut live = HashSet::new();
    for entry in entries {
        if entry.tombstone {
            live.remove(&entry.needle_id);
        } else {
            live.insert(entry.needle_id);
        }
    }
    live
}

impl Store {
    fn staging_dirs(&self) -> Vec<(PathBuf, PathBuf)> {
        self.locations()
            .iter()
            .map(|l| (l.path.clone(), l.path.join(STAGING_DIR)))
            .collect()
    }

    /// The location and staging folder holding a staged copy of `id`: a
    /// decoded data file, or a cold copy (a move to cold's, see
    /// [`super::to_cold`]).
    pub(crate) fn staged(&self, id: VolumeId) -> Option<(PathBuf, PathBuf)> {
        self.staging_dirs().into_iter().find(|(_, staging)| {
            volume_paths(staging, id).0.exists() || cold_paths(staging, id).0.exists()
        })
    }

    /// Volumes with a staged decoded copy (or staged cold copy) here.
    pub fn staged_decodes(&self) -> Vec<VolumeId> {
        let mut ids = Vec::new();
        for (_, staging) in self.staging_dirs() {
            let Ok(entries) = std::fs::read_dir(&staging) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".dat").or_else(|| n.strip_suffix(".cold")))
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    ids.push(VolumeId(id));
                }
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// Step 1: a writer of volume `id`'s decoded data file, `data_len`
    /// bytes, on the warm location with the most room (hot if there is no
    /// warm one). Anything staged of `id` before is removed. Refused if a
    /// copy of `id` is served here already.
    pub fn decoded_writer(&self, id: VolumeId, data_len: u64) -> Result<DecodedWriter> {
        if self.handle(id).is_ok() {
            return Err(Error::VolumeExists(id));
        }
        self.abort_decoded(id)?;
        let location = self
            .location_for(Tier::Warm, data_len)
            .or_else(|_| self.location_for(Tier::Hot, data_len))?;
        let staging = location.path.join(STAGING_DIR);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let (dat, _, _) = volume_paths(&staging, id);
        let tmp = dat.with_extension("dat.tmp");
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        file.set_len(data_len).map_err(|e| Error::io(&tmp, e))?;
        Ok(DecodedWriter {
            id,
            staging,
            tmp,
            file,
            data_len,
        })
    }

    /// Step 2: the data file written by `writer` made durable and staged
    /// with its index (`entries`, the sealed index) and state file; every
    /// needle in `deleted`, or deleted in the index, written as deleted.
    pub fn stage_decoded(
        &self,
        writer: DecodedWriter,
        entries: &[IndexEntry],
        meta: &VolumeMeta,
        deleted: &BTreeSet<NeedleId>,
    ) -> Result<DecodedCounts> {
        let DecodedWriter {
            id,
            staging,
            tmp,
            file,
            data_len,
        } = writer;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        let (dat, idx, meta_path) = volume_paths(&staging, id);
        std::fs::rename(&tmp, &dat).map_err(|e| Error::io(&dat, e))?;
        sync_parent(&dat)?;
        let inside: Vec<IndexEntry> = entries
            .iter()
            .filter(|e| e.offset + e.record_len <= data_len)
            .copied()
            .collect();
        write_index_file(&idx, id, &inside)?;
        meta.store(&meta_path)?;
        let live = live_in(entries);
        let volume = self.open_staged(&staging, id)?;
        let mut doomed: Vec<NeedleId> = volume
            .needle_ids()
            .into_iter()
            .filter(|n| !live.contains(n) || deleted.contains(n))
            .collect();
        doomed.sort();
        finish_staged(&volume, &doomed)
    }

    /// Step 3: every needle of `deleted` still live in the staged copy of
    /// `id` written as deleted.
    pub fn apply_staged_deletes(
        &self,
        id: VolumeId,
        deleted: &BTreeSet<NeedleId>,
    ) -> Result<DecodedCounts> {
        let Some((_, staging)) = self.staged(id) else {
            return Err(Error::VolumeNotFound(id));
        };
        if cold_paths(&staging, id).0.exists() {
            return super::to_cold::apply_staged_cold_deletes(&staging, id, deleted);
        }
        let volume = self.open_staged(&staging, id)?;
        let live: HashSet<NeedleId> = volume.needle_ids().into_iter().collect();
        let doomed: Vec<NeedleId> = deleted
            .iter()
            .filter(|n| live.contains(n))
            .copied()
            .collect();
        finish_staged(&volume, &doomed)
    }

    fn open_staged(&self, staging: &Path, id: VolumeId) -> Result<Volume> {
        Volume::open(staging, id, Tier::Warm, self.volume_config())
    }

    /// Step 4: the staged copy of `id` moved into its location and served
    /// (a staged cold copy: see [`super::to_cold`]). A copy served already
    /// (activated before) is returned as it is.
    pub fn activate_decoded(&self, id: VolumeId) -> Result<Handle> {
        // The directory's ACTIVATE and a heartbeat's may come together: one
        // activation at a time (renames are quick; a process-wide lock is
        // enough).
        static ACTIVATING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
        let _one = ACTIVATING.lock();
        let Some((dir, staging)) = self.staged(id) else {
            return self.handle(id);
        };
        if self.handle(id).is_ok() {
            return Err(Error::VolumeExists(id));
        }
        if cold_paths(&staging, id).0.exists() {
            return self.activate_staged_cold(&dir, &staging, id);
        }
        let (from_dat, from_idx, from_meta) = volume_paths(&staging, id);
        let (dat, idx, meta) = volume_paths(&dir, id);
        for (from, to) in [(&from_meta, &meta), (&from_idx, &idx), (&from_dat, &dat)] {
            if from.exists() {
                std::fs::rename(from, to).map_err(|e| Error::io(to, e))?;
            }
        }
        sync_parent(&dat)?;
        sync_parent(&from_dat)?;
        self.adopt_local(&dir, id).map(Handle::Local)
    }

    /// A re-encode's step on its target: the staged copy of `id` compacted
    /// (deleted needles dropped: the storage engine's compaction, its
    /// tombstones kept as records so no copy brings a needle back), sealed
    /// and closed. Answers its files' paths, data file length and live
    /// needles; the files stay staged (removed with the copy).
    pub fn compact_decoded(&self, id: VolumeId) -> Result<CompactedCopy> {
        let Some((_, staging)) = self.staged(id) else {
            return Err(Error::VolumeNotFound(id));
        };
        let volume = self.open_staged(&staging, id)?;
        let report = volume.compact(&crate::volume::CompactOptions::default());
        let needles = volume.needle_ids().len() as u64;
        let data_len = volume.data_len();
        volume.seal()?;
        volume.close()?;
        volume.retire();
        let report = report?;
        let (dat, idx, meta) = volume_paths(&staging, id);
        Ok(CompactedCopy {
            dat,
            idx,
            meta,
            data_len,
            bytes_before: report.bytes_before,
            needles,
        })
    }

    /// Removes whatever is staged of `id` (a decode or a move to cold that
    /// failed; the caller deals with an object a staged cold copy names).
    pub fn abort_decoded(&self, id: VolumeId) -> Result<()> {
        for (_, staging) in self.staging_dirs() {
            if !staging.exists() {
                continue;
            }
            // A staged cold copy's manifest first: without it the rest of
            // it counts for nothing.
            let (manifest, cidx, tomb) = cold_paths(&staging, id);
            remove_if_exists(&manifest)?;
            let (dat, idx, meta) = volume_paths(&staging, id);
            let upload = crate::moves::MoveJob::path(&staging, id);
            for path in [
                dat.with_extension("dat.tmp"),
                dat,
                idx,
                meta,
                cidx,
                tomb,
                upload,
            ] {
                remove_if_exists(&path)?;
            }
        }
        Ok(())
    }
}

/// Writes `doomed` as deleted in a staged copy, seals and closes it.
fn finish_staged(volume: &Volume, doomed: &[NeedleId]) -> Result<DecodedCounts> {
    let mut deleted = 0;
    for &needle in doomed {
        match volume.delete_replayed(needle) {
            Ok(()) => deleted += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    volume.seal()?;
    volume.close()?;
    volume.retire();
    Ok(DecodedCounts {
        needles: volume.needle_ids().len() as u64,
        deleted,
    })
}

impl Store {
    /// Opens the volume files of `id` in location `dir` and serves them.
    fn adopt_local(&self, dir: &Path, id: VolumeId) -> Result<Arc<Volume>> {
        let tier = self.tier_of(dir);
        let volume = Arc::new(Volume::open(dir, id, tier, self.volume_config())?);
        self.insert_local(Arc::clone(&volume))?;
        Ok(volume)
    }
}
