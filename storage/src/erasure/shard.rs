//! One shard file (`<volume>.ec<NN>`): header, body, checksum table.
//!
//! | offset          | size     | field                                        |
//! |----------------:|---------:|----------------------------------------------|
//! |               0 |        4 | magic `"HLEC"`                               |
//! |               4 |        2 | format version (currently 1)                 |
//! |               6 |        2 | flags (reserved, 0)                          |
//! |               8 |        4 | volume id                                    |
//! |              12 |        1 | shard index (`0..k` data, `k..k+m` parity)   |
//! |              13 |        1 | `k`, data shards                             |
//! |              14 |        1 | `m`, parity shards                           |
//! |              15 |        1 | reserved (0)                                 |
//! |              16 |        8 | length of the volume's data file `L`         |
//! |              24 |        8 | block length `B`                             |
//! |              32 |        4 | checksum chunk length `C` (65,536)           |
//! |              36 |        4 | reserved (0)                                 |
//! |              40 |        8 | creation time, Unix seconds                  |
//! |              48 |       12 | reserved (0)                                 |
//! |              60 |        4 | CRC-32 of bytes 0..60                        |
//! |              64 | `N`      | body: `N = rows * B` bytes (see `layout`)    |
//! |          64 + N | `4 * T`  | CRC-32 of each `C`-byte chunk of the body, `T = N / C` |
//! |  64 + N + 4 * T |        4 | CRC-32 of the table: the shard's digest      |
//!
//! The digest names a shard's whole content: the encoder computes it from
//! the bytes it sends and the receiver from the bytes it wrote, and a shard
//! counts only when the two agree. A healthy read checks the needle's own
//! checksum, not the table; the table is for scrub, rebuild, and for finding
//! which shard lied when a reconstructed needle fails its checksum.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut};

use super::layout::{CHUNK_LEN, Code, Layout};
use crate::error::{Error, Result};
use crate::file::{read_to_vec, sync_parent, tmp_path};
use crate::format::FormatError;
use crate::types::{VolumeId, unix_now};

/// Magic number opening a shard file.
pub const SHARD_MAGIC: [u8; 4] = *b"HLEC";
/// Current version of the shard format.
pub const SHARD_VERSION: u16 = 1;
/// Length of the shard header.
pub const SHARD_HEADER_LEN: u64 = 64;

/// The header of a shard file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// The volume.
    pub volume: VolumeId,
    /// Which shard this is.
    pub shard: u8,
    /// The volume's layout.
    pub layout: Layout,
    /// When the shard was written.
    pub created: u64,
}

impl ShardHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; SHARD_HEADER_LEN as usize] {
        let mut out = [0u8; SHARD_HEADER_LEN as usize];
        let mut buf = &mut out[..];
        buf.put_slice(&SHARD_MAGIC);
        buf.put_u16_le(SHARD_VERSION);
        buf.put_u16_le(0);
        buf.put_u32_le(self.volume.0);
        buf.put_u8(self.shard);
        buf.put_u8(self.layout.code.data);
        buf.put_u8(self.layout.code.parity);
        buf.put_u8(0);
        buf.put_u64_le(self.layout.data_len);
        buf.put_u64_le(self.layout.block_len);
        buf.put_u32_le(CHUNK_LEN as u32);
        buf.put_u32_le(0);
        buf.put_u64_le(self.created);
        let crc = crc32fast::hash(&out[..60]);
        out[60..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a header.
    pub fn decode(bytes: &[u8]) -> std::result::Result<ShardHeader, FormatError> {
        let bytes = bytes
            .get(..SHARD_HEADER_LEN as usize)
            .ok_or(FormatError::Truncated)?;
        if bytes[..4] != SHARD_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let crc = u32::from_le_bytes([bytes[60], bytes[61], bytes[62], bytes[63]]);
        if crc32fast::hash(&bytes[..60]) != crc {
            return Err(FormatError::BadChecksum);
        }
        let mut buf = &bytes[4..60];
        if buf.get_u16_le() != SHARD_VERSION {
            return Err(FormatError::UnsupportedVersion);
        }
        let _flags = buf.get_u16_le();
        let volume = VolumeId(buf.get_u32_le());
        let shard = buf.get_u8();
        let (data, parity) = (buf.get_u8(), buf.get_u8());
        let _reserved = buf.get_u8();
        let data_len = buf.get_u64_le();
        let block_len = buf.get_u64_le();
        let chunk_len = u64::from(buf.get_u32_le());
        let _reserved = buf.get_u32_le();
        let created = buf.get_u64_le();
        let code = Code::new(data, parity).map_err(|_| FormatError::InvalidField)?;
        if chunk_len != CHUNK_LEN
            || block_len == 0
            || !block_len.is_multiple_of(CHUNK_LEN)
            || usize::from(shard) >= code.shards()
        {
            return Err(FormatError::InvalidField);
        }
        Ok(ShardHeader {
            volume,
            shard,
            layout: Layout {
                code,
                data_len,
                block_len,
            },
            created,
        })
    }
}

/// The file name of shard `shard` of volume `volume`.
pub fn shard_path(dir: &Path, volume: VolumeId, shard: u8) -> PathBuf {
    dir.join(format!("{volume}.ec{shard:02}"))
}

/// The digest of a checksum table: CRC-32 of its bytes.
fn table_digest(table: &[u32]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for crc in table {
        hasher.update(&crc.to_le_bytes());
    }
    hasher.finalize()
}

/// Computes a shard's checksum table and digest from its body as it
/// streams past (the encoder's side of the comparison).
#[derive(Debug, Default)]
pub struct BodyDigest {
    table: Vec<u32>,
    hasher: crc32fast::Hasher,
    in_chunk: u64,
}

impl BodyDigest {
    /// Adds the next bytes of the body.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = ((CHUNK_LEN - self.in_chunk) as usize).min(bytes.len());
            self.hasher.update(&bytes[..take]);
            self.in_chunk += take as u64;
            bytes = &bytes[take..];
            if self.in_chunk == CHUNK_LEN {
                let done = std::mem::take(&mut self.hasher);
                self.table.push(done.finalize());
                self.in_chunk = 0;
            }
        }
    }

    /// Bytes seen.
    pub fn len(&self) -> u64 {
        self.table.len() as u64 * CHUNK_LEN + self.in_chunk
    }

    /// True if no byte was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table (the body is whole chunks) and its digest.
    pub fn finish(self) -> (Vec<u32>, u32) {
        let digest = table_digest(&self.table);
        (self.table, digest)
    }
}

