//! One volume: an append-only data file of needles, its index file, and the
//! in-memory index that makes reads O(1).
//!
//! # Locks
//!
//! - `state` (`RwLock`): the in-memory index and byte counters. Readers hold it
//!   for one hash/vector lookup; writers take it once per durable batch.
//! - `writer` (`Mutex`): the append cursor and the batch of writes waiting to
//!   become durable. Held only to reserve a range or enqueue a finished write,
//!   never during I/O, so writers `pwrite` their disjoint ranges in parallel.
//! - `sync` (`Mutex` + `Condvar`): the group-commit state. One writer at a
//!   time becomes the leader, releases the lock, fsyncs for everybody
//!   waiting, then wakes them: blocked threads through the condvar, and
//!   callers of [`Volume::when_durable`] through their [`Waiter`]s.
//! - `index_file` (`Mutex`): the index file's append cursor.
//! - `claims` (`Mutex`): needle ids held by writes in progress (write-once
//!   ids, see `claim.rs`). Held for one set lookup and one index lookup.
//!
//! Lock order: `claims` before `state`, `writer` before `state`; `claims`
//! and `writer` are never held together. No lock is held across an fsync
//! except `index_file` (which only the sync leader uses).
//!
//! Why one file of ~810 lines: the volume's state, its lock order and its
//! file handles live here; reads, writes, the group commit, compaction and
//! replication are already rooms in `volume/`, and what is left is the shared
//! core they all use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::file::{VolumeFile, sync_parent, tmp_path, write_atomically};
use crate::format::{
    self, ALIGNMENT, INDEX_ENTRY_LEN, INDEX_HEADER_LEN, IndexEntry, IndexHeader, NEEDLE_HEADER_LEN,
    NeedleHeader, NeedleMeta, SUPERBLOCK_LEN, Superblock,
};
use crate::index::NeedleIndex;
use crate::mapped::MappedFile;
use crate::meta::VolumeMeta;
use crate::space::{DiskSpace, SpaceReport};
use recovery::RecoveryReport;

mod claim;
mod commit;
mod compact;
mod log;
mod read;
pub mod recovery;
mod replica;
mod write;
use crate::types::{Cookie, NeedleId, Tier, VolumeId};
pub use claim::Claim;
pub use commit::{SyncDuty, Waiter, Wake};
pub use compact::{COMPACTION_MARGIN, CompactOptions, CompactReport};
pub use log::{LogEntry, MAX_LOG_ENTRIES, VolumeLog};
pub use read::{
    BUFFERED_READ_MAX, DiskRead, FromDisk, HEAD_BYTES, HEAD_RECORD_MAX, Hint, NeedleInfo,
    NeedlePart, Part, RANGE_RECORD_MAX, ReadPlan, Shape, shape,
};
pub use replica::{NeedleState, RangeDigest};
pub use write::{NeedleWriter, Queued, QueuedWrite};

/// When a write counts as acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After an fsync that covers it. Concurrent writers share one fsync
    /// (group commit).
    Always,
    /// After the next periodic fsync: writers wait up to this long so that
    /// more of them share each fsync.
    Batched(Duration),
    /// At once, before any fsync: a crash of the machine (not of the process)
    /// may lose recent writes. The index file still only records synced
    /// needles, and data is synced every [`NEVER_SYNC_EVERY`] writes.
    Never,
}

/// In [`Durability::Never`] mode, sync after this many unsynced writes so that
/// recovery work and the pending-index memory stay bounded.
pub const NEVER_SYNC_EVERY: usize = 65_536;

/// Default maximum size of a volume's data file.
pub const DEFAULT_MAX_VOLUME_SIZE: u64 = 30 << 30;

/// How far past its maximum size a copy of a volume may grow to take
/// needles the other copies hold: copies hold the same needles, not the same
/// bytes (each appends in its own order, keeps its own abandoned uploads and
/// compacts on its own), so a copy that fell behind may need more room than
/// its maximum to become whole. New writes stop at the maximum.
pub fn catch_up_limit(max_size: u64) -> u64 {
    (max_size + max_size / 4).min(format::MAX_VOLUME_SIZE)
}

