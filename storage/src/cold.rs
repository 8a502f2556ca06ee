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

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file::{sync_parent, write_atomically};
use crate::format::NeedleHeader;
use crate::meta::VolumeMeta;
use crate::sealed::SealedIndex;
pub use crate::sealed::{
    TOMB_ENTRY_LEN, parse_index, parse_tombs, read_index_file, read_tomb_file, write_index_file,
    write_tomb_file,
};
use crate::types::{Cookie, NeedleId, Tier, VolumeId};
use crate::volume::{Needle, VolumeStats, volume_paths};

/// Version of the manifest layout written by this build.
pub const MANIFEST_VERSION: u32 = 1;

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
        write_atomically(path, &self.encode(path)?)
    }

    /// The manifest file's bytes (`path` names it in errors).
    pub fn encode(&self, path: &Path) -> Result<Vec<u8>> {
        let text = toml::to_string(self).map_err(|e| Error::BadFile {
            path: path.to_owned(),
            reason: format!("cannot encode cold manifest: {e}"),
        })?;
        Ok(text.into_bytes())
    }
}

/// An open cold volume.
pub struct ColdVolume {
    id: VolumeId,
    dir: PathBuf,
    manifest: ColdManifest,
    meta: VolumeMeta,
    index: SealedIndex,
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

impl ColdVolume {
    /// Opens a cold volume from its manifest, index and tombstones. Reads
    /// only local files.
    pub fn open(dir: &Path, id: VolumeId) -> Result<ColdVolume> {
        let (manifest_path, cidx_path, tomb_path) = cold_paths(dir, id);
        let (_, _, meta_path) = volume_paths(dir, id);
        let manifest = ColdManifest::load(&manifest_path)?;
        let meta = VolumeMeta::load(&meta_path)?.unwrap_or_else(|| VolumeMeta::new(""));
        let entries = read_index_file(&cidx_path, id)?;
        let index = SealedIndex::open(id, &entries, manifest.object_len, &tomb_path)?;
        Ok(ColdVolume {
            id,
            dir: dir.to_owned(),
            manifest,
            meta,
            index,
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

    /// The byte range of the object holding a live needle's record.
    pub fn locate(&self, id: NeedleId) -> Result<Range<u64>> {
        self.index.locate(id)
    }

    /// Checks the header fetched from the start of a needle's range: the
    /// right needle, and the right cookie.
    pub fn check_header(&self, id: NeedleId, cookie: Cookie, bytes: &[u8]) -> Result<NeedleHeader> {
        self.index.check_header(id, cookie, bytes)
    }

    /// Turns the bytes fetched for [`ColdVolume::locate`]'s range into the
    /// needle, verifying the record checksum (corrupt bytes are an error,
    /// never data) and the cookie.
    pub fn decode(&self, id: NeedleId, cookie: Cookie, bytes: Bytes) -> Result<Needle> {
        self.index.decode(id, cookie, bytes)
    }

    /// Deletes a needle: appends it to the `.tomb` file and fsyncs. The
    /// caller has checked the cookie (see [`ColdVolume::check_header`]).
    pub fn delete(&self, id: NeedleId) -> Result<()> {
        self.index.delete(id)
    }

    /// Holds cold deletes while `f` runs (a move back from cold applies the
    /// tombstones to the downloaded data file under it).
    pub fn with_deletes_held<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.index.with_deletes_held(f)
    }

    /// Every live needle id.
    pub fn needle_ids(&self) -> Vec<NeedleId> {
        self.index.needle_ids()
    }

    /// Size and garbage; the file size is the object's length.
    pub fn stats(&self) -> VolumeStats {
        let counts = self.index.counts();
        VolumeStats {
            id: self.id,
            tier: Tier::Cold,
            sealed: true,
            needles: counts.needles,
            live_bytes: counts.live_bytes,
            garbage_bytes: counts.garbage_bytes,
            file_bytes: self.manifest.object_len,
            max_size: self.manifest.object_len,
            index_memory_bytes: counts.memory_bytes,
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
