//! A cold volume: its data file is an object in object storage; its index
//! stays on local disk, so opening it never downloads anything and a read is
//! one ranged GET of one record.
//!
//! Files in the volume's directory (the disk it left from):
//!
//! | file | what | written |
//! |---|---|---|
//! | `<id>.cold` | [`ColdManifest`]: bucket, key, length, ETag, storage class | atomically; its existence commits a move to cold |
//! | `<id>.cidx` | the index file of the uploaded data file (same format as `.idx`) | before the manifest, never changed after |
//! | `<id>.tomb` | needles deleted while cold, 16 bytes each | appended and fsynced per delete |
//! | `<id>.meta` | the volume state file | unchanged |
//!
//! This module has no networking: the server fetches the byte range that
//! [`ColdVolume::locate`] names and hands it to [`ColdVolume::decode`], which
//! verifies the record's checksum before any byte is served.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file::{sync_parent, write_atomically};
use crate::format::{
    self, ALIGNMENT, INDEX_ENTRY_LEN, INDEX_HEADER_LEN, IndexEntry, IndexHeader, NEEDLE_HEADER_LEN,
    NeedleHeader,
};
use crate::index::NeedleIndex;
use crate::meta::VolumeMeta;
use crate::types::{Cookie, NeedleId, Tier, VolumeId};
use crate::volume::{Needle, VolumeStats, unix_now, volume_paths};

/// Version of the manifest layout written by this build.
pub const MANIFEST_VERSION: u32 = 1;

/// Length of one entry of the `.tomb` file: needle id (u64 LE), CRC-32 of
/// those 8 bytes (u32 LE), 4 zero bytes.
pub const TOMB_ENTRY_LEN: usize = 16;

/// Where a cold volume's data file is, and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdManifest {
    /// Layout version.
    pub version: u32,
    /// The bucket holding the object.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// The object's storage class (`STANDARD`, `GLACIER`, ...).
    pub storage_class: String,
    /// Length of the object: the data file as uploaded.
    pub object_len: u64,
    /// The object's ETag as computed locally before upload (multipart form:
    /// MD5 of the parts' MD5s, `-N`).
    pub etag: String,
    /// Part size used for the upload (to recompute the ETag of a download).
    pub part_size: u64,
    /// When the upload was verified, Unix seconds.
    pub uploaded_at: u64,
    /// When every needle of the volume has expired (None: some never do).
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// Paths of a cold volume's own files: manifest, index, tombstones.
pub fn cold_paths(dir: &Path, id: VolumeId) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(format!("{id}.cold")),
        dir.join(format!("{id}.cidx")),
        dir.join(format!("{id}.tomb")),
    )
}

impl ColdManifest {
    /// Loads a manifest.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(&text, path)
    }

    /// Decodes a manifest file's bytes (`path` names them in errors).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|e| Error::BadFile {
            path: path.to_owned(),
            reason: format!("unreadable cold manifest: {e}"),
        })?;
        let manifest: ColdManifest = toml::from_str(text).map_err(|e| Error::BadFile {
            path: path.to_owned(),
            reason: format!("unreadable cold manifest: {e}"),
        })?;
        if manifest.version > MANIFEST_VERSION {
            return Err(Error::BadFile {
                path: path.to_owned(),
                reason: format!("cold manifest version {} is too new", manifest.version),
            });
        }
        Ok(manifest)
    }

    /// Writes the manifest atomically (temp file, fsync, rename, fsync dir).
    pub fn store(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::BadFile {
            path: path.to_owned(),
            reason: format!("cannot encode cold manifest: {e}"),
        })?;
        write_atomically(path, text.as_bytes())
    }
}

struct ColdState {
    index: NeedleIndex,
    /// Start offsets (divided by 8) of every record in the object, sorted: a
    /// record ends at most where the next one starts.
    bounds: Vec<u32>,
    live_bytes: u64,
    garbage_bytes: u64,
    /// Record length of each live needle, to account deletes.
    lens: HashMap<NeedleId, u64>,
}

/// An open cold volume.
pub struct ColdVolume {
    id: VolumeId,
    dir: PathBuf,
    manifest: ColdManifest,
    meta: VolumeMeta,
    state: RwLock<ColdState>,
    tomb: Mutex<File>,
}

impl std::fmt::Debug for ColdVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdVolume")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("key", &self.manifest.key)
            .finish_non_exhaustive()
    }
}

/// Reads an index file's entries, stopping at a torn tail.
pub fn read_index_file(path: &Path, id: VolumeId) -> Result<Vec<IndexEntry>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_index(&bytes, id, path)
}

/// Decodes the bytes of an index file of volume `id` (`path` names them
/// in errors), stopping at a torn tail.
pub fn parse_index(bytes: &[u8], id: VolumeId, path: &Path) -> Result<Vec<IndexEntry>> {
    if bytes.len() < INDEX_HEADER_LEN {
        return Err(Error::BadFile {
            path: path.to_owned(),
            reason: "index shorter than its header".into(),
        });
    }
    let header = IndexHeader::decode(&bytes[..INDEX_HEADER_LEN]).map_err(|e| Error::BadFile {
        path: path.to_owned(),
        reason: format!("bad index header: {e}"),
    })?;
    if header.volume_id != id {
        return Err(Error::BadFile {
            path: path.to_owned(),
            reason: format!("index of volume {}", header.volume_id),
        });
    }
    Ok(bytes[INDEX_HEADER_LEN..]
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(IndexEntry::decode)
        .collect())
}