/// How a volume behaves; the same for every volume of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeConfig {
    /// Largest size of the data file, at most [`format::MAX_VOLUME_SIZE`].
    pub max_size: u64,
    /// When writes are acknowledged.
    pub durability: Durability,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            max_size: DEFAULT_MAX_VOLUME_SIZE,
            durability: Durability::Always,
        }
    }
}

/// A blob to write, with everything stored beside it.
#[derive(Debug, Clone)]
pub struct NeedleWrite<'a> {
    /// The needle's id (from the directory).
    pub id: NeedleId,
    /// The needle's cookie (random, from the directory).
    pub cookie: Cookie,
    /// The blob.
    pub data: &'a [u8],
    /// Content type, file name, times.
    pub meta: NeedleMeta,
}

/// What a successful write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReceipt {
    /// Offset of the record in the data file.
    pub offset: u64,
    /// Length of the record, padding included.
    pub record_len: u64,
    /// The record's CRC-32 (the basis of the HTTP ETag).
    pub checksum: u32,
}

/// A needle read from a volume. `data` is a zero-copy slice of the mapped
/// data file that stays valid however long it is held.
#[derive(Debug, Clone)]
pub struct Needle {
    /// The needle's id.
    pub id: NeedleId,
    /// The blob.
    pub data: Bytes,
    /// Content type, file name, times.
    pub meta: NeedleMeta,
    /// The stored record CRC-32.
    pub checksum: u32,
}

/// A volume's size and garbage, for placement, compaction and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeStats {
    /// The volume.
    pub id: VolumeId,
    /// Where it lives.
    pub tier: Tier,
    /// True if read-only.
    pub sealed: bool,
    /// Live needles.
    pub needles: u64,
    /// Bytes of live records.
    pub live_bytes: u64,
    /// Bytes of deleted or overwritten records and skipped ranges (not
    /// tombstones: they are kept, and count as live).
    pub garbage_bytes: u64,
    /// Size of the data file.
    pub file_bytes: u64,
    /// The configured maximum size.
    pub max_size: u64,
    /// Heap bytes held by the in-memory index.
    pub index_memory_bytes: u64,
}

/// The result of a scrub: every live needle read back and checksummed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Needles checked.
    pub checked: u64,
    /// Needles whose bytes failed validation.
    pub corrupt: Vec<NeedleId>,
}

/// The data file and its map: swapped as one by compaction.
pub(crate) struct Files {
    pub(crate) data: VolumeFile,
    pub(crate) map: Arc<MappedFile>,
    /// The data file opened again for reads from disk
    /// (`POSIX_FADV_RANDOM`: no readahead; see `read.rs`). Its own file
    /// description, so the advice does not reach `data` or the map, through
    /// which recovery, compaction and scrub read in order.
    pub(crate) reader: std::fs::File,
}

impl Files {
    pub(crate) fn new(data: VolumeFile, map: Arc<MappedFile>) -> Result<Files> {
        let reader = crate::file::open_for(data.path(), crate::file::Access::Random)?;
        Ok(Files { data, map, reader })
    }
}

/// What readers see, behind one lock so that an index offset is always
/// read through the map of the file it belongs to.
pub(crate) struct ReadState {
    pub(crate) index: NeedleIndex,
    /// Deleted needles and the offset of their tombstone record. Kept for
    /// good (compaction copies tombstones), so that a copy of the volume
    /// can tell "deleted" from "never had it" and a deleted needle is never
    /// brought back from another copy. About 30 bytes a deleted needle.
    pub(crate) deleted: std::collections::HashMap<NeedleId, u64>,
    pub(crate) files: Arc<Files>,
    pub(crate) live_bytes: u64,
    pub(crate) garbage_bytes: u64,
    /// While a compaction runs: every write and delete applied since it
    /// took its snapshot, for it to catch up with.
    pub(crate) compaction_log: Option<Vec<IndexEntry>>,
}

impl ReadState {
    pub(crate) fn new(files: Arc<Files>) -> Self {
        ReadState {
            index: NeedleIndex::new(),
            deleted: std::collections::HashMap::new(),
            files,
            live_bytes: 0,
            garbage_bytes: 0,
            compaction_log: None,
        }
    }