/// Writes a shard file: `<name>.tmp`, then fsync and rename on
/// [`ShardWriter::finish`]. Dropped unfinished, it removes the temp file.
#[derive(Debug)]
pub struct ShardWriter {
    header: ShardHeader,
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<File>>,
    digest: BodyDigest,
}

impl ShardWriter {
    /// Starts shard `shard` of `volume` in `dir`.
    pub fn create(dir: &Path, volume: VolumeId, shard: u8, layout: Layout) -> Result<ShardWriter> {
        let header = ShardHeader {
            volume,
            shard,
            layout,
            created: unix_now(),
        };
        let path = shard_path(dir, volume, shard);
        let tmp = tmp_path(&path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        file.write_all(&header.encode())
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(ShardWriter {
            header,
            path,
            tmp,
            file: Some(file),
            digest: BodyDigest::default(),
        })
    }

    /// Appends the next bytes of the body.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let body_len = self.header.layout.body_len();
        if self.digest.len() + bytes.len() as u64 > body_len {
            return Err(Error::BadFile {
                path: self.tmp.clone(),
                reason: format!("shard body longer than its {body_len} bytes"),
            });
        }
        let file = self.file.as_mut().ok_or_else(|| Error::BadFile {
            path: self.tmp.clone(),
            reason: "shard already finished".into(),
        })?;
        file.write_all(bytes).map_err(|e| Error::io(&self.tmp, e))?;
        self.digest.update(bytes);
        Ok(())
    }

    /// Bytes of the body written so far.
    pub fn written(&self) -> u64 {
        self.digest.len()
    }

