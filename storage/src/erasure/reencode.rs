//! Re-encoding an erasure-coded volume without its deleted needles: the
//! next *generation* of the volume, staged on each holder beside the one
//! it serves, then swapped in once the directory committed it.
//!
//! The staged generation is a whole set of erasure files (`<id>.ecm`,
//! `.ecx`, `.ecj`, `.ecmeta`, `.ech`, `<id>.ecNN`) in `reencoding/` under
//! the location that holds the volume: the same names as the served ones,
//! in a folder the store does not open, so both generations coexist (a
//! holder needs room for both briefly). Step by step on a holder:
//!
//! 1. [`Store::staged_shard_writer`] / [`Store::finish_staged_shard`]:
//!    each shard written, fsynced and checked as an encode's, into the
//!    folder.
//! 2. [`Store::install_staged_erasure`]: index, journal, state, holders,
//!    then the manifest (atomically, last): the generation is whole.
//! 3. [`Store::delete_staged_erasure`]: the re-encode's last journal read
//!    (deletes made since the data file was rebuilt) journaled there.
//! 4. [`Store::swap_reencoded`], only once the directory committed the new
//!    layout: a marker `reencoding/<id>.ecswap` written (fsynced); the
//!    served manifest removed (the old generation no longer counts); every
//!    staged file renamed over its served namesake, the manifest last; the
//!    marker removed; the new generation opened and served. Readers
//!    holding the old generation's open files finish on them (unlinked,
//!    not truncated).
//!
//! A crash during step 4 is finished on the next open (the marker says the
//! commit was known here: [`finish_interrupted_swaps`]). A staged
//! generation without a marker is never served; [`Store::drop_staged_erasure`]
//! removes it (a re-encode that failed), as does the next re-encode and
//! removing the volume.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::layout::Layout;
use super::shard::{ShardWriter, shard_path};
use super::volume::{EcManifest, EcVolume, ec_holders_path, ec_meta_path, ec_paths};
use crate::cold::remove_if_exists;
use crate::error::{Error, Result};
use crate::file::{sync_parent, write_atomically};
use crate::format::IndexEntry;
use crate::meta::VolumeMeta;
use crate::store::{Location, Store};
use crate::types::{NeedleId, VolumeId};

/// The folder of a location where a re-encode's next generation waits.
pub const REENCODE_DIR: &str = "reencoding";

/// The marker of a swap under way (the commit is known here).
fn swap_marker(staging: &Path, id: VolumeId) -> PathBuf {
    staging.join(format!("{id}.ecswap"))
}

/// Every file of generation `id` in `dir`, the manifest last (the order a
/// swap renames them in). `shards` shard files at most.
fn generation_files(dir: &Path, id: VolumeId, shards: usize) -> Vec<PathBuf> {
    let (manifest, ecx, ecj) = ec_paths(dir, id);
    let mut files = vec![ecx, ecj, ec_meta_path(dir, id), ec_holders_path(dir, id)];
    files.extend((0..shards as u8).map(|s| shard_path(dir, id, s)));
    files.push(manifest);
    files
}

/// The number of shards of the manifest in `dir`, if there is one.
fn shards_of(dir: &Path, id: VolumeId) -> Option<usize> {
    let (path, _, _) = ec_paths(dir, id);
    let bytes = std::fs::read(&path).ok()?;
    let manifest = EcManifest::decode(&bytes, &path).ok()?;
    Some(manifest.digests.len())
}

/// Step 4's renames, from the served manifest's removal on; idempotent (a
/// crash part way is finished by calling it again).
fn finish_swap(dir: &Path, staging: &Path, id: VolumeId) -> Result<()> {
    let (staged_manifest, _, _) = ec_paths(staging, id);
    if let Some(shards) = shards_of(staging, id) {
        let (served, _, _) = ec_paths(dir, id);
        remove_if_exists(&served)?;
        sync_parent(&served)?;
        for from in generation_files(staging, id, shards) {
            let Some(name) = from.file_name() else {
                continue;
            };
            let to = dir.join(name);
            if from.exists() {
                std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
            }
            if from == staged_manifest {
                sync_parent(&to)?;
            }
        }
    }
    let marker = swap_marker(staging, id);
    remove_if_exists(&marker)?;
    sync_parent(&marker)
}

/// Finishes the swaps a crash interrupted in `locations` (a marker found),
/// before their erasure-coded volumes are opened.
pub(crate) fn finish_interrupted_swaps(locations: &[Location]) -> Result<()> {
    for location in locations {
        let staging = location.path.join(REENCODE_DIR);
        let Ok(entries) = std::fs::read_dir(&staging) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".ecswap"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            tracing::info!(
                volume = id,
                "finishing a re-encode's swap a crash interrupted"
            );
            finish_swap(&location.path, &staging, VolumeId(id))?;
        }
    }
    Ok(())
}

