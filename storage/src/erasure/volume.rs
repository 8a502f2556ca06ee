//! An erasure-coded volume as one server holds it: the volume's index and
//! delete journal (every holder keeps both, so any holder locates any needle
//! alone), and the shard files it holds (zero or more).
//!
//! | file | what | written |
//! |---|---|---|
//! | `<id>.ecm` | [`EcManifest`]: code, lengths, every shard's digest | atomically, last: its existence makes the rest count |
//! | `<id>.ecx` | the sealed data file's index (same format as `.idx`) | before the manifest, never changed after |
//! | `<id>.ecj` | needles deleted since encoding, 16 bytes each | appended and fsynced per delete |
//! | `<id>.ecNN` | shard `NN` (see `shard`) | temp file, fsync, rename |
//! | `<id>.ech` | the gRPC address of each shard's holder, one a line, shard by shard, as last told | atomically, whenever told |
//! | `<id>.ecmeta` | the volume state file (collection, sealed time), `.meta` format; a file of its own, as a replicated copy of the same volume may share the directory | before the manifest |
//!
//! No networking here: the server reads the pieces [`EcVolume::locate`]
//! names from itself or from their holders, restores missing ones with
//! [`restore_piece`], and hands the bytes to [`EcVolume::decode`], which
//! checks the record's checksum before any byte is served.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::codec;
use super::layout::{Code, Layout, Piece};
use super::shard::{ShardFile, shard_path};
use crate::cold::remove_if_exists;
use crate::error::{Error, Result};
use crate::file::{sync_parent, write_atomically};
use crate::format::{IndexEntry, NeedleHeader};
use crate::meta::VolumeMeta;
use crate::sealed::{SealedIndex, read_index_file, write_index_file};
use crate::types::{Cookie, NeedleId, Tier, VolumeId};
use crate::volume::{Needle, VolumeStats};

/// Version of the manifest layout written by this build.
pub const EC_MANIFEST_VERSION: u32 = 1;

/// What every holder of an erasure-coded volume knows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcManifest {
    /// Layout version.
    pub version: u32,
    /// The code, as `K+M`.
    pub code: String,
    /// Length of the sealed data file.
    pub data_len: u64,
    /// Block length.
    pub block_len: u64,
    /// Each shard's digest (CRC-32 of its checksum table), shard by shard:
    /// a rebuilt shard must match it.
    pub digests: Vec<u32>,
    /// When the volume was encoded, Unix seconds.
    pub encoded_at: u64,
}

impl EcManifest {
    /// The manifest of a volume encoded under `layout` with `digests`.
    pub fn new(layout: Layout, digests: Vec<u32>) -> EcManifest {
        EcManifest {
            version: EC_MANIFEST_VERSION,
            code: layout.code.to_string(),
            data_len: layout.data_len,
            block_len: layout.block_len,
            digests,
            encoded_at: crate::types::unix_now(),
        }
    }

    /// The layout it describes.
    pub fn layout(&self, path: &Path) -> Result<Layout> {
        let bad = |reason: String| Error::BadFile {
            path: path.to_owned(),
            reason,
        };
        let code: Code = self
            .code
            .parse()
            .map_err(|e: super::CodeError| bad(e.to_string()))?;
        if self.digests.len() != code.shards() {
            return Err(bad(format!(
                "{} digests for a {code} code",
                self.digests.len()
            )));
        }
        if self.block_len == 0 || !self.block_len.is_multiple_of(super::CHUNK_LEN) {
            return Err(bad(format!("block length {}", self.block_len)));
        }
        Ok(Layout {
            code,
            data_len: self.data_len,
            block_len: self.block_len,
        })
    }

    /// Decodes a manifest file's bytes (`path` names them in errors).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<EcManifest> {
        let bad = |reason: String| Error::BadFile {
            path: path.to_owned(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("unreadable: {e}")))?;
        let manifest: EcManifest =
            toml::from_str(text).map_err(|e| bad(format!("unreadable EC manifest: {e}")))?;
        if manifest.version > EC_MANIFEST_VERSION {
            return Err(bad(format!(
                "EC manifest version {} is too new",
                manifest.version
            )));
        }
        manifest.layout(path)?;
        Ok(manifest)
    }

    /// The manifest's bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        toml::to_string(self)
            .map(String::into_bytes)
            .map_err(|e| Error::BadFile {
                path: PathBuf::from("<ec manifest>"),
                reason: format!("cannot encode EC manifest: {e}"),
            })
    }
}

