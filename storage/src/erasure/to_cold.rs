//! An erasure-coded volume moved to the cold tier: the data file restored
//! from the data shards (a decode's build, [`super::decode`]), uploaded as
//! one object by the server, then kept as a *staged cold copy* until the
//! directory commits the volume cold. Everything here is in the staging
//! folder `<location>/decoding/`, which the store never opens, serves or
//! reports, so nothing of it counts before the commit.
//!
//! A staged cold copy is the files of a cold volume ("Cold volume files" in
//! ARCHITECTURE.md) in the staging folder: `<id>.cidx`, `<id>.tomb`,
//! `<id>.meta`, and `<id>.cold` (the manifest) written last.
//!
//! 1. [`Store::staged_data_file`]: the staged data file the server uploads
//!    (a decode's build made it, with the journals' deletes as tombstones).
//! 2. [`Store::stage_cold`] (the uploading target, once the object is
//!    verified): `.cidx` from the staged index, an empty `.tomb`, the
//!    manifest; then the staged data file and index are removed.
//!    [`Store::stage_cold_shared`] (every other target): the same files
//!    fetched from the first ([`Store::staged_cold_files`]).
//! 3. [`Store::apply_staged_deletes`] (the journals read again once the
//!    holders are fenced): more tombstones in `.tomb`.
//! 4. [`Store::activate_decoded`]: `.meta`, `.cidx`, `.tomb`, then the
//!    manifest renamed into the location (the manifest last: until it is
//!    there the location holds no volume of that id), the volume opened
//!    cold and served. Idempotent.
//!
//! [`Store::abort_decoded`] removes all of it (the server deletes the
//! object first, see [`Store::staged_cold_manifest`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::decode::{DecodedCounts, STAGING_DIR};
use crate::cold::{
    ColdManifest, ColdVolume, cold_paths, parse_index, read_index_file, remove_if_exists,
    write_index_file, write_tomb_file,
};
use crate::error::{Error, Result};
use crate::file::{sync_parent, write_atomically};
use crate::moves::MoveJob;
use crate::store::{Handle, Store};
use crate::types::{NeedleId, Tier, VolumeId};
use crate::volume::{Volume, volume_paths};

/// A staged cold copy's files, byte for byte (what another target stages
/// its own from).
#[derive(Debug, Clone, Default)]
pub struct StagedColdFiles {
    /// `<id>.cold`.
    pub manifest: Vec<u8>,
    /// `<id>.cidx`.
    pub index: Vec<u8>,
    /// `<id>.tomb`.
    pub tombstones: Vec<u8>,
    /// `<id>.meta` (empty if none).
    pub meta: Vec<u8>,
}

impl Store {
    /// Step 1: the staging folder and length of the staged data file of
    /// `id`, which the server uploads. NOT_FOUND if none is staged.
    pub fn staged_data_file(&self, id: VolumeId) -> Result<(PathBuf, u64)> {
        let (_, staging) = self.staged(id).ok_or(Error::VolumeNotFound(id))?;
        let (dat, _, _) = volume_paths(&staging, id);
        let len = std::fs::metadata(&dat)
            .map_err(|e| Error::io(&dat, e))?
            .len();
        Ok((staging, len))
    }

    /// The manifest of a staged cold copy of `id`, if one is staged (its
    /// object is deleted when a move to cold is rolled back).
    pub fn staged_cold_manifest(&self, id: VolumeId) -> Option<ColdManifest> {
        let (_, staging) = self.staged(id)?;
        ColdManifest::load(&cold_paths(&staging, id).0).ok()
    }

    /// The upload a move to cold left staged for `id` (its multipart
    /// upload is aborted when the move is rolled back).
    pub fn staged_upload(&self, id: VolumeId) -> Option<MoveJob> {
        self.staging_folders()
            .into_iter()
            .map(|staging| MoveJob::path(&staging, id))
            .find(|path| path.exists())
            .and_then(|path| MoveJob::load(&path).ok())
    }

    fn staging_folders(&self) -> Vec<PathBuf> {
        self.locations()
            .iter()
            .map(|l| l.path.join(STAGING_DIR))
            .collect()
    }

    /// Step 2 on the uploading target: the staged data file of `id` was
    /// uploaded and verified as the object `manifest` names; it becomes a
    /// staged cold copy (`.cidx` from its index, an empty `.tomb`, the
    /// manifest last, with the volume's expiry), and the staged data file,
    /// index and upload job go. Idempotent: a copy staged cold already is
    /// answered as it is.
    pub fn stage_cold(&self, id: VolumeId, mut manifest: ColdManifest) -> Result<DecodedCounts> {
        let (_, staging) = self.staged(id).ok_or(Error::VolumeNotFound(id))?;
        let (manifest_path, cidx, tomb) = cold_paths(&staging, id);
        let (dat, idx, _) = volume_paths(&staging, id);
        if !manifest_path.exists() {
            let volume = Volume::open(&staging, id, Tier::Warm, self.volume_config())?;
            manifest.expires_at = volume.expires_at();
            volume.close()?;
            volume.retire();
            drop(volume);
            let entries: Vec<_> = read_index_file(&idx, id)?
                .into_iter()
                .filter(|e| e.offset + e.record_len <= manifest.object_len)
                .collect();
            write_index_file(&cidx, id, &entries)?;
            write_tomb_file(&tomb, &[])?;
            // The commit point of the staged cold copy.
            manifest.store(&manifest_path)?;
        }
        remove_if_exists(&dat)?;
        sync_parent(&dat)?;
        remove_if_exists(&idx)?;
        remove_if_exists(&MoveJob::path(&staging, id))?;
        staged_counts(&staging, id, 0)
    }

