//! The erasure-coded volumes a server holds (their index and journal, and
//! the shards it was given), beside its replicated volumes in the store.
//!
//! They live in a map of their own: while a volume is being encoded, the
//! same id is a replicated volume on its copies and an erasure-coded one on
//! the shard holders, and one server may be both.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;

use super::layout::Layout;
use super::shard::ShardWriter;
use super::volume::{EcManifest, EcVolume, ec_paths};
use crate::error::{Error, Result};
use crate::format::IndexEntry;
use crate::meta::VolumeMeta;
use crate::store::{FailedVolume, Location, Store};
use crate::types::{NeedleId, Tier, VolumeId};

/// The erasure-coded volumes of a store.
#[derive(Debug, Default)]
pub struct Holdings {
    pub(super) volumes: RwLock<HashMap<VolumeId, Arc<EcVolume>>>,
    /// One installation or removal at a time.
    pub(super) changing: parking_lot::Mutex<()>,
}

impl Holdings {
    /// Opens every erasure-coded volume in `locations`; those that cannot
    /// be opened are returned beside, logged.
    pub(crate) fn open(locations: &[Location]) -> Result<(Holdings, Vec<FailedVolume>)> {
        super::reencode::finish_interrupted_swaps(locations)?;
        let mut volumes = HashMap::new();
        let mut failed = Vec::new();
        for location in locations {
            for id in ids_in(&location.path)? {
                match EcVolume::open(&location.path, id) {
                    Ok(volume) => {
                        for (shard, why) in volume.damaged() {
                            tracing::error!(volume = %id, shard, %why, "shard file unreadable");
                        }
                        volumes.insert(id, Arc::new(volume));
                    }
                    Err(error) => {
                        tracing::error!(volume = %id, path = %location.path.display(), %error,
                            "cannot open erasure-coded volume");
                        failed.push(FailedVolume {
                            id,
                            path: location.path.clone(),
                            error,
                        });
                    }
                }
            }
        }
        Ok((
            Holdings {
                volumes: RwLock::new(volumes),
                changing: parking_lot::Mutex::new(()),
            },
            failed,
        ))
    }

    fn get(&self, id: VolumeId) -> Option<Arc<EcVolume>> {
        self.volumes.read().get(&id).cloned()
    }
}

/// Volume ids with a manifest (`<id>.ecm`) in `dir`. Shard files a crash
/// left half written (`<id>.ecNN.tmp`) are removed on the way: a shard
/// counts only once renamed into place.
fn ids_in(dir: &Path) -> Result<Vec<VolumeId>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.ends_with(".tmp") && n.contains(".ec"))
        {
            tracing::info!(file = %entry.path().display(), "removing a shard left half written");
            crate::cold::remove_if_exists(&entry.path())?;
            continue;
        }
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".ecm"))
            .and_then(|stem| stem.parse::<u32>().ok())
        {
            ids.push(VolumeId(id));
        }
    }
    ids.sort();
    Ok(ids)
}

impl Store {
    /// The erasure-coded volume `id`, if this server holds it.
    pub fn erasure(&self, id: VolumeId) -> Result<Arc<EcVolume>> {
        self.erasure.get(id).ok_or(Error::VolumeNotFound(id))
    }

    /// Every erasure-coded volume held here, by id.
    pub fn erasure_volumes(&self) -> Vec<Arc<EcVolume>> {
        let mut all: Vec<_> = self.erasure.volumes.read().values().cloned().collect();
        all.sort_by_key(|v| v.id());
        all
    }

    /// Makes this server a holder of erasure-coded volume `id` (its index,
    /// journal and manifest; shards follow), on the warm location with the
    /// most room (hot if there is no warm one). Installing the same
    /// manifest again returns the volume held (a resumed encode); another
    /// manifest is refused.
    pub fn install_erasure(
        &self,
        id: VolumeId,
        manifest: &EcManifest,
        entries: &[IndexEntry],
        meta: &VolumeMeta,
        deleted: &[NeedleId],
    ) -> Result<Arc<EcVolume>> {
        let _changing = self.erasure.changing.lock();
        if let Some(held) = self.erasure.get(id) {
            if held.manifest().digests == manifest.digests
                && held.manifest().data_len == manifest.data_len
            {
                return Ok(held);
            }
            return Err(Error::VolumeExists(id));
        }
        let needed = manifest.layout(Path::new("<manifest>"))?.body_len();
        let dir = self.erasure_dir(id, needed)?;
        EcVolume::install(&dir, id, manifest, entries, meta, deleted)?;
        let volume = Arc::new(EcVolume::open(&dir, id)?);
        self.erasure.volumes.write().insert(id, Arc::clone(&volume));
        Ok(volume)
    }

    /// Where volume `id`'s erasure-coded files go: the location already
    /// holding some of them, else the warm location with the most room
    /// above `needed` bytes (hot if there is no warm one).
    pub fn erasure_dir(&self, id: VolumeId, needed: u64) -> Result<std::path::PathBuf> {
        let prefix = format!("{id}.ec");
        for location in self.locations() {
            let entries =
                std::fs::read_dir(&location.path).map_err(|e| Error::io(&location.path, e))?;
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
                {
                    return Ok(location.path.clone());
                }
            }
        }
        let location = self
            .location_for(Tier::Warm, needed)
            .or_else(|_| self.location_for(Tier::Hot, needed))?;
        Ok(location.path.clone())
    }

    /// A writer of shard `shard` of volume `id` under `layout`; hand it to
    /// [`Store::finish_shard`]. The volume need not be installed yet (an
    /// encode writes shards first, then installs the manifest naming them).
    pub fn shard_writer(&self, id: VolumeId, shard: u8, layout: Layout) -> Result<ShardWriter> {
        if usize::from(shard) >= layout.code.shards() {
            return Err(Error::InvalidNeedle("shard index outside the code"));
        }
        if let Some(held) = self.erasure.get(id)
            && held.layout() != layout
        {
            return Err(Error::Diverged(format!(
                "volume {id} is held here with another layout"
            )));
        }
        let dir = self.erasure_dir(id, layout.body_len())?;
        ShardWriter::create(&dir, id, shard, layout)
    }

    /// Finishes a shard written with [`Store::shard_writer`]: fsynced and
    /// checked against `digest`; served at once if the volume is installed
    /// (and the manifest's digest matches), else once it is.
    pub fn finish_shard(
        &self,
        id: VolumeId,
        shard: u8,
        writer: ShardWriter,
        digest: u32,
    ) -> Result<()> {
        writer.finish(Some(digest))?;
        match self.erasure.get(id) {
            Some(volume) => volume.add_shard(shard),
            None => Ok(()),
        }
    }

    /// Stops holding erasure-coded volume `id` and removes its files
    /// (manifest first). Not held: nothing to do.
    pub fn remove_erasure(&self, id: VolumeId) -> Result<()> {
        self.drop_staged_erasure(id)?;
        let _changing = self.erasure.changing.lock();
        let Some(volume) = self.erasure.volumes.write().remove(&id) else {
            return Ok(());
        };
        EcVolume::remove_files(volume.dir(), id, volume.layout().code.shards())
    }

    /// True if a manifest of `id` is in `dir` (for tests and tools).
    pub fn erasure_files_in(dir: &Path, id: VolumeId) -> bool {
        ec_paths(dir, id).0.exists()
    }
}