/// Paths of an erasure-coded volume's own files: manifest, index, journal.
pub fn ec_paths(dir: &Path, id: VolumeId) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(format!("{id}.ecm")),
        dir.join(format!("{id}.ecx")),
        dir.join(format!("{id}.ecj")),
    )
}

/// Path of the file naming an erasure-coded volume's holders.
pub fn ec_holders_path(dir: &Path, id: VolumeId) -> PathBuf {
    dir.join(format!("{id}.ech"))
}

/// Path of an erasure-coded volume's state file.
pub fn ec_meta_path(dir: &Path, id: VolumeId) -> PathBuf {
    dir.join(format!("{id}.ecmeta"))
}

/// An open erasure-coded volume.
pub struct EcVolume {
    id: VolumeId,
    dir: PathBuf,
    manifest: EcManifest,
    layout: Layout,
    meta: VolumeMeta,
    index: SealedIndex,
    shards: RwLock<BTreeMap<u8, Arc<ShardFile>>>,
    /// Shard files present but unreadable when opened (rebuilt like lost ones).
    damaged: Vec<(u8, String)>,
    /// Where each shard is, as last told (`<id>.ech`).
    holders: RwLock<Vec<String>>,
    /// The token of the fence on client deletes (a decode's last step),
    /// if any. A delete holds it for reading while it checks and journals,
    /// so once [`EcVolume::fence`] returns no delete that passed the check
    /// is still to be journaled. In memory: a restart unfences.
    fence: RwLock<Option<u64>>,
}

impl std::fmt::Debug for EcVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcVolume")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("code", &self.manifest.code)
            .finish_non_exhaustive()
    }
}

/// A needle's record and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The record's range in the data file.
    pub record: Range<u64>,
    /// The shard pieces holding it, in order.
    pub pieces: Vec<Piece>,
}

impl EcVolume {
    /// Makes this server a holder of volume `id`: writes its index, state
    /// and journal, then the manifest (atomically, last). Shards are added
    /// with [`EcVolume::add_shard`] once written.
    pub fn install(
        dir: &Path,
        id: VolumeId,
        manifest: &EcManifest,
        entries: &[IndexEntry],
        meta: &VolumeMeta,
        deleted: &[NeedleId],
    ) -> Result<()> {
        let (manifest_path, ecx, ecj) = ec_paths(dir, id);
        manifest.layout(&manifest_path)?;
        write_index_file(&ecx, id, entries)?;
        crate::sealed::write_tomb_file(&ecj, deleted)?;
        meta.store(&ec_meta_path(dir, id))?;
        write_atomically(&manifest_path, &manifest.encode()?)
    }

    /// True if `dir` holds a manifest of volume `id`.
    pub fn exists(dir: &Path, id: VolumeId) -> bool {
        ec_paths(dir, id).0.exists()
    }