    /// Applies one durable write or delete to the index and counters.
    pub(crate) fn apply(&mut self, entry: &IndexEntry) {
        if let Some(log) = &mut self.compaction_log {
            log.push(*entry);
        }
        let replaced = if entry.tombstone {
            // A tombstone is kept (compaction copies it): it counts as live.
            self.live_bytes += entry.record_len;
            if let Some(old) = self.deleted.insert(entry.needle_id, entry.offset) {
                // A second tombstone for the same needle: the first is garbage.
                let old_len = record_len_at(&self.files.map, old).unwrap_or(0);
                self.live_bytes = self.live_bytes.saturating_sub(old_len);
                self.garbage_bytes += old_len;
            }
            self.index.remove(entry.needle_id)
        } else {
            self.live_bytes += entry.record_len;
            self.index
                .insert(entry.needle_id, entry.offset, entry.record_len)
        };
        if let Some(old) = replaced {
            let old_len = record_len_at(&self.files.map, old).unwrap_or(0);
            self.live_bytes = self.live_bytes.saturating_sub(old_len);
            self.garbage_bytes += old_len;
        }
    }
}

pub(crate) fn record_len_at(map: &MappedFile, offset: u64) -> Option<u64> {
    let header = NeedleHeader::decode(map.slice(offset, NEEDLE_HEADER_LEN as u64)?).ok()?;
    Some(header.record_len())
}

pub(crate) struct WriterState {
    /// Next free offset in the data file.
    end: u64,
    /// Sequence number of the last write enqueued.
    commit_seq: u64,
    /// Writes enqueued but not yet durable, in commit order.
    pending: Vec<IndexEntry>,
    sealed: bool,
    /// Reservations not yet enqueued or abandoned (all writes, and streamed
    /// ones alone): compaction waits for these before swapping files.
    in_flight: usize,
    streams_in_flight: usize,
    /// Set by compaction: new reservations (all, or streamed ones) wait.
    paused: bool,
    streams_paused: bool,
    /// Set when a move replaced this volume: every write and delete gets
    /// [`Error::Moved`] and goes to the volume's new home.
    retired: bool,
}

struct SyncState {
    /// Every write with a sequence number up to this is durable.
    durable_seq: u64,
    /// A leader is fsyncing.
    syncing: bool,
    /// An fsync failed: refuse writes until reopened.
    poisoned: bool,
    last_sync: Instant,
    /// Callers of [`Volume::when_durable`] waiting for a sequence number.
    waiters: Vec<(u64, Waiter)>,
}

struct IndexFile {
    file: VolumeFile,
    end: u64,
}

/// One open volume.
pub struct Volume {
    id: VolumeId,
    tier: Tier,
    dir: PathBuf,
    config: VolumeConfig,
    /// The data file's format version (its superblock's): the format of
    /// the records written into it.
    format_version: u16,
    state: RwLock<ReadState>,
    writer: Mutex<WriterState>,
    /// Needle ids claimed by writes in progress (see `claim.rs`).
    claims: claim::Claims,
    /// Signalled when `paused`, `streams_paused` or the in-flight counts change.
    writer_changed: Condvar,
    /// True while a compaction runs (one at a time).
    compacting: std::sync::atomic::AtomicBool,
    /// Bytes a running compaction has copied, and will copy.
    compaction_progress: (std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64),
    sync: Mutex<SyncState>,
    synced: Condvar,
    index_file: Mutex<IndexFile>,
    meta: Mutex<VolumeMeta>,
    /// The collection (fixed when the volume is created; read on every
    /// HTTP response, so kept out of the `meta` lock).
    collection: Box<str>,
    recovery: RecoveryReport,
    /// [`Volume::expires_at`] once sealed (no needle is added after that;
    /// deletes can only make the cached time later than the truth).
    expiry: Mutex<Option<Option<u64>>>,
    /// The free-space reserve of the disk the volume is on (none for a
    /// volume opened outside a [`crate::Store`]).
    space: std::sync::OnceLock<Arc<DiskSpace>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("id", &self.id)
            .field("tier", &self.tier)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Paths of a volume's files in `dir`.
pub fn volume_paths(dir: &Path, id: VolumeId) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(format!("{id}.dat")),
        dir.join(format!("{id}.idx")),
        dir.join(format!("{id}.meta")),
    )
}

