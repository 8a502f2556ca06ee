//! Tier moves as persisted jobs: the job file `<id>.move` in the volume's
//! source directory says what was under way, so that opening a store after a
//! crash finishes or undoes it (see [`settle`]).
//!
//! Every move copies, verifies, switches (one atomic file-system step: the
//! commit point), and only then deletes the source:
//!
//! | move | commit point | before it (on open) | after it (on open) |
//! |---|---|---|---|
//! | local (hot <-> warm) | rename of `to/<id>.dat.moving` to `to/<id>.dat` | remove the copies in `to` | remove the source files |
//! | to cold | `<id>.cold` written | keep the job: the upload resumes | remove `<id>.dat` and `<id>.idx` |
//! | from cold | `<id>.cold` removed | remove the download | remove `.cidx`/`.tomb`; the job stays to delete the object |
//!
//! The byte copying to and from object storage is the server's (this crate
//! has no networking); the file-system steps are here.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::cold::{cold_paths, remove_if_exists};
use crate::error::{Error, Result};
use crate::file::{sync_parent, write_atomically};
use crate::throttle::Throttle;
use crate::types::{Tier, VolumeId};
use crate::volume::volume_paths;

/// A part of a multipart upload that the object store acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    /// Part number, from 1.
    pub number: i32,
    /// The part's ETag as the store returned it (its MD5, hex).
    pub etag: String,
}

/// A move under way, as persisted in `<id>.move`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MoveJob {
    /// Between two local disks.
    Local {
        /// The volume.
        volume: u32,
        /// Source directory.
        from: PathBuf,
        /// Target directory.
        to: PathBuf,
        /// Tier of the target directory.
        to_tier: Tier,
    },
    /// Upload of the data file to object storage.
    ToCold {
        /// The volume.
        volume: u32,
        /// The volume's directory.
        dir: PathBuf,
        /// Target bucket.
        bucket: String,
        /// Target key.
        key: String,
        /// Target storage class.
        storage_class: String,
        /// Bytes per part.
        part_size: u64,
        /// Bytes of the data file being uploaded (fixed when the job starts).
        object_len: u64,
        /// The multipart upload, once created.
        #[serde(default)]
        upload_id: Option<String>,
        /// Parts uploaded so far.
        #[serde(default)]
        parts: Vec<UploadedPart>,
    },
    /// Download of the data file back to local disk.
    FromCold {
        /// The volume.
        volume: u32,
        /// The volume's directory.
        dir: PathBuf,
        /// The object's bucket.
        bucket: String,
        /// The object's key.
        key: String,
        /// True once the volume is local again (only the object's deletion is left).
        #[serde(default)]
        committed: bool,
        /// Other copies of the volume still read the object: it is kept.
        #[serde(default)]
        keep_object: bool,
    },
}

impl MoveJob {
    /// The volume the job moves.
    pub fn volume(&self) -> VolumeId {
        match self {
            MoveJob::Local { volume, .. }
            | MoveJob::ToCold { volume, .. }
            | MoveJob::FromCold { volume, .. } => VolumeId(*volume),
        }
    }

    /// The directory holding the job file.
    pub fn dir(&self) -> &Path {
        match self {
            MoveJob::Local { from, .. } => from,
            MoveJob::ToCold { dir, .. } | MoveJob::FromCold { dir, .. } => dir,
        }
    }

    /// Path of the job file of volume `id` in `dir`.
    pub fn path(dir: &Path, id: VolumeId) -> PathBuf {
        dir.join(format!("{id}.move"))
    }

    /// Loads a job file.
    pub fn load(path: &Path) -> Result<MoveJob> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::BadFile {
            path: path.to_owned(),
            reason: format!("unreadable move job: {e}"),
        })
    }

    /// Writes the job file atomically.
    pub fn store(&self) -> Result<()> {
        let path = MoveJob::path(self.dir(), self.volume());
        let text = toml::to_string(self).map_err(|e| Error::BadFile {
            path: path.clone(),
            reason: format!("cannot encode move job: {e}"),
        })?;
        write_atomically(&path, text.as_bytes())
    }

    /// Removes the job file: the move is over.
    pub fn remove(&self) -> Result<()> {
        let path = MoveJob::path(self.dir(), self.volume());
        remove_if_exists(&path)?;
        sync_parent(&path)
    }
}

/// Paths of the in-progress copies of a volume's files in `dir`.
pub fn moving_paths(dir: &Path, id: VolumeId) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(format!("{id}.dat.moving")),
        dir.join(format!("{id}.idx.moving")),
        dir.join(format!("{id}.meta.moving")),
    )
}

