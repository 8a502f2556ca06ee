//! A store: every volume on this server, across its disk locations.
//!
//! Why one file of ~920 lines: every operation on the store's map of
//! volumes (open, create, delete, move between locations, list, release)
//! goes through the same map lock and creation lock, documented once on
//! [`Store`]; reading them side by side is how their use is checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::cold::{
    ColdManifest, ColdVolume, cold_paths, parse_index, read_index_file, write_index_file,
    write_tomb_file,
};
use crate::erasure::held::Holdings;
use crate::error::{Error, Result};
use crate::file::{available_space, sync_parent};
use crate::format::NeedleMeta;
use crate::moves::{self, MoveJob, moving_paths};
use crate::space::{DiskSpace, Reserve, SpaceReport};
use crate::throttle::Throttle;
use crate::types::{Cookie, NeedleId, Tier, VolumeId};
use crate::volume::{
    COMPACTION_MARGIN, Needle, NeedleWrite, Volume, VolumeConfig, VolumeStats, WriteReceipt,
    volume_paths,
};

/// A volume of the store: local files, or an object in the cold tier.
#[derive(Debug, Clone)]
pub enum Handle {
    /// Data file on a local disk.
    Local(Arc<Volume>),
    /// Data file in object storage; index on a local disk.
    Cold(Arc<ColdVolume>),
}

impl Handle {
    /// Size, garbage and index memory.
    pub fn stats(&self) -> VolumeStats {
        match self {
            Handle::Local(v) => v.stats(),
            Handle::Cold(c) => c.stats(),
        }
    }

    /// The collection the volume belongs to.
    pub fn collection(&self) -> &str {
        match self {
            Handle::Local(v) => v.collection(),
            Handle::Cold(c) => c.collection(),
        }
    }
}

/// A directory holding volumes, on a disk of one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The directory.
    pub path: PathBuf,
    /// The tier of the disk it is on.
    pub tier: Tier,
}

impl Location {
    /// `root/hot` (hot) and `root/warm` (warm): the layout of `hayloft
    /// volume --data-dir root`.
    pub fn hot_and_warm(root: &Path) -> Vec<Location> {
        vec![
            Location {
                path: root.join("hot"),
                tier: Tier::Hot,
            },
            Location {
                path: root.join("warm"),
                tier: Tier::Warm,
            },
        ]
    }
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where volumes live; at least one. New volumes of a tier go to the
    /// location of that tier with the most free space.
    pub locations: Vec<Location>,
    /// Settings shared by every volume.
    pub volume: VolumeConfig,
    /// Free space every file system holding locations keeps (see
    /// [`crate::space`]); the reserve also always covers compacting the
    /// largest volume on it.
    pub reserve: Reserve,
}