pub use crate::types::unix_now;

impl Volume {
    /// Creates a new, empty volume in `dir`.
    ///
    /// Crash safety: the index and meta files are written first, then the
    /// data file under a temp name, fsynced and renamed into place, then the
    /// directory is fsynced. A volume exists once its `.dat` does, and a
    /// `.dat` is never seen without a valid superblock.
    pub fn create(
        dir: &Path,
        id: VolumeId,
        tier: Tier,
        collection: &str,
        config: VolumeConfig,
    ) -> Result<Volume> {
        validate_config(&config, dir)?;
        let (dat, idx, meta) = volume_paths(dir, id);
        if dat.exists() {
            return Err(Error::VolumeExists(id));
        }
        write_atomically(&idx, &IndexHeader { volume_id: id }.encode())?;
        VolumeMeta::new(collection).store(&meta)?;
        let superblock = Superblock {
            volume_id: id,
            created_at: unix_now(),
            version: format::FORMAT_VERSION,
        };
        write_atomically(&dat, &superblock.encode())?;
        Volume::open(dir, id, tier, config)
    }

    /// Opens an existing volume, recovering from any crash: loads the index
    /// file, scans the data file past the last indexed record, cuts off a
    /// torn tail, and rebuilds the index file if it is missing or corrupt.
    pub fn open(dir: &Path, id: VolumeId, tier: Tier, config: VolumeConfig) -> Result<Volume> {
        validate_config(&config, dir)?;
        compact::settle_interrupted(dir, id)?;
        let (dat_path, idx_path, meta_path) = volume_paths(dir, id);
        let _ = std::fs::remove_file(tmp_path(&dat_path));
        let _ = std::fs::remove_file(tmp_path(&idx_path));
        let meta = VolumeMeta::load(&meta_path)?.unwrap_or_else(|| VolumeMeta::new(""));
        let data = VolumeFile::open(&dat_path)?;
        let file_len = data.len()?;
        let mut superblock = [0u8; SUPERBLOCK_LEN];
        if file_len < SUPERBLOCK_LEN as u64 {
            return Err(bad_file(&dat_path, "shorter than a superblock"));
        }
        data.read_at(&mut superblock, 0)?;
        let superblock = Superblock::decode(&superblock)
            .map_err(|e| bad_file(&dat_path, &format!("bad superblock: {e}")))?;
        if superblock.volume_id != id {
            return Err(bad_file(
                &dat_path,
                &format!("superblock says volume {}", superblock.volume_id),
            ));
        }
        let map = MappedFile::map(
            data.file(),
            file_len,
            catch_up_limit(config.max_size),
            &dat_path,
        )?;
        let files = Arc::new(Files::new(data, map)?);
        let recovered = recovery::recover(id, &files, &idx_path)?;
        if !recovered.report.is_clean() {
            tracing::warn!(volume = %id, report = ?recovered.report, "volume recovered");
        }
        let index_file = VolumeFile::open(&idx_path)?;
        let end = files.map.readable_len();
        Ok(Volume {
            id,
            tier,
            dir: dir.to_owned(),
            config,
            format_version: superblock.version,
            state: RwLock::new(recovered.state),
            writer: Mutex::new(WriterState {
                end,
                commit_seq: 0,
                pending: Vec::new(),
                sealed: meta.sealed,
                in_flight: 0,
                streams_in_flight: 0,
                paused: false,
                streams_paused: false,
                retired: false,
            }),
            claims: Default::default(),
            writer_changed: Condvar::new(),
            compacting: std::sync::atomic::AtomicBool::new(false),
            compaction_progress: Default::default(),
            sync: Mutex::new(SyncState {
                durable_seq: 0,
                syncing: false,
                poisoned: false,
                last_sync: Instant::now(),
                waiters: Vec::new(),
            }),
            synced: Condvar::new(),
            index_file: Mutex::new(IndexFile {
                file: index_file,
                end: recovered.index_file_len,
            }),
            collection: meta.collection.clone().into_boxed_str(),
            meta: Mutex::new(meta),
            recovery: recovered.report,
            expiry: Mutex::new(None),
            space: std::sync::OnceLock::new(),
        })
    }