/// Writes an index file holding `entries`, atomically.
pub fn write_index_file(path: &Path, id: VolumeId, entries: &[IndexEntry]) -> Result<()> {
    let mut buf = Vec::with_capacity(INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN);
    buf.extend_from_slice(&IndexHeader { volume_id: id }.encode());
    for entry in entries {
        entry.encode(&mut buf);
    }
    write_atomically(path, &buf)
}

/// Reads the needle ids in a `.tomb` file, ignoring a torn or corrupt tail.
pub fn read_tomb_file(path: &Path) -> Result<Vec<NeedleId>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(parse_tombs(&bytes))
}

/// Decodes the bytes of a `.tomb` file, ignoring a torn or corrupt tail.
pub fn parse_tombs(bytes: &[u8]) -> Vec<NeedleId> {
    let mut ids = Vec::new();
    for chunk in bytes.chunks_exact(TOMB_ENTRY_LEN) {
        let id: [u8; 8] = chunk[..8].try_into().unwrap_or_default();
        let crc: [u8; 4] = chunk[8..12].try_into().unwrap_or_default();
        if crc32fast::hash(&id) != u32::from_le_bytes(crc) {
            break;
        }
        ids.push(NeedleId(u64::from_le_bytes(id)));
    }
    ids
}

/// Writes a `.tomb` file holding `ids`, atomically.
pub fn write_tomb_file(path: &Path, ids: &[NeedleId]) -> Result<()> {
    let mut buf = Vec::with_capacity(ids.len() * TOMB_ENTRY_LEN);
    for id in ids {
        buf.extend_from_slice(&tomb_entry(*id));
    }
    write_atomically(path, &buf)
}

fn tomb_entry(id: NeedleId) -> [u8; TOMB_ENTRY_LEN] {
    let mut entry = [0u8; TOMB_ENTRY_LEN];
    entry[..8].copy_from_slice(&id.0.to_le_bytes());
    entry[8..12].copy_from_slice(&crc32fast::hash(&id.0.to_le_bytes()).to_le_bytes());
    entry
}