/// Gives the heap the allocator holds free back to the system. Opening
/// volumes allocates and frees a lot (index loads, recovery scans), and so
/// do bursts of requests; glibc keeps freed blocks below its mmap threshold
/// in its arenas for reuse, resident, however long nothing reuses them. The
/// store calls it once its volumes are open; a server also calls it now and
/// then (the volume server every 10 s). Cheap: a walk of the free lists.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
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
    volumes: RwLock<HashMap<VolumeId, Handle>>,
    creating: parking_lot::Mutex<()>,
    failed: Vec<FailedVolume>,
    pending_moves: parking_lot::Mutex<Vec<MoveJob>>,
    /// The reserve of each location, in the order of `config.locations`.
    spaces: Vec<Arc<DiskSpace>>,
    /// The erasure-coded volumes held here (see [`crate::erasure::held`]).
    pub(crate) erasure: Holdings,
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
        let mut pending_moves = Vec::new();
        for location in &config.locations {
            std::fs::create_dir_all(&location.path).map_err(|e| Error::io(&location.path, e))?;
        }
        // Interrupted moves first: they decide which copy of a volume counts.
        for location in &config.locations {
            pending_moves.extend(moves::settle(&location.path)?);
        }
        for location in &config.locations {
            for (id, cold) in volume_ids_in(&location.path)? {
                if volumes.contains_key(&id) {
                    return Err(Error::BadFile {
                        path: location.path.clone(),
                        reason: format!("volume {id} exists in two locations"),
                    });
                }
                let opened = if cold {
                    ColdVolume::open(&location.path, id).map(|c| Handle::Cold(Arc::new(c)))
                } else {
                    Volume::open(&location.path, id, location.tier, config.volume)
                        .map(|v| Handle::Local(Arc::new(v)))
                };
                match opened {
                    Ok(handle) => {
                        volumes.insert(id, handle);
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
        let (erasure, failed_erasure) = Holdings::open(&config.locations)?;
        failed.extend(failed_erasure);
        // Locations on one file system share its reserve and headroom.
        let mut by_device: HashMap<u64, Arc<DiskSpace>> = HashMap::new();
        let mut spaces = Vec::with_capacity(config.locations.len());
        for location in &config.locations {
            use std::os::unix::fs::MetadataExt;
            let device = std::fs::metadata(&location.path)
                .map_err(|e| Error::io(&location.path, e))?
                .dev();
            let space = match by_device.get(&device) {
                Some(space) => Arc::clone(space),
                None => {
                    let space = Arc::new(DiskSpace::new(&location.path, config.reserve)?);
                    by_device.insert(device, Arc::clone(&space));
                    space
                }
            };
            spaces.push(space);
        }
        let store = Store {
            config,
            volumes: RwLock::new(volumes),
            creating: parking_lot::Mutex::new(()),
            failed,
            pending_moves: parking_lot::Mutex::new(pending_moves),
            spaces,
            erasure,
        };
        for volume in store.volumes() {
            store.attach_space(&volume);
        }
        store.refresh_space()?;
        release_free_heap();
        Ok(store)
    }

    /// Puts `volume` under the reserve of the location it is in.
    fn attach_space(&self, volume: &Volume) {
        if let Some(space) = self.space_of(volume.dir()) {
            volume.attach_space(Arc::clone(space));
        }
    }

    fn space_of(&self, dir: &Path) -> Option<&Arc<DiskSpace>> {
        self.config
            .locations
            .iter()
            .position(|l| l.path == dir)
            .map(|i| &self.spaces[i])
    }

    /// Measures every location's free space again (the reserve covering the
    /// largest compaction there) and returns each location's figures, in the
    /// order of [`Store::locations`]. Cheap (a `statvfs` per location):
    /// the volume server runs it every second, so writes resume by
    /// themselves once space is freed.
    pub fn refresh_space(&self) -> Result<Vec<SpaceReport>> {
        let volumes = self.volumes();
        for (i, space) in self.spaces.iter().enumerate() {
            // Each file system once, however many locations it holds.
            if self.spaces[..i].iter().any(|s| Arc::ptr_eq(s, space)) {
                continue;
            }
            let largest = volumes
                .iter()
                .filter(|v| {
                    self.space_of(v.dir())
                        .is_some_and(|s| Arc::ptr_eq(s, space))
                })
                .map(|v| v.compaction_needs() + COMPACTION_MARGIN)
                .max()
                .unwrap_or(0);
            space.set_compaction(largest);
            space.refresh()?;
        }
        Ok(self.space())
    }

    /// Each location's free space as last measured, in the order of
    /// [`Store::locations`].
    pub fn space(&self) -> Vec<SpaceReport> {
        self.spaces.iter().map(|s| s.report()).collect()
    }

    /// The free space of each file system holding locations of `tier`
    /// (once each, however many locations it holds), as last measured.
    pub fn tier_space(&self, tier: Tier) -> Vec<SpaceReport> {
        let mut seen: Vec<&Arc<DiskSpace>> = Vec::new();
        for (location, space) in self.config.locations.iter().zip(&self.spaces) {
            if location.tier == tier && !seen.iter().any(|s| Arc::ptr_eq(s, space)) {
                seen.push(space);
            }
        }
        seen.iter().map(|s| s.report()).collect()
    }

    /// Moves that were under way when the store was last closed and that the
    /// server must resume (see [`moves::settle`]); returned once.
    pub fn take_pending_moves(&self) -> Vec<MoveJob> {
        std::mem::take(&mut *self.pending_moves.lock())
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
        let location = self.roomiest(tier)?;
        let report = self.spaces[location].report();
        if report.is_low() {
            return Err(Error::LowSpace {
                path: self.config.locations[location].path.clone(),
                free: report.free,
                reserved: report.reserved,
            });
        }
        let volume = Arc::new(Volume::create(
            &self.config.locations[location].path,
            id,
            tier,
            collection,
            self.config.volume,
        )?);
        volume.attach_space(Arc::clone(&self.spaces[location]));
        self.volumes
            .write()
            .insert(id, Handle::Local(Arc::clone(&volume)));
        Ok(volume)
    }

    /// The settings every local volume is opened with.
    pub(crate) fn volume_config(&self) -> VolumeConfig {
        self.config.volume
    }

    /// Serves `volume` (opened by the caller) under the reserve of its
    /// location; refused if a volume of its id is served already.
    pub(crate) fn insert_local(&self, volume: Arc<Volume>) -> Result<()> {
        let _creating = self.creating.lock();
        let mut volumes = self.volumes.write();
        if volumes.contains_key(&volume.id()) {
            return Err(Error::VolumeExists(volume.id()));
        }
        self.attach_space(&volume);
        volumes.insert(volume.id(), Handle::Local(volume));
        Ok(())
    }

    /// Serves the cold volume `cold` (opened by the caller); refused if a
    /// volume of its id is served already.
    pub(crate) fn insert_cold(&self, cold: Arc<ColdVolume>) -> Result<()> {
        let _creating = self.creating.lock();
        let mut volumes = self.volumes.write();
        if volumes.contains_key(&cold.id()) {
            return Err(Error::VolumeExists(cold.id()));
        }
        volumes.insert(cold.id(), Handle::Cold(cold));
        Ok(())
    }

    /// The volume with this id, local or cold.
    pub fn handle(&self, id: VolumeId) -> Result<Handle> {
        self.volumes
            .read()
            .get(&id)
            .cloned()
            .ok_or(Error::VolumeNotFound(id))
    }

    /// The local volume with this id ([`Error::Cold`] if it is cold).
    pub fn volume(&self, id: VolumeId) -> Result<Arc<Volume>> {
        match self.handle(id)? {
            Handle::Local(v) => Ok(v),
            Handle::Cold(_) => Err(Error::Cold(id)),
        }
    }

    /// The cold volume with this id.
    pub fn cold_volume(&self, id: VolumeId) -> Result<Arc<ColdVolume>> {
        match self.handle(id)? {
            Handle::Cold(c) => Ok(c),
            Handle::Local(_) => Err(Error::VolumeNotFound(id)),
        }
    }

    /// Every local volume, by id.
    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        let mut all: Vec<_> = self
            .volumes
            .read()
            .values()
            .filter_map(|h| match h {
                Handle::Local(v) => Some(Arc::clone(v)),
                Handle::Cold(_) => None,
            })
            .collect();
        all.sort_by_key(|v| v.id());
        all
    }

    /// Every volume, local and cold, by id.
    pub fn handles(&self) -> Vec<Handle> {
        let mut all: Vec<_> = self
            .volumes
            .read()
            .iter()
            .map(|(id, h)| (*id, h.clone()))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, h)| h).collect()
    }

    /// Every cold volume, by id.
    pub fn cold_volumes(&self) -> Vec<Arc<ColdVolume>> {
        let mut all: Vec<_> = self
            .volumes
            .read()
            .values()
            .filter_map(|h| match h {
                Handle::Cold(c) => Some(Arc::clone(c)),
                Handle::Local(_) => None,
            })
            .collect();
        all.sort_by_key(|c| c.id());
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

    /// Reads a blob, verifying blobs up to `verify_up_to` bytes; see
    /// [`Volume::read_checked`].
    pub fn read_checked(
        &self,
        volume: VolumeId,
        id: NeedleId,
        cookie: Cookie,
        verify_up_to: u64,
    ) -> Result<Needle> {
        self.volume(volume)?.read_checked(id, cookie, verify_up_to)
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

    /// Stats of every volume, local and cold, by id.
    pub fn stats(&self) -> Vec<VolumeStats> {
        let mut all: Vec<_> = self.volumes.read().values().map(Handle::stats).collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// The tier of the location `dir` (hot if it is not one of ours).
    pub fn tier_of(&self, dir: &Path) -> Tier {
        self.config
            .locations
            .iter()
            .find(|l| l.path == dir)
            .map_or(Tier::Hot, |l| l.tier)
    }

    /// The index of the location of `tier` with the most room above its
    /// reserve (measured now).
    fn roomiest(&self, tier: Tier) -> Result<usize> {
        self.config
            .locations
            .iter()
            .enumerate()
            .filter(|(_, l)| l.tier == tier)
            .map(|(i, _)| {
                let headroom = self.spaces[i].refresh().map_or(0, |r| r.headroom);
                (i, headroom)
            })
            .max_by_key(|(_, headroom)| *headroom)
            .map(|(i, _)| i)
            .ok_or_else(|| Error::BadFile {
                path: PathBuf::new(),
                reason: format!("no {tier} location configured"),
            })
    }

    /// The location of `tier` with the most room above its reserve, if
    /// that is at least `needed` bytes.
    pub fn location_for(&self, tier: Tier, needed: u64) -> Result<&Location> {
        let i = self.roomiest(tier)?;
        let report = self.spaces[i].report();
        if report.headroom < needed {
            return Err(Error::NoSpace {
                path: self.config.locations[i].path.clone(),
                needed,
                available: report.headroom,
            });
        }
        Ok(&self.config.locations[i])
    }

    /// Moves a local volume to a location of `tier`: seal, persist the job,
    /// copy (throttled), verify, switch, delete the source. Reads go on from
    /// the source until the switch; deletes wait only for the final copy of
    /// the bytes appended since the bulk copy. `progress` counts bytes copied.
    pub fn move_local(
        &self,
        id: VolumeId,
        tier: Tier,
        bytes_per_sec: u64,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<()> {
        let volume = self.volume(id)?;
        if volume.tier() == tier {
            return Ok(());
        }
        volume.seal()?;
        let from = volume.dir().to_owned();
        let bulk_len = volume.data_len();
        let to = self.location_for(tier, bulk_len + (64 << 20))?.path.clone();
        let job = MoveJob::Local {
            volume: id.0,
            from: from.clone(),
            to: to.clone(),
            to_tier: tier,
        };
        job.store()?;
        let result =
            self.copy_and_switch(&volume, &from, &to, tier, bulk_len, bytes_per_sec, progress);
        match result {
            Ok(()) => {
                moves::remove_volume_files(&from, id)?;
                job.remove()
            }
            Err(e) => {
                let (dat, idx, meta) = moving_paths(&to, id);
                for path in [dat, idx, meta] {
                    let _ = std::fs::remove_file(path);
                }
                job.remove()?;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_and_switch(
        &self,
        volume: &Arc<Volume>,
        from: &Path,
        to: &Path,
        tier: Tier,
        bulk_len: u64,
        bytes_per_sec: u64,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<()> {
        let id = volume.id();
        let (src_dat, src_idx, src_meta) = volume_paths(from, id);
        let (dst_dat, dst_idx, dst_meta) = volume_paths(to, id);
        let (mov_dat, mov_idx, mov_meta) = moving_paths(to, id);
        let mut throttle = Throttle::new(bytes_per_sec);
        let mut out = std::fs::File::create(&mov_dat).map_err(|e| Error::io(&mov_dat, e))?;
        let bulk_crc = moves::copy_range(&src_dat, &mut out, 0, bulk_len, &mut throttle, progress)?;
        out.sync_all().map_err(|e| Error::io(&mov_dat, e))?;
        if moves::crc_of(&mov_dat, 0, bulk_len)? != bulk_crc {
            return Err(Error::Corrupt {
                volume: id,
                offset: 0,
                reason: "copy differs from the source",
            });
        }
        // Final copy with deletes held: the tail appended since, and the index.
        let final_len = volume.pause(std::time::Duration::from_secs(30))?;
        let result = (|| {
            let tail = final_len - bulk_len;
            let tail_crc = moves::copy_range(
                &src_dat,
                &mut out,
                bulk_len,
                tail,
                &mut Throttle::new(0),
                progress,
            )?;
            out.sync_all().map_err(|e| Error::io(&mov_dat, e))?;
            if moves::crc_of(&mov_dat, bulk_len, tail)? != tail_crc {
                return Err(Error::Corrupt {
                    volume: id,
                    offset: bulk_len,
                    reason: "copy differs from the source",
                });
            }
            let entries = read_index_file(&src_idx, id)?;
            write_index_file(&mov_idx, id, &entries)?;
            std::fs::copy(&src_meta, &mov_meta).map_err(|e| Error::io(&src_meta, e))?;
            std::fs::File::open(&mov_meta)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&mov_meta, e))?;
            std::fs::rename(&mov_idx, &dst_idx).map_err(|e| Error::io(&dst_idx, e))?;
            std::fs::rename(&mov_meta, &dst_meta).map_err(|e| Error::io(&dst_meta, e))?;
            sync_parent(&dst_idx)?;
            // The commit point.
            std::fs::rename(&mov_dat, &dst_dat).map_err(|e| Error::io(&dst_dat, e))?;
            sync_parent(&dst_dat)?;
            Volume::open(to, id, tier, self.config.volume)
        })();
        match result {
            Ok(moved) => {
                self.attach_space(&moved);
                self.volumes
                    .write()
                    .insert(id, Handle::Local(Arc::new(moved)));
                volume.retire();
                Ok(())
            }
            Err(e) => {
                if !dst_dat.exists() {
                    let _ = std::fs::remove_file(&dst_idx);
                    let _ = std::fs::remove_file(&dst_meta);
                }
                volume.resume();
                Err(e)
            }
        }
    }

    /// Switches a local volume whose data file was uploaded and verified to
    /// cold: with deletes held, writes its index as `.cidx` and the manifest
    /// (the commit point), then serves it cold and removes the local data.
    pub fn commit_to_cold(
        &self,
        id: VolumeId,
        manifest: &ColdManifest,
        job: &MoveJob,
    ) -> Result<()> {
        self.switch_to_cold(id, manifest, |volume, cidx, _| {
            let (_, idx, _) = volume_paths(volume.dir(), id);
            let entries = read_index_file(&idx, id)?;
            write_index_file(cidx, id, &entries)
        })?;
        job.remove()
    }

    /// Switches a local copy of a replicated volume to cold on the object
    /// that another copy uploaded (`manifest`, its `index` file's bytes and
    /// its `tombstones`). With the volume paused: every needle live here must
    /// be in that index (else [`Error::Diverged`] and nothing changes); the
    /// index is written as `.cidx`, the tombstones of both copies as `.tomb`,
    /// then the manifest (the commit point); the copy is then served cold
    /// and its local data removed. The caller has checked the object.
    pub fn adopt_cold(
        &self,
        id: VolumeId,
        manifest: &ColdManifest,
        index: &[u8],
        tombstones: &[NeedleId],
    ) -> Result<()> {
        let (_, cidx_label, _) = cold_paths(Path::new(""), id);
        let entries = parse_index(index, id, &cidx_label)?;
        self.switch_to_cold(id, manifest, |volume, cidx, tomb| {
            let mut theirs: std::collections::HashSet<NeedleId> = entries
                .iter()
                .filter(|e| !e.tombstone && e.offset + e.record_len <= manifest.object_len)
                .map(|e| e.needle_id)
                .collect();
            let mut deleted: std::collections::BTreeSet<NeedleId> =
                tombstones.iter().copied().collect();
            for e in entries.iter().filter(|e| e.tombstone) {
                theirs.remove(&e.needle_id);
                deleted.insert(e.needle_id);
            }
            let mut missing = Vec::new();
            for state in volume.needle_states(NeedleId(0), NeedleId(u64::MAX)) {
                if state.deleted {
                    deleted.insert(state.id);
                } else if !theirs.contains(&state.id) && !deleted.contains(&state.id) {
                    missing.push(state.id);
                }
            }
            if !missing.is_empty() {
                return Err(Error::Diverged(format!(
                    "{} needle(s) live on this copy are not in the cold object (first {}); \
                     the copies must agree first",
                    missing.len(),
                    missing[0]
                )));
            }
            let deleted: Vec<NeedleId> = deleted.into_iter().collect();
            crate::file::write_atomically(cidx, index)?;
            write_tomb_file(tomb, &deleted)
        })
    }

    /// The switch of a local volume to cold, shared by a move and a share:
    /// with the volume paused, `write` writes `.cidx` (and `.tomb`), then
    /// the manifest is written (the commit point) and the volume opened
    /// cold; the local data is then removed. Before the commit point an
    /// error leaves the local volume as it was.
    fn switch_to_cold(
        &self,
        id: VolumeId,
        manifest: &ColdManifest,
        write: impl FnOnce(&Volume, &Path, &Path) -> Result<()>,
    ) -> Result<()> {
        let volume = self.volume(id)?;
        let dir = volume.dir().to_owned();
        let (manifest_path, cidx, tomb) = cold_paths(&dir, id);
        volume.pause(std::time::Duration::from_secs(30))?;
        let result = (|| {
            write(&volume, &cidx, &tomb)?;
            manifest.store(&manifest_path)?;
            ColdVolume::open(&dir, id)
        })();
        match result {
            Ok(cold) => {
                self.volumes
                    .write()
                    .insert(id, Handle::Cold(Arc::new(cold)));
                volume.retire();
                drop(volume);
                let (dat, idx, _) = volume_paths(&dir, id);
                crate::cold::remove_if_exists(&dat)?;
                sync_parent(&dat)?;
                crate::cold::remove_if_exists(&idx)
            }
            Err(e) => {
                if !manifest_path.exists() {
                    let _ = std::fs::remove_file(&cidx);
                    let _ = std::fs::remove_file(&tomb);
                }
                volume.resume();
                Err(e)
            }
        }
    }

    /// Installs a new cold copy of a volume this store does not hold, on
    /// the object another copy reads: its `index` file's bytes, tombstones
    /// and `.meta` file, on the location with the most free space. The
    /// manifest is written last (the commit point); the caller has checked
    /// the object.
    pub fn install_cold(
        &self,
        id: VolumeId,
        manifest: &ColdManifest,
        index: &[u8],
        tombstones: &[NeedleId],
        meta: &[u8],
    ) -> Result<()> {
        let _creating = self.creating.lock();
        if self.volumes.read().contains_key(&id) {
            return Err(Error::VolumeExists(id));
        }
        let location = self
            .config
            .locations
            .iter()
            .max_by_key(|l| available_space(&l.path).unwrap_or(0))
            .ok_or_else(|| Error::BadFile {
                path: PathBuf::new(),
                reason: "no location configured".into(),
            })?;
        let dir = location.path.clone();
        let (manifest_path, cidx, tomb) = cold_paths(&dir, id);
        let (_, _, meta_path) = volume_paths(&dir, id);
        parse_index(index, id, &cidx)?;
        let result = (|| {
            crate::file::write_atomically(&cidx, index)?;
            write_tomb_file(&tomb, tombstones)?;
            if !meta.is_empty() {
                crate::file::write_atomically(&meta_path, meta)?;
            }
            manifest.store(&manifest_path)?;
            ColdVolume::open(&dir, id)
        })();
        match result {
            Ok(cold) => {
                self.volumes
                    .write()
                    .insert(id, Handle::Cold(Arc::new(cold)));
                Ok(())
            }
            Err(e) => {
                if !manifest_path.exists() {
                    for path in [&cidx, &tomb, &meta_path] {
                        let _ = std::fs::remove_file(path);
                    }
                }
                Err(e)
            }
        }
    }

    /// Switches a cold volume whose data file was downloaded (to
    /// `<id>.dat.moving`) and verified back to local: with cold deletes held,
    /// writes its index, opens it, replays the deletes made while cold, then
    /// removes the manifest (the commit point). The caller deletes the
    /// object and the job afterwards.
    pub fn commit_from_cold(&self, id: VolumeId) -> Result<()> {
        let cold = self.cold_volume(id)?;
        let dir = cold.dir().to_owned();
        let tier = self.tier_of(&dir);
        let (dat, idx, _) = volume_paths(&dir, id);
        let (downloaded, _, _) = moving_paths(&dir, id);
        let (_, cidx, _) = cold_paths(&dir, id);
        let object_len = cold.manifest().object_len;
        let result = cold.with_deletes_held(|| {
            let entries: Vec<_> = read_index_file(&cidx, id)?
                .into_iter()
                .filter(|e| e.offset + e.record_len <= object_len)
                .collect();
            write_index_file(&idx, id, &entries)?;
            std::fs::rename(&downloaded, &dat).map_err(|e| Error::io(&dat, e))?;
            sync_parent(&dat)?;
            let volume = Volume::open(&dir, id, tier, self.config.volume)?;
            self.attach_space(&volume);
            let live: std::collections::HashSet<NeedleId> = cold.needle_ids().into_iter().collect();
            for needle in volume.needle_ids() {
                if !live.contains(&needle) {
                    volume.delete_replayed(needle)?;
                }
            }
            volume.seal()?;
            // The commit point.
            ColdVolume::remove_files(&dir, id)?;
            Ok(volume)
        });
        match result {
            Ok(volume) => {
                self.volumes
                    .write()
                    .insert(id, Handle::Local(Arc::new(volume)));
                Ok(())
            }
            Err(e) => {
                if cold_paths(&dir, id).0.exists() {
                    let _ = std::fs::remove_file(&dat);
                    let _ = std::fs::remove_file(&idx);
                }
                Err(e)
            }
        }
    }

    /// Removes a volume and its local files for good (expiry). For a cold
    /// volume the caller deletes the object.
    pub fn delete_volume(&self, id: VolumeId) -> Result<Handle> {
        let handle = self
            .volumes
            .write()
            .remove(&id)
            .ok_or(Error::VolumeNotFound(id))?;
        match &handle {
            Handle::Local(volume) => {
                volume.retire();
                moves::remove_volume_files(volume.dir(), id)?;
            }
            Handle::Cold(cold) => {
                ColdVolume::remove_files(cold.dir(), id)?;
                let (_, _, meta) = volume_paths(cold.dir(), id);
                crate::cold::remove_if_exists(&meta)?;
            }
        }
        Ok(handle)
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

/// Ids of the volumes in a directory: local ones (`<id>.dat`, false) and
/// cold ones (`<id>.cold`, true).
fn volume_ids_in(dir: &Path) -> Result<Vec<(VolumeId, bool)>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (stem, cold) = if let Some(stem) = name.strip_suffix(".dat") {
            (stem, false)
        } else if let Some(stem) = name.strip_suffix(".cold") {
            (stem, true)
        } else {
            continue;
        };
        if let Ok(id) = stem.parse::<u32>() {
            ids.push((VolumeId(id), cold));
        }
    }
    ids.sort();
    ids.dedup_by_key(|(id, _)| *id);
    Ok(ids)
}