    /// Opens volume `id` from its manifest, index, journal and the shard
    /// files present. Reads only local files.
    pub fn open(dir: &Path, id: VolumeId) -> Result<EcVolume> {
        let (manifest_path, ecx, ecj) = ec_paths(dir, id);
        let bytes = std::fs::read(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let manifest = EcManifest::decode(&bytes, &manifest_path)?;
        let layout = manifest.layout(&manifest_path)?;
        let meta = VolumeMeta::load(&ec_meta_path(dir, id))?.unwrap_or_else(|| VolumeMeta::new(""));
        let entries = read_index_file(&ecx, id)?;
        let index = SealedIndex::open(id, &entries, layout.data_len, &ecj)?;
        let mut shards = BTreeMap::new();
        let mut damaged = Vec::new();
        for shard in 0..layout.code.shards() as u8 {
            let path = shard_path(dir, id, shard);
            if !path.exists() {
                continue;
            }
            match Self::check_shard(id, &manifest, layout, shard, &path) {
                Ok(file) => {
                    shards.insert(shard, Arc::new(file));
                }
                Err(e) => damaged.push((shard, e.to_string())),
            }
        }
        let holders = match std::fs::read_to_string(ec_holders_path(dir, id)) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(ec_holders_path(dir, id), e)),
        };
        Ok(EcVolume {
            id,
            dir: dir.to_owned(),
            manifest,
            layout,
            meta,
            index,
            shards: RwLock::new(shards),
            damaged,
            holders: RwLock::new(holders),
            fence: RwLock::new(None),
        })
    }

    fn check_shard(
        id: VolumeId,
        manifest: &EcManifest,
        layout: Layout,
        shard: u8,
        path: &Path,
    ) -> Result<ShardFile> {
        let file = ShardFile::open(path)?;
        let header = file.header();
        if header.volume != id || header.shard != shard || header.layout != layout {
            return Err(Error::BadFile {
                path: path.to_owned(),
                reason: "shard of another volume or layout".into(),
            });
        }
        if manifest.digests.get(usize::from(shard)) != Some(&file.digest()) {
            return Err(Error::BadFile {
                path: path.to_owned(),
                reason: "shard digest differs from the manifest's".into(),
            });
        }
        Ok(file)
    }

    /// Takes in shard `shard`, written to its place by a
    /// [`super::ShardWriter`]: checked against the manifest's digest.
    pub fn add_shard(&self, shard: u8) -> Result<()> {
        let path = shard_path(&self.dir, self.id, shard);
        let file = Self::check_shard(self.id, &self.manifest, self.layout, shard, &path)?;
        self.shards.write().insert(shard, Arc::new(file));
        Ok(())
    }

    /// Drops shard `shard` and removes its file.
    pub fn remove_shard(&self, shard: u8) -> Result<()> {
        self.shards.write().remove(&shard);
        let path = shard_path(&self.dir, self.id, shard);
        remove_if_exists(&path)?;
        sync_parent(&path)
    }

    /// The gRPC address of each shard's holder, shard by shard, as last
    /// told (empty if never told).
    pub fn holders(&self) -> Vec<String> {
        self.holders.read().clone()
    }

    /// Records where each shard is (kept across restarts).
    pub fn set_holders(&self, holders: Vec<String>) -> Result<()> {
        let mut current = self.holders.write();
        if *current == holders {
            return Ok(());
        }
        let mut text = holders.join("\n");
        text.push('\n');
        write_atomically(&ec_holders_path(&self.dir, self.id), text.as_bytes())?;
        *current = holders;
        Ok(())
    }

    /// The volume's id.
    pub fn id(&self) -> VolumeId {
        self.id
    }

    /// The directory holding its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &EcManifest {
        &self.manifest
    }

    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The collection the volume belongs to.
    pub fn collection(&self) -> &str {
        &self.meta.collection
    }

    /// When the volume was sealed, Unix seconds.
    pub fn sealed_at(&self) -> Option<u64> {
        self.meta.sealed_at
    }

    /// The shards held here, in order.
    pub fn held(&self) -> Vec<u8> {
        self.shards.read().keys().copied().collect()
    }

    /// Shard files found unreadable when the volume was opened, with why.
    pub fn damaged(&self) -> &[(u8, String)] {
        &self.damaged
    }

    /// Shard `shard`, if held here.
    pub fn shard(&self, shard: u8) -> Option<Arc<ShardFile>> {
        self.shards.read().get(&shard).cloned()
    }

    /// A live needle's record and the pieces of shards holding it.
    pub fn locate(&self, id: NeedleId) -> Result<Located> {
        let record = self.index.locate(id)?;
        let pieces = self.layout.pieces(record.clone());
        Ok(Located { record, pieces })
    }

    /// Reads a piece from the shard held here (`None` if not held).
    pub fn read_piece(&self, piece: Piece) -> Result<Option<Vec<u8>>> {
        match self.shard(piece.shard) {
            Some(file) => file.read(piece.offset, piece.len).map(Some),
            None => Ok(None),
        }
    }

    /// Checks the header at the start of a needle's bytes.
    pub fn check_header(&self, id: NeedleId, cookie: Cookie, bytes: &[u8]) -> Result<NeedleHeader> {
        self.index.check_header(id, cookie, bytes)
    }

    /// Turns a needle's record bytes into the needle, verifying its
    /// checksum and cookie.
    pub fn decode(&self, id: NeedleId, cookie: Cookie, bytes: Bytes) -> Result<Needle> {
        self.index.decode(id, cookie, bytes)
    }

    /// Deletes a needle: appends it to this holder's journal and fsyncs.
    pub fn delete(&self, id: NeedleId) -> Result<()> {
        self.index.delete(id)
    }

    /// Deletes every needle of `ids` still live here, with one fsync (a
    /// replaced copy handing over its tombstones); answers how many.
    /// Refused while deletes are fenced, as [`EcVolume::delete_unfenced`].
    pub fn delete_many(&self, ids: &[NeedleId]) -> Result<usize> {
        // Held to the end, as `delete_unfenced` does: a fence set meanwhile
        // waits for this delete.
        let fence = self.fence.read();
        if fence.is_some() {
            return Err(Error::Unavailable(format!(
                "volume {} is being decoded or re-encoded: its deletes wait for the new copies or shards; retry",
                self.id
            )));
        }
        self.index.delete_many(ids)
    }

    /// A client's delete (or another holder's `EcDelete`): journaled
    /// unless deletes are fenced ([`Error::Unavailable`], to retry).
    pub fn delete_unfenced(&self, id: NeedleId) -> Result<()> {
        let fence = self.fence.read();
        if fence.is_some() {
            return Err(Error::Unavailable(format!(
                "volume {} is being decoded or re-encoded: its deletes wait for the new copies or shards; retry",
                self.id
            )));
        }
        self.index.delete(id)
    }

    /// Fences client deletes with `token` (replacing another token's
    /// fence). Answers whether this token's fence was in place already.
    /// Returns only once no delete that passed the check is in flight.
    pub fn fence(&self, token: u64) -> bool {
        let mut fence = self.fence.write();
        let held = *fence == Some(token);
        *fence = Some(token);
        held
    }

    /// Lifts the fence of `token` (another token's fence stays). Answers
    /// whether it was in place.
    pub fn unfence(&self, token: u64) -> bool {
        let mut fence = self.fence.write();
        let held = *fence == Some(token);
        if held {
            *fence = None;
        }
        held
    }

    /// The token of the fence on deletes, if any.
    pub fn fenced(&self) -> Option<u64> {
        *self.fence.read()
    }

    /// Every live needle id.
    pub fn needle_ids(&self) -> Vec<NeedleId> {
        self.index.needle_ids()
    }

    /// Live and deleted bytes; the file size is the data file's length.
    pub fn stats(&self) -> VolumeStats {
        let counts = self.index.counts();
        VolumeStats {
            id: self.id,
            tier: Tier::Warm,
            sealed: true,
            needles: counts.needles,
            live_bytes: counts.live_bytes,
            garbage_bytes: counts.garbage_bytes,
            file_bytes: self.layout.data_len,
            max_size: self.layout.data_len,
            index_memory_bytes: counts.memory_bytes,
        }
    }

    /// Removes every file of volume `id` in `dir`. The manifest goes first:
    /// without it nothing else counts.
    pub fn remove_files(dir: &Path, id: VolumeId, shards: usize) -> Result<()> {
        let (manifest, ecx, ecj) = ec_paths(dir, id);
        remove_if_exists(&manifest)?;
        sync_parent(&manifest)?;
        for shard in 0..shards as u8 {
            remove_if_exists(&shard_path(dir, id, shard))?;
        }
        for path in [ecx, ecj, ec_meta_path(dir, id), ec_holders_path(dir, id)] {
            remove_if_exists(&path)?;
        }
        Ok(())
    }
}

/// Restores the bytes of `piece` from `have`: the same widened range
/// ([`Piece::widened`]) of at least `k` other shards.
pub fn restore_piece(
    layout: Layout,
    piece: Piece,
    have: &BTreeMap<u8, Vec<u8>>,
) -> Result<Vec<u8>> {
    let range = piece.widened();
    let slices: BTreeMap<u8, &[u8]> = have.iter().map(|(&s, v)| (s, v.as_slice())).collect();
    let restored = codec::restore(layout.code, &slices, &[piece.shard]).map_err(|e| match e {
        codec::CodecError::TooFewShards { have, need } => Error::Unavailable(format!(
            "{have} of the {need} shards needed to rebuild the needle are readable"
        )),
        codec::CodecError::BadStripe(reason) => Error::Diverged(reason),
    })?;
    let start = (piece.offset - range.start) as usize;
    Ok(restored
        .into_iter()
        .next()
        .unwrap_or_default()
        .get(start..start + piece.len as usize)
        .map(<[u8]>::to_vec)
        .unwrap_or_default())
}
