//! A store: every volume on this server, across its disk locations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::file::available_space;
use crate::format::NeedleMeta;
use crate::types::{Cookie, NeedleId, Tier, VolumeId};
use crate::volume::{Needle, NeedleWrite, Volume, VolumeConfig, VolumeStats, WriteReceipt};

/// A directory holding volumes, on a disk of one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The directory.
    pub path: PathBuf,
    /// The tier of the disk it is on.
    pub tier: Tier,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where volumes live; at least one. New volumes of a tier go to the
    /// location of that tier with the most free space.
    pub locations: Vec<Location>,
    /// Settings shared by every volume.
    pub volume: VolumeConfig,
}

/// A volume that could not be opened when the store started.
#[derive(Debug)]
pub struct FailedVolume {
    /// The volume's id.
    pub id: VolumeId,
    /// The location it is in.
    pub path: PathBuf,
    /// Why it could not be opened.
    pub error: Error,
}

/// Every volume on this server.
///
/// The volume map is behind an `RwLock` that is held only to look up or
/// insert an `Arc<Volume>`; all I/O happens on the volume after the lock is
/// released.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    volumes: RwLock<HashMap<VolumeId, Arc<Volume>>>,
    creating: parking_lot::Mutex<()>,
    failed: Vec<FailedVolume>,
}

impl Store {
    /// Opens every volume in every location (creating the directories if
    /// needed), recovering each from any crash. A volume that cannot be opened
    /// is logged and listed in [`Store::failed_volumes`]; the others serve.
    pub fn open(config: StoreConfig) -> Result<Store> {
        if config.locations.is_empty() {
            return Err(Error::BadFile {
                path: PathBuf::new(),
                reason: "a store needs at least one location".into(),
            });
        }
        let mut volumes = HashMap::new();
        let mut failed = Vec::new();
        for location in &config.locations {
            std::fs::create_dir_all(&location.path).map_err(|e| Error::io(&location.path, e))?;
            for id in volume_ids_in(&location.path)? {
                if volumes.contains_key(&id) {
                    return Err(Error::BadFile {
                        path: location.path.clone(),
                        reason: format!("volume {id} exists in two locations"),
                    });
                }
                match Volume::open(&location.path, id, location.tier, config.volume) {
                    Ok(volume) => {
                        volumes.insert(id, Arc::new(volume));
                    }
                    Err(error) => {
                        tracing::error!(volume = %id, path = %location.path.display(), %error,
                            "cannot open volume");
                        failed.push(FailedVolume {
                            id,
                            path: location.path.clone(),
                            error,
                        });
                    }
                }
            }
        }
        Ok(Store {
            config,
            volumes: RwLock::new(volumes),
            creating: parking_lot::Mutex::new(()),
            failed,
        })
    }

    /// Volumes that failed to open at start.
    pub fn failed_volumes(&self) -> &[FailedVolume] {
        &self.failed
    }

    /// The store's locations.
    pub fn locations(&self) -> &[Location] {
        &self.config.locations
    }

    /// Creates an empty volume on the location of `tier` with the most free space.
    pub fn create_volume(&self, id: VolumeId, tier: Tier, collection: &str) -> Result<Arc<Volume>> {
        // One creation at a time, outside the map lock (creation fsyncs), so
        // reads of other volumes never wait for it.
        let _creating = self.creating.lock();
        if self.volumes.read().contains_key(&id) || self.failed.iter().any(|f| f.id == id) {
            return Err(Error::VolumeExists(id));
        }
        let location = self
            .config
            .locations
            .iter()
            .filter(|l| l.tier == tier)
            .max_by_key(|l| available_space(&l.path).unwrap_or(0))
            .ok_or_else(|| Error::BadFile {
                path: PathBuf::new(),
                reason: format!("no {tier} location configured"),
            })?;
        let volume = Arc::new(Volume::create(
            &location.path,
            id,
            tier,
            collection,
            self.config.volume,
        )?);
        self.volumes.write().insert(id, Arc::clone(&volume));
        Ok(volume)
    }

    /// The open volume with this id.
    pub fn volume(&self, id: VolumeId) -> Result<Arc<Volume>> {
        self.volumes
            .read()
            .get(&id)
            .cloned()
            .ok_or(Error::VolumeNotFound(id))
    }

    /// Every open volume, by id.
    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        let mut all: Vec<_> = self.volumes.read().values().cloned().collect();
        all.sort_by_key(|v| v.id());
        all
    }

    /// Writes a blob into a volume; see [`Volume::write`].
    pub fn write(
        &self,
        volume: VolumeId,
        id: NeedleId,
        cookie: Cookie,
        data: &[u8],
        meta: NeedleMeta,
    ) -> Result<WriteReceipt> {
        self.volume(volume)?.write(&NeedleWrite {
            id,
            cookie,
            data,
            meta,
        })
    }

    /// Reads a blob; see [`Volume::read`].
    pub fn read(&self, volume: VolumeId, id: NeedleId, cookie: Cookie) -> Result<Needle> {
        self.volume(volume)?.read(id, cookie)
    }

    /// Reads a blob and verifies its checksum; see [`Volume::read_verified`].
    pub fn read_verified(&self, volume: VolumeId, id: NeedleId, cookie: Cookie) -> Result<Needle> {
        self.volume(volume)?.read_verified(id, cookie)
    }

    /// Deletes a blob; see [`Volume::delete`].
    pub fn delete(&self, volume: VolumeId, id: NeedleId, cookie: Cookie) -> Result<()> {
        self.volume(volume)?.delete(id, cookie)
    }

    /// Makes a volume read-only.
    pub fn seal(&self, volume: VolumeId) -> Result<()> {
        self.volume(volume)?.seal()
    }

    /// Stats of every volume, by id.
    pub fn stats(&self) -> Vec<VolumeStats> {
        self.volumes().iter().map(|v| v.stats()).collect()
    }

    /// Syncs every volume. Called on shutdown.
    pub fn close(&self) -> Result<()> {
        let mut first_error = None;
        for volume in self.volumes() {
            if let Err(e) = volume.close() {
                tracing::error!(volume = %volume.id(), error = %e, "close failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Ids of the volumes (`<id>.dat` files) in a directory.
fn volume_ids_in(dir: &Path) -> Result<Vec<VolumeId>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".dat")) else {
            continue;
        };
        if let Ok(id) = stem.parse::<u32>() {
            ids.push(VolumeId(id));
        }
    }
    ids.sort();
    Ok(ids)
}