impl ColdVolume {
    /// Opens a cold volume from its manifest, index and tombstones. Reads
    /// only local files.
    pub fn open(dir: &Path, id: VolumeId) -> Result<ColdVolume> {
        let (manifest_path, cidx_path, tomb_path) = cold_paths(dir, id);
        let (_, _, meta_path) = volume_paths(dir, id);
        let manifest = ColdManifest::load(&manifest_path)?;
        let meta = VolumeMeta::load(&meta_path)?.unwrap_or_else(|| VolumeMeta::new(""));
        let entries = read_index_file(&cidx_path, id)?;
        let object_len = manifest.object_len;
        let mut index = NeedleIndex::new();
        let mut lens = HashMap::new();
        let mut bounds = Vec::with_capacity(entries.len());
        let (mut live_bytes, mut garbage_bytes) = (0u64, 0u64);
        for entry in &entries {
            if entry.offset + entry.record_len <= object_len {
                bounds.push((entry.offset / ALIGNMENT) as u32);
            }
            if entry.tombstone {
                // Kept for good, as in a local volume: live, not garbage.
                live_bytes += entry.record_len;
                if index.remove(entry.needle_id).is_some() {
                    let len = lens.remove(&entry.needle_id).unwrap_or(0);
                    live_bytes -= len;
                    garbage_bytes += len;
                }
            } else if entry.offset + entry.record_len <= object_len {
                if index
                    .insert(entry.needle_id, entry.offset, entry.record_len)
                    .is_some()
                {
                    let len = lens.remove(&entry.needle_id).unwrap_or(0);
                    live_bytes -= len;
                    garbage_bytes += len;
                }
                lens.insert(entry.needle_id, entry.record_len);
                live_bytes += entry.record_len;
            }
        }
        for needle in read_tomb_file(&tomb_path)? {
            if index.remove(needle).is_some() {
                let len = lens.remove(&needle).unwrap_or(0);
                live_bytes -= len;
                garbage_bytes += len;
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let tomb = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&tomb_path)
            .map_err(|e| Error::io(&tomb_path, e))?;
        Ok(ColdVolume {
            id,
            dir: dir.to_owned(),
            manifest,
            meta,
            state: RwLock::new(ColdState {
                index,
                bounds,
                live_bytes,
                garbage_bytes,
                lens,
            }),
            tomb: Mutex::new(tomb),
        })
    }

    /// The volume's id.
    pub fn id(&self) -> VolumeId {
        self.id
    }

    /// The directory holding the manifest and index.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the data object is.
    pub fn manifest(&self) -> &ColdManifest {
        &self.manifest
    }

    /// The collection the volume belongs to.
    pub fn collection(&self) -> &str {
        &self.meta.collection
    }

    /// When the volume was sealed, Unix seconds.
    pub fn sealed_at(&self) -> Option<u64> {
        self.meta.sealed_at
    }

    /// The byte range of the object holding a live needle's record (it may
    /// run past the record's end, never past the next record's start).
    pub fn locate(&self, id: NeedleId) -> Result<Range<u64>> {
        let state = self.state.read();
        let offset = state.index.get(id).ok_or(Error::NeedleNotFound {
            volume: self.id,
            needle: id,
        })?;
        let key = (offset / ALIGNMENT) as u32;
        let next = state.bounds.partition_point(|&b| b <= key);
        let end = state
            .bounds
            .get(next)
            .map_or(self.manifest.object_len, |&b| u64::from(b) * ALIGNMENT);
        Ok(offset..end.min(self.manifest.object_len))
    }

    /// Checks the header fetched from the start of a needle's range: the
    /// right needle, and the right cookie.
    pub fn check_header(&self, id: NeedleId, cookie: Cookie, bytes: &[u8]) -> Result<NeedleHeader> {
        let corrupt = |reason| Error::Corrupt {
            volume: self.id,
            offset: 0,
            reason,
        };
        let header = NeedleHeader::decode(bytes.get(..NEEDLE_HEADER_LEN).ok_or(corrupt("short"))?)
            .map_err(|_| corrupt("bad needle header"))?;
        if header.needle_id != id || header.is_tombstone() {
            return Err(corrupt("index points at another record"));
        }
        if header.cookie != cookie {
            return Err(Error::WrongCookie {
                volume: self.id,
                needle: id,
            });
        }
        Ok(header)
    }

    /// Turns the bytes fetched for [`ColdVolume::locate`]'s range into the
    /// needle, verifying the record checksum (corrupt bytes are an error,
    /// never data) and the cookie.
    pub fn decode(&self, id: NeedleId, cookie: Cookie, bytes: Bytes) -> Result<Needle> {
        let header = self.check_header(id, cookie, &bytes)?;
        let record_len = header.record_len() as usize;
        let corrupt = |reason| Error::Corrupt {
            volume: self.id,
            offset: 0,
            reason,
        };
        let record = bytes.get(..record_len).ok_or(corrupt("record cut short"))?;
        let decoded = format::decode_needle(record).map_err(|_| corrupt("checksum mismatch"))?;
        let meta = decoded.meta.clone();
        if meta.expires_at.is_some_and(|t| t <= unix_now()) {
            return Err(Error::Expired {
                volume: self.id,
                needle: id,
            });
        }
        let checksum = decoded.checksum;
        let data = bytes.slice(NEEDLE_HEADER_LEN..NEEDLE_HEADER_LEN + header.data_len as usize);
        Ok(Needle {
            id,
            data,
            meta,
            checksum,
        })
    }

    /// Deletes a needle: appends it to the `.tomb` file and fsyncs. The
    /// caller has checked the cookie (see [`ColdVolume::check_header`]).
    pub fn delete(&self, id: NeedleId) -> Result<()> {
        let mut tomb = self.tomb.lock();
        if self.state.read().index.get(id).is_none() {
            return Err(Error::NeedleNotFound {
                volume: self.id,
                needle: id,
            });
        }
        let (_, _, tomb_path) = cold_paths(&self.dir, self.id);
        tomb.write_all(&tomb_entry(id))
            .and_then(|()| tomb.sync_data())
            .map_err(|e| Error::io(&tomb_path, e))?;
        let mut state = self.state.write();
        if state.index.remove(id).is_some() {
            let len = state.lens.remove(&id).unwrap_or(0);
            state.live_bytes -= len;
            state.garbage_bytes += len;
        }
        Ok(())
    }

    /// Holds cold deletes while `f` runs (a move back from cold applies the
    /// tombstones to the downloaded data file under it).
    pub fn with_deletes_held<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _tomb = self.tomb.lock();
        f()
    }

    /// Every live needle id.
    pub fn needle_ids(&self) -> Vec<NeedleId> {
        self.state.read().index.iter().map(|(id, _)| id).collect()
    }

    /// Size and garbage; the file size is the object's length.
    pub fn stats(&self) -> VolumeStats {
        let state = self.state.read();
        VolumeStats {
            id: self.id,
            tier: Tier::Cold,
            sealed: true,
            needles: state.index.len() as u64,
            live_bytes: state.live_bytes,
            garbage_bytes: state.garbage_bytes,
            file_bytes: self.manifest.object_len,
            max_size: self.manifest.object_len,
            index_memory_bytes: (state.index.memory_bytes() + state.bounds.capacity() * 4) as u64,
        }
    }

    /// Removes the volume's local files (after its object was moved back or
    /// expired). The manifest goes first: without it nothing else counts.
    pub fn remove_files(dir: &Path, id: VolumeId) -> Result<()> {
        let (manifest, cidx, tomb) = cold_paths(dir, id);
        remove_if_exists(&manifest)?;
        sync_parent(&manifest)?;
        for path in [cidx, tomb] {
            remove_if_exists(&path)?;
        }
        Ok(())
    }
}

/// Removes a file; a missing file is fine.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}