    /// Writes the table, fsyncs, and renames the file into place if the
    /// body is whole and its digest is `expected` (when given). Returns the
    /// digest.
    pub fn finish(mut self, expected: Option<u32>) -> Result<u32> {
        let body_len = self.header.layout.body_len();
        if self.digest.len() != body_len {
            return Err(Error::BadFile {
                path: self.tmp.clone(),
                reason: format!(
                    "shard body is {} of its {body_len} bytes",
                    self.digest.len()
                ),
            });
        }
        let (table, digest) = std::mem::take(&mut self.digest).finish();
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(Error::Corrupt {
                volume: self.header.volume,
                offset: 0,
                reason: "shard digest differs from the encoder's",
            });
        }
        let mut file = self.file.take().ok_or_else(|| Error::BadFile {
            path: self.tmp.clone(),
            reason: "shard already finished".into(),
        })?;
        let mut tail = Vec::with_capacity(table.len() * 4 + 4);
        for crc in &table {
            tail.extend_from_slice(&crc.to_le_bytes());
        }
        tail.extend_from_slice(&digest.to_le_bytes());
        file.write_all(&tail).map_err(|e| Error::io(&self.tmp, e))?;
        let file = file
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        sync_parent(&self.path)?;
        Ok(digest)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// An open shard file: its header and checksum table in memory, the body
/// read by position.
#[derive(Debug)]
pub struct ShardFile {
    header: ShardHeader,
    path: PathBuf,
    file: File,
    table: Vec<u32>,
    digest: u32,
}

impl ShardFile {
    /// Opens and checks a shard file: header, length, table digest.
    pub fn open(path: &Path) -> Result<ShardFile> {
        let bad = |reason: String| Error::BadFile {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let head =
            read_to_vec(&file, SHARD_HEADER_LEN as usize, 0).map_err(|e| Error::io(path, e))?;
        let header =
            ShardHeader::decode(&head).map_err(|e| bad(format!("bad shard header: {e}")))?;
        let body_len = header.layout.body_len();
        let chunks = body_len / CHUNK_LEN;
        let expected_len = SHARD_HEADER_LEN + body_len + chunks * 4 + 4;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len != expected_len {
            return Err(bad(format!(
                "shard is {len} bytes, expected {expected_len}"
            )));
        }
        let tail = read_to_vec(
            &file,
            (chunks * 4 + 4) as usize,
            SHARD_HEADER_LEN + body_len,
        )
        .map_err(|e| Error::io(path, e))?;
        let (table_bytes, digest_bytes) = tail.split_at(tail.len() - 4);
        let table: Vec<u32> = table_bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let digest = u32::from_le_bytes([
            digest_bytes[0],
            digest_bytes[1],
            digest_bytes[2],
            digest_bytes[3],
        ]);
        if table_digest(&table) != digest {
            return Err(bad("shard checksum table is corrupt".into()));
        }
        crate::file::advise(&file, crate::file::Access::Random);
        Ok(ShardFile {
            header,
            path: path.to_owned(),
            file,
            table,
            digest,
        })
    }

    /// The header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// Which shard this is.
    pub fn shard(&self) -> u8 {
        self.header.shard
    }

    /// The digest of the shard's content (its table's CRC).
    pub fn digest(&self) -> u32 {
        self.digest
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `len` body bytes at body offset `offset`.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.check_read(offset, len)?;
        read_to_vec(&self.file, len as usize, SHARD_HEADER_LEN + offset)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// [`ShardFile::read`] if the bytes are all in the page cache (no wait
    /// for the disk: safe on an async thread); `Ok(None)` if not, to be read
    /// with [`ShardFile::read`] on a blocking thread.
    pub fn read_cached(&self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        self.check_read(offset, len)?;
        crate::file::read_cached_to_vec(&self.file, len as usize, SHARD_HEADER_LEN + offset)
            .map_err(|e| Error::io(&self.path, e))
    }

    fn check_read(&self, offset: u64, len: u64) -> Result<()> {
        let body_len = self.header.layout.body_len();
        if offset.checked_add(len).is_none_or(|end| end > body_len) {
            return Err(Error::BadFile {
                path: self.path.clone(),
                reason: format!("read of {len} bytes at {offset} past the {body_len}-byte body"),
            });
        }
        crate::failpoint::fail_at("shard-read").map_err(|e| Error::io(&self.path, e))
    }

    /// The chunks overlapping body bytes `offset..offset + len`.
    pub fn chunks_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let end = (offset + len.max(1))
            .div_ceil(CHUNK_LEN)
            .min(self.table.len() as u64);
        (offset / CHUNK_LEN).min(end)..end
    }

    /// Reads the chunks `chunks` and checks each against the table;
    /// returns the bytes, or the first chunk that does not match.
    pub fn read_verified(&self, chunks: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let bytes = self.read(
            chunks.start * CHUNK_LEN,
            (chunks.end - chunks.start) * CHUNK_LEN,
        )?;
        for (i, chunk) in bytes.chunks(CHUNK_LEN as usize).enumerate() {
            let index = chunks.start + i as u64;
            if crc32fast::hash(chunk) != self.table[index as usize] {
                return Err(Error::Corrupt {
                    volume: self.header.volume,
                    offset: SHARD_HEADER_LEN + index * CHUNK_LEN,
                    reason: "shard chunk checksum mismatch",
                });
            }
        }
        Ok(bytes)
    }

    /// Every chunk whose bytes do not match the table, reading the body
    /// front to back through `throttle` (scrub).
    pub fn scrub(&self, throttle: &mut crate::throttle::Throttle) -> Result<Vec<u64>> {
        let file = crate::file::open_for(&self.path, crate::file::Access::Sequential)?;
        let step = 16u64;
        let mut bad = Vec::new();
        let chunks = self.table.len() as u64;
        let mut at = 0;
        while at < chunks {
            let n = step.min(chunks - at);
            throttle.block_for(n * CHUNK_LEN);
            let bytes = read_to_vec(
                &file,
                (n * CHUNK_LEN) as usize,
                SHARD_HEADER_LEN + at * CHUNK_LEN,
            )
            .map_err(|e| Error::io(&self.path, e))?;
            for (i, chunk) in bytes.chunks(CHUNK_LEN as usize).enumerate() {
                let index = at + i as u64;
                if crc32fast::hash(chunk) != self.table[index as usize] {
                    bad.push(index);
                }
            }
            at += n;
        }
        Ok(bad)
    }

    /// Writes back chunk `index` with `bytes` (restored from other shards),
    /// if they match the table, and fsyncs.
    pub fn repair_chunk(&self, index: u64, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != CHUNK_LEN
            || self.table.get(index as usize) != Some(&crc32fast::hash(bytes))
        {
            return Err(Error::Corrupt {
                volume: self.header.volume,
                offset: SHARD_HEADER_LEN + index * CHUNK_LEN,
                reason: "restored chunk does not match the shard's table",
            });
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        file.write_all_at(bytes, SHARD_HEADER_LEN + index * CHUNK_LEN)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}