    /// Puts the volume under the free-space reserve of its disk (once).
    pub(crate) fn attach_space(&self, space: Arc<DiskSpace>) {
        let _ = self.space.set(space);
    }

    /// The free space of the volume's disk, if it is kept under a reserve.
    pub fn space(&self) -> Option<SpaceReport> {
        self.space.get().map(|s| s.report())
    }

    /// Why the volume takes no new blobs for now (its disk is at its
    /// free-space reserve), if it does not; clears by itself.
    pub fn paused(&self) -> Option<String> {
        let space = self.space.get()?;
        let report = space.report();
        report.is_low().then(|| {
            format!(
                "disk {} at its free-space reserve ({} bytes free, {} kept for deletes and compaction)",
                space.path().display(),
                report.free,
                report.reserved
            )
        })
    }

    /// Bytes a compaction of the volume would write now: its live records
    /// (tombstones included), their index entries, the headers.
    pub fn compaction_needs(&self) -> u64 {
        let state = self.state.read();
        let entries = state.index.len() as u64 + state.deleted.len() as u64;
        state.live_bytes
            + entries * INDEX_ENTRY_LEN as u64
            + SUPERBLOCK_LEN as u64
            + INDEX_HEADER_LEN as u64
    }

    /// The volume's id.
    pub fn id(&self) -> VolumeId {
        self.id
    }

    /// The data file's format version (see `format.rs`): 2 for volumes
    /// created now, 1 for older ones.
    pub fn format_version(&self) -> u16 {
        self.format_version
    }

    /// The tier the volume's files are on.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The directory holding the volume's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The collection the volume belongs to.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// What recovery found when the volume was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Reads a needle: one index lookup and one slice of the map, no copy and
    /// no checksum (the bytes were checksummed when written and are served
    /// from the local page cache; see [`Volume::read_verified`]).
    pub fn read(&self, id: NeedleId, cookie: Cookie) -> Result<Needle> {
        self.read_needle(id, cookie, None)
    }

    /// Reads a needle and verifies its checksum: corrupt bytes are an
    /// [`Error::Corrupt`], never data.
    pub fn read_verified(&self, id: NeedleId, cookie: Cookie) -> Result<Needle> {
        self.read_needle(id, cookie, Some(u64::MAX))
    }

    /// [`Volume::read`], verifying the record checksum if the blob is at
    /// most `verify_up_to` bytes (the cost is one CRC pass over the record,
    /// a fraction of sending it; larger blobs are left to scrub).
    pub fn read_checked(&self, id: NeedleId, cookie: Cookie, verify_up_to: u64) -> Result<Needle> {
        self.read_needle(id, cookie, Some(verify_up_to))
    }

    /// Finds a live needle: its offset, the files it is in, and its header,
    /// with the cookie checked.
    fn find(&self, id: NeedleId, cookie: Cookie) -> Result<(u64, Arc<Files>, NeedleHeader)> {
        let (offset, files) = {
            let state = self.state.read();
            (state.index.get(id), Arc::clone(&state.files))
        };
        let offset = offset.ok_or(Error::NeedleNotFound {
            volume: self.id,
            needle: id,
        })?;
        let header = self.header_at(&files.map, offset, id)?;
        if header.cookie != cookie {
            return Err(Error::WrongCookie {
                volume: self.id,
                needle: id,
            });
        }
        Ok((offset, files, header))
    }

    fn read_needle(
        &self,
        id: NeedleId,
        cookie: Cookie,
        verify_up_to: Option<u64>,
    ) -> Result<Needle> {
        let (offset, files, header) = self.find(id, cookie)?;
        self.needle_in_map(&files, offset, header, verify_up_to)
    }

    /// The needle whose checked header is at `offset`, read through the
    /// map (zero copy), its checksum verified if it is at most
    /// `verify_up_to` bytes.
    fn needle_in_map(
        &self,
        files: &Arc<Files>,
        offset: u64,
        header: NeedleHeader,
        verify_up_to: Option<u64>,
    ) -> Result<Needle> {
        if verify_up_to.is_some_and(|limit| u64::from(header.data_len) <= limit) {
            self.verify_record(&files.map, offset)?;
        }
        read::needle_from_map(self.id, files, offset, header)
    }