    /// Step 2 on every other target: a staged cold copy of `id` made of the
    /// files of the uploading target's (`manifest`, its index file's bytes,
    /// tombstones, state file), on the warm location with the most room
    /// (hot if there is no warm one), the manifest last. The caller has
    /// checked the object. Anything staged of `id` before is removed;
    /// refused if `id` is served here already.
    pub fn stage_cold_shared(
        &self,
        id: VolumeId,
        manifest: &ColdManifest,
        index: &[u8],
        tombstones: &[NeedleId],
        meta: &[u8],
    ) -> Result<DecodedCounts> {
        if self.handle(id).is_ok() {
            return Err(Error::VolumeExists(id));
        }
        self.abort_decoded(id)?;
        let location = self
            .location_for(Tier::Warm, index.len() as u64)
            .or_else(|_| self.location_for(Tier::Hot, index.len() as u64))?;
        let staging = location.path.join(STAGING_DIR);
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let (manifest_path, cidx, tomb) = cold_paths(&staging, id);
        let (_, _, meta_path) = volume_paths(&staging, id);
        parse_index(index, id, &cidx)?;
        write_atomically(&cidx, index)?;
        write_tomb_file(&tomb, tombstones)?;
        if !meta.is_empty() {
            write_atomically(&meta_path, meta)?;
        }
        manifest.store(&manifest_path)?;
        staged_counts(&staging, id, 0)
    }

    /// The files of the staged cold copy of `id`, byte for byte.
    pub fn staged_cold_files(&self, id: VolumeId) -> Result<StagedColdFiles> {
        let staging = self
            .staged(id)
            .map(|(_, staging)| staging)
            .filter(|staging| cold_paths(staging, id).0.exists())
            .ok_or(Error::VolumeNotFound(id))?;
        let (manifest, cidx, tomb) = cold_paths(&staging, id);
        let (_, _, meta) = volume_paths(&staging, id);
        let read = |path: &Path| match std::fs::read(path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(path, e)),
        };
        Ok(StagedColdFiles {
            manifest: read(&manifest)?,
            index: read(&cidx)?,
            tombstones: read(&tomb)?,
            meta: read(&meta)?,
        })
    }

    /// Step 4 for a staged cold copy (from [`Store::activate_decoded`],
    /// which holds the activation lock and checked nothing is served).
    pub(crate) fn activate_staged_cold(
        &self,
        dir: &Path,
        staging: &Path,
        id: VolumeId,
    ) -> Result<Handle> {
        // A data file left from before the copy was staged cold (a crash
        // between the manifest and its removal) is not moved.
        let (staged_dat, staged_idx, from_meta) = volume_paths(staging, id);
        remove_if_exists(&staged_dat)?;
        remove_if_exists(&staged_idx)?;
        let (from_manifest, from_cidx, from_tomb) = cold_paths(staging, id);
        let (manifest, cidx, tomb) = cold_paths(dir, id);
        let (_, _, meta) = volume_paths(dir, id);
        for (from, to) in [
            (&from_meta, &meta),
            (&from_cidx, &cidx),
            (&from_tomb, &tomb),
            (&from_manifest, &manifest),
        ] {
            if from.exists() {
                std::fs::rename(from, to).map_err(|e| Error::io(to, e))?;
            }
        }
        sync_parent(&manifest)?;
        sync_parent(&from_manifest)?;
        let cold = Arc::new(ColdVolume::open(dir, id)?);
        self.insert_cold(Arc::clone(&cold))?;
        Ok(Handle::Cold(cold))
    }
}

/// Step 3 for a staged cold copy: every needle of `deleted` still live in
/// it appended to its `.tomb` (fsynced).
pub(crate) fn apply_staged_cold_deletes(
    staging: &Path,
    id: VolumeId,
    deleted: &BTreeSet<NeedleId>,
) -> Result<DecodedCounts> {
    let cold = ColdVolume::open(staging, id)?;
    let live: std::collections::HashSet<NeedleId> = cold.needle_ids().into_iter().collect();
    let mut count = 0;
    for needle in deleted.iter().filter(|n| live.contains(n)) {
        match cold.delete(*needle) {
            Ok(()) => count += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    staged_counts(staging, id, count)
}

fn staged_counts(staging: &Path, id: VolumeId, deleted: u64) -> Result<DecodedCounts> {
    let cold = ColdVolume::open(staging, id)?;
    Ok(DecodedCounts {
        needles: cold.needle_ids().len() as u64,
        deleted,
    })
}