/// Finishes or undoes every move whose job file is in `dir` (see the module
/// table), and returns the jobs that are left for the server to resume:
/// uploads to cold, and committed moves from cold whose object is still to
/// be deleted.
pub fn settle(dir: &Path) -> Result<Vec<MoveJob>> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".move")) else {
            continue;
        };
        if stem.parse::<u32>().is_err() {
            continue;
        }
        let job = MoveJob::load(&entry.path())?;
        if let Some(job) = settle_one(job)? {
            left.push(job);
        }
    }
    left.sort_by_key(MoveJob::volume);
    Ok(left)
}

fn settle_one(job: MoveJob) -> Result<Option<MoveJob>> {
    let id = job.volume();
    match &job {
        MoveJob::Local { from, to, .. } => {
            let (to_dat, to_idx, to_meta) = volume_paths(to, id);
            if to_dat.exists() {
                tracing::warn!(volume = %id, "finishing an interrupted move: removing the source");
                remove_volume_files(from, id)?;
            } else {
                tracing::warn!(volume = %id, "rolling back an interrupted move");
                let (dat, idx, meta) = moving_paths(to, id);
                for path in [dat, idx, meta, to_idx, to_meta] {
                    remove_if_exists(&path)?;
                }
                sync_parent(&to_dat)?;
            }
            job.remove()?;
            Ok(None)
        }
        MoveJob::ToCold { dir, .. } => {
            let (manifest, cidx, tomb) = cold_paths(dir, id);
            if manifest.exists() {
                tracing::warn!(volume = %id, "finishing an interrupted move to cold");
                remove_volume_data(dir, id)?;
                job.remove()?;
                Ok(None)
            } else {
                remove_if_exists(&cidx)?;
                remove_if_exists(&tomb)?;
                Ok(Some(job))
            }
        }
        MoveJob::FromCold { dir, .. } => {
            let (manifest, cidx, tomb) = cold_paths(dir, id);
            if manifest.exists() {
                tracing::warn!(volume = %id, "rolling back an interrupted move from cold");
                remove_volume_data(dir, id)?;
                remove_if_exists(&moving_paths(dir, id).0)?;
                job.remove()?;
                Ok(None)
            } else {
                remove_if_exists(&cidx)?;
                remove_if_exists(&tomb)?;
                let mut job = job;
                if let MoveJob::FromCold { committed, .. } = &mut job {
                    *committed = true;
                }
                Ok(Some(job))
            }
        }
    }
}

/// Removes a local volume's data and index files (the data file first: a
/// volume exists as long as its `.dat` does).
fn remove_volume_data(dir: &Path, id: VolumeId) -> Result<()> {
    let (dat, idx, _) = volume_paths(dir, id);
    remove_if_exists(&dat)?;
    sync_parent(&dat)?;
    remove_if_exists(&idx)
}

/// Removes all of a local volume's files.
pub fn remove_volume_files(dir: &Path, id: VolumeId) -> Result<()> {
    remove_volume_data(dir, id)?;
    let (_, _, meta) = volume_paths(dir, id);
    remove_if_exists(&meta)?;
    sync_parent(&meta)
}

/// Copies `len` bytes of `src` from `from` into `dst` (at the same offset),
/// returning the CRC-32 of the bytes copied. Throttled; adds to `progress`.
pub fn copy_range(
    src: &Path,
    dst: &mut std::fs::File,
    from: u64,
    len: u64,
    throttle: &mut Throttle,
    progress: &AtomicU64,
) -> Result<u32> {
    use std::io::Seek;
    // Read front to back on a descriptor of its own: a large readahead
    // window (reads from disk of the same file go without one).
    let mut input = crate::file::open_for(src, crate::file::Access::Sequential)?;
    input
        .seek(std::io::SeekFrom::Start(from))
        .and_then(|_| dst.seek(std::io::SeekFrom::Start(from)))
        .map_err(|e| Error::io(src, e))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        input
            .read_exact(&mut buf[..n])
            .map_err(|e| Error::io(src, e))?;
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(|e| Error::io(src, e))?;
        left -= n as u64;
        progress.fetch_add(n as u64, Ordering::Relaxed);
        throttle.block_for(n as u64);
    }
    Ok(hasher.finalize())
}

/// CRC-32 of `len` bytes of a file from `from`.
pub fn crc_of(path: &Path, from: u64, len: u64) -> Result<u32> {
    use std::io::Seek;
    let mut file = crate::file::open_for(path, crate::file::Access::Sequential)?;
    file.seek(std::io::SeekFrom::Start(from))
        .map_err(|e| Error::io(path, e))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..n])
            .map_err(|e| Error::io(path, e))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.finalize())
}