    fn header_at(&self, map: &MappedFile, offset: u64, id: NeedleId) -> Result<NeedleHeader> {
        let bytes = map
            .slice(offset, NEEDLE_HEADER_LEN as u64)
            .ok_or_else(|| self.corrupt(offset, "header past end of file"))?;
        let header =
            NeedleHeader::decode(bytes).map_err(|_| self.corrupt(offset, "bad needle header"))?;
        if header.needle_id != id || header.is_tombstone() {
            return Err(self.corrupt(offset, "index points at another record"));
        }
        Ok(header)
    }

    pub(crate) fn verify_record<'m>(
        &self,
        map: &'m MappedFile,
        offset: u64,
    ) -> Result<format::DecodedNeedle<'m>> {
        let header_bytes = map
            .slice(offset, NEEDLE_HEADER_LEN as u64)
            .ok_or_else(|| self.corrupt(offset, "header past end of file"))?;
        let header = NeedleHeader::decode(header_bytes)
            .map_err(|_| self.corrupt(offset, "bad needle header"))?;
        let record = map
            .slice(offset, header.record_len())
            .ok_or_else(|| self.corrupt(offset, "record past end of file"))?;
        format::decode_needle(record).map_err(|_| self.corrupt(offset, "checksum mismatch"))
    }

    fn corrupt(&self, offset: u64, reason: &'static str) -> Error {
        tracing::error!(volume = %self.id, offset, reason, "corrupt needle");
        Error::Corrupt {
            volume: self.id,
            offset,
            reason,
        }
    }

    /// Reads back and checksums every live needle.
    pub fn scrub(&self) -> ScrubReport {
        self.scrub_throttled(0)
    }

    /// [`Volume::scrub`], reading at most `bytes_per_sec` (0 = unlimited) so
    /// that foreground reads keep their latency. Blocks; run it off the
    /// async executor.
    pub fn scrub_throttled(&self, bytes_per_sec: u64) -> ScrubReport {
        let mut throttle = crate::throttle::Throttle::new(bytes_per_sec);
        let (entries, files): (Vec<(NeedleId, u64)>, _) = {
            let state = self.state.read();
            (state.index.iter().collect(), Arc::clone(&state.files))
        };
        let mut report = ScrubReport::default();
        for (id, offset) in entries {
            report.checked += 1;
            match self.verify_record(&files.map, offset) {
                Ok(decoded) if decoded.header.needle_id == id && decoded.chunks_match() => {
                    throttle.block_for(decoded.header.record_len());
                }
                _ => report.corrupt.push(id),
            }
        }
        report.corrupt.sort_unstable();
        report
    }

    /// Ids of all live needles, in no particular order.
    pub fn needle_ids(&self) -> Vec<NeedleId> {
        self.state.read().index.iter().map(|(id, _)| id).collect()
    }

    /// Makes the volume read-only, durably.
    pub fn seal(&self) -> Result<()> {
        self.writer.lock().sealed = true;
        if self.meta.lock().sealed {
            // Sealed durably already (a repeated call: every write a sealed
            // volume refuses asks again): nothing to sync or store.
            return Ok(());
        }
        self.sync_now()?;
        let (_, _, meta_path) = volume_paths(&self.dir, self.id);
        let mut meta = self.meta.lock();
        if !meta.sealed {
            let mut sealed = meta.clone();
            sealed.sealed = true;
            sealed.sealed_at = Some(unix_now());
            sealed.store(&meta_path)?;
            *meta = sealed;
        }
        Ok(())
    }

    /// Holds back every new write and delete, waits up to `timeout` for the
    /// ones in flight, and makes everything durable: the files stop changing
    /// until [`Volume::resume`] or [`Volume::retire`]. A move calls this for
    /// its final copy. Returns the data file's length.
    pub fn pause(&self, timeout: Duration) -> Result<u64> {
        if let Err(e) = self.quiesce(timeout, |_| Ok(())) {
            self.resume();
            return Err(e);
        }
        if let Err(e) = self.sync_now() {
            self.resume();
            return Err(e);
        }
        Ok(self.state.read().files.map.readable_len())
    }

    /// Lets writes and deletes held by [`Volume::pause`] go on.
    pub fn resume(&self) {
        let mut writer = self.writer.lock();
        writer.paused = false;
        writer.streams_paused = false;
        self.writer_changed.notify_all();
    }

    /// Marks the volume as replaced by a move: held and future writes and
    /// deletes fail with [`Error::Moved`]; reads go on from the open map.
    pub fn retire(&self) {
        let mut writer = self.writer.lock();
        writer.retired = true;
        self.writer_changed.notify_all();
    }

    /// Length of the data file's durable part.
    pub fn data_len(&self) -> u64 {
        self.state.read().files.map.readable_len()
    }

    /// When the volume was sealed, Unix seconds.
    pub fn sealed_at(&self) -> Option<u64> {
        self.meta.lock().sealed_at
    }

    /// When every live needle of the volume will have expired, Unix seconds;
    /// `None` if some needle never expires (or the volume is empty and writable).
    /// Reads each live needle's metadata from the map, once for a sealed
    /// volume (then cached: heartbeats ask every pulse).
    pub fn expires_at(&self) -> Option<u64> {
        if let Some(cached) = *self.expiry.lock() {
            return cached;
        }
        let sealed = self.is_sealed();
        let computed = self.scan_expiry();
        if sealed {
            *self.expiry.lock() = Some(computed);
        }
        computed
    }

    fn scan_expiry(&self) -> Option<u64> {
        let (offsets, files): (Vec<u64>, _) = {
            let state = self.state.read();
            (
                state.index.iter().map(|(_, o)| o).collect(),
                Arc::clone(&state.files),
            )
        };
        if offsets.is_empty() {
            return self.is_sealed().then(unix_now);
        }
        let mut latest = 0;
        for offset in offsets {
            let header =
                NeedleHeader::decode(files.map.slice(offset, NEEDLE_HEADER_LEN as u64)?).ok()?;
            let start = offset + NEEDLE_HEADER_LEN as u64 + u64::from(header.data_len);
            let meta_bytes = files.map.slice(start, u64::from(header.metadata_len))?;
            latest = latest.max(NeedleMeta::decode(meta_bytes).ok()?.expires_at?);
        }
        Some(latest)
    }

    /// True if an fsync failed: the volume refuses writes until it is
    /// opened again (what reached the disk is unknown; recovery sorts it
    /// out).
    pub fn is_poisoned(&self) -> bool {
        self.sync.lock().poisoned
    }

    /// True if the volume is read-only.
    pub fn is_sealed(&self) -> bool {
        self.writer.lock().sealed
    }

    /// Syncs everything; the volume stays usable (closing is dropping it).
    pub fn close(&self) -> Result<()> {
        self.sync_now()?;
        let files = Arc::clone(&self.state.read().files);
        sync_parent(files.data.path())
    }

    /// Size, garbage and index memory.
    pub fn stats(&self) -> VolumeStats {
        let sealed = self.is_sealed();
        let state = self.state.read();
        VolumeStats {
            id: self.id,
            tier: self.tier,
            sealed,
            needles: state.index.len() as u64,
            live_bytes: state.live_bytes,
            garbage_bytes: state.garbage_bytes,
            file_bytes: state.files.map.readable_len(),
            max_size: self.config.max_size,
            index_memory_bytes: state.index.memory_bytes() as u64,
        }
    }
}

fn validate_config(config: &VolumeConfig, dir: &Path) -> Result<()> {
    if config.max_size > format::MAX_VOLUME_SIZE || config.max_size < (SUPERBLOCK_LEN as u64) {
        return Err(bad_file(
            dir,
            &format!(
                "max volume size must be between {SUPERBLOCK_LEN} bytes and 32 GiB, not {}",
                config.max_size
            ),
        ));
    }
    Ok(())
}

pub(crate) fn bad_file(path: &Path, reason: &str) -> Error {
    Error::BadFile {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

// The index file header's length is the first entry's offset.
const _: () = assert!(INDEX_HEADER_LEN == INDEX_ENTRY_LEN);
const _: () = assert!((SUPERBLOCK_LEN as u64).is_multiple_of(ALIGNMENT));