impl Store {
    /// The staging folder of `id`'s next generation: `reencoding/` in the
    /// location holding the volume (else the one with most room), created.
    fn reencode_staging(&self, id: VolumeId, needed: u64) -> Result<PathBuf> {
        let dir = self.erasure_dir(id, needed)?.join(REENCODE_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    /// The staging folder that holds a whole staged generation of `id`.
    fn staged_generation(&self, id: VolumeId) -> Option<PathBuf> {
        self.locations()
            .iter()
            .map(|l| l.path.join(REENCODE_DIR))
            .find(|staging| ec_paths(staging, id).0.exists())
    }

    /// Step 1: a writer of shard `shard` of `id`'s next generation.
    pub fn staged_shard_writer(
        &self,
        id: VolumeId,
        shard: u8,
        layout: Layout,
    ) -> Result<ShardWriter> {
        if usize::from(shard) >= layout.code.shards() {
            return Err(Error::InvalidNeedle("shard index outside the code"));
        }
        let staging = self.reencode_staging(id, layout.body_len())?;
        ShardWriter::create(&staging, id, shard, layout)
    }

    /// Step 1: a staged shard made durable, checked against `digest`.
    pub fn finish_staged_shard(&self, writer: ShardWriter, digest: u32) -> Result<()> {
        writer.finish(Some(digest)).map(drop)
    }

    /// Step 2: the next generation's index, journal, state and holders
    /// staged, then its manifest (last). The same manifest again: done.
    pub fn install_staged_erasure(
        &self,
        id: VolumeId,
        manifest: &EcManifest,
        entries: &[IndexEntry],
        meta: &VolumeMeta,
        holders: &[String],
    ) -> Result<()> {
        let staging = self.reencode_staging(id, 0)?;
        EcVolume::install(&staging, id, manifest, entries, meta, &[])?;
        let mut text = holders.join("\n");
        text.push('\n');
        write_atomically(&ec_holders_path(&staging, id), text.as_bytes())
    }

    /// Step 3: needles of `ids` live in the staged generation journaled
    /// there (one fsync); answers how many.
    pub fn delete_staged_erasure(&self, id: VolumeId, ids: &[NeedleId]) -> Result<usize> {
        let staging = self
            .staged_generation(id)
            .ok_or(Error::VolumeNotFound(id))?;
        EcVolume::open(&staging, id)?.delete_many(ids)
    }

    /// The staged generation's manifest of `id`, if one is whole here.
    pub fn staged_erasure_manifest(&self, id: VolumeId) -> Option<EcManifest> {
        let staging = self.staged_generation(id)?;
        let (path, _, _) = ec_paths(&staging, id);
        EcManifest::decode(&std::fs::read(&path).ok()?, &path).ok()
    }

    /// Removes whatever is staged of `id`'s next generation (a re-encode
    /// that failed), unless its swap is under way.
    pub fn drop_staged_erasure(&self, id: VolumeId) -> Result<()> {
        for location in self.locations() {
            let staging = location.path.join(REENCODE_DIR);
            if !staging.exists() || swap_marker(&staging, id).exists() {
                continue;
            }
            let shards = shards_of(&staging, id).unwrap_or(usize::from(u8::MAX));
            // The manifest first: without it the rest counts for nothing.
            let mut files = generation_files(&staging, id, shards);
            files.rotate_right(1);
            for path in files {
                remove_if_exists(&path)?;
                remove_if_exists(&path.with_extension(format!(
                    "{}.tmp",
                    path.extension().and_then(|e| e.to_str()).unwrap_or_default()
                )))?;
            }
            sync_parent(&swap_marker(&staging, id))?;
        }
        Ok(())
    }

    /// Step 4: the staged generation of `id` whose manifest names
    /// `digests` replaces the one served (see the module's doc). Answers
    /// false if that generation is served already (a repeated call).
    pub fn swap_reencoded(&self, id: VolumeId, digests: &[u32]) -> Result<bool> {
        let _changing = self.erasure.changing.lock();
        if self
            .erasure
            .volumes
            .read()
            .get(&id)
            .is_some_and(|v| v.manifest().digests == digests)
        {
            return Ok(false);
        }
        let staging = self
            .staged_generation(id)
            .ok_or(Error::VolumeNotFound(id))?;
        let staged = shards_of(&staging, id).map(|_| {
            let (path, _, _) = ec_paths(&staging, id);
            std::fs::read(&path)
                .map_err(|e| Error::io(&path, e))
                .and_then(|b| EcManifest::decode(&b, &path))
        });
        match staged {
            Some(Ok(manifest)) if manifest.digests == digests => {}
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Error::Diverged(format!(
                    "the generation of volume {id} staged here is not the one committed"
                )));
            }
        }
        let Some(dir) = staging.parent().map(Path::to_owned) else {
            return Err(Error::VolumeNotFound(id));
        };
        let marker = swap_marker(&staging, id);
        write_atomically(&marker, b"swap\n")?;
        self.erasure.volumes.write().remove(&id);
        finish_swap(&dir, &staging, id)?;
        let volume = Arc::new(EcVolume::open(&dir, id)?);
        self.erasure.volumes.write().insert(id, volume);
        Ok(true)
    }
}
