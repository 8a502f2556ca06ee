//! The on-disk format of a volume: pure encoding and decoding, no I/O.
//!
//! A volume is three files in one directory: `<id>.dat` (superblock followed by
//! needle records), `<id>.idx` (index header followed by index entries) and
//! `<id>.meta` (a small TOML record of the volume's state). All integers are
//! little-endian.
//!
//! # Superblock (first 64 bytes of `<id>.dat`)
//!
//! | offset | size | field                                          |
//! |-------:|-----:|------------------------------------------------|
//! |      0 |    4 | magic `"HLVS"`                                 |
//! |      4 |    2 | format version (1 or 2, see below)             |
//! |      6 |    2 | flags (reserved, 0)                            |
//! |      8 |    4 | volume id                                      |
//! |     12 |    4 | reserved (0)                                   |
//! |     16 |    8 | creation time, Unix seconds                    |
//! |     24 |   36 | reserved (0)                                   |
//! |     60 |    4 | CRC-32 of bytes 0..60                          |
//!
//! # Needle record (at an 8-byte aligned offset in `<id>.dat`)
//!
//! | offset        | size     | field                                        |
//! |--------------:|---------:|----------------------------------------------|
//! |             0 |        4 | magic `"HLND"`                               |
//! |             4 |        1 | flags: bit 0 = tombstone, bit 1 = chunk CRCs |
//! |             5 |        1 | reserved (0)                                 |
//! |             6 |        2 | metadata length `M`                          |
//! |             8 |        8 | needle id                                    |
//! |            16 |        4 | cookie                                       |
//! |            20 |        4 | data length `D`                              |
//! |            24 |        4 | reserved (0)                                 |
//! |            28 |        4 | header CRC-32 of bytes 0..28                 |
//! |            32 |      `D`| data (the blob)                              |
//! |        32 + D |      `M`| metadata, see below                          |
//! |    32 + D + M |        4 | record CRC-32 of bytes 0 .. 32 + D + M       |
//! |    36 + D + M |    0..=7 | zero padding to a multiple of 8              |
//!
//! # Format 2: chunk checksums (volumes whose superblock says version 2)
//!
//! Every record of a version-2 volume has flag bit 1 and a trailer after the
//! record CRC, so that part of a blob can be read and verified without the
//! rest (a range of a large blob, or a HEAD that reads no data at all):
//!
//! | offset            | size   | field                                          |
//! |------------------:|-------:|------------------------------------------------|
//! |        36 + D + M | 4 * N  | CRC-32 of each 64 KiB chunk of the data, N = ceil(D / 65536) |
//! |  36 + D + M + 4N  |      4 | trailer CRC-32 of bytes 32 + D .. 36 + D + M + 4N |
//! |  40 + D + M + 4N  | 0..=7  | zero padding to a multiple of 8                |
//!
//! The trailer CRC covers the metadata, the record CRC and the chunk CRCs:
//! with the header's own CRC, everything but the data is verified by reading
//! the header and the tail alone. The record CRC is computed exactly as in
//! version 1, over the header *without* bit 1 (and its header CRC computed
//! so), then data and metadata: the same blob has the same record CRC, hence
//! the same ETag, in a volume of either version (copies of one volume may be
//! of both versions during an upgrade, and compare ETags). Version-1 volumes
//! are read as they are and keep taking version-1 records; new volumes are
//! version 2. A build that knows only version 1 refuses a version-2 volume
//! (its superblock says so) rather than misreading its records.
//!
//! The header has a checksum of its own so that recovery can trust a record's
//! length before its body is complete: a record with a valid header but a bad
//! record checksum is skipped whole (an abandoned upload, or bit rot), and a
//! valid header whose record runs past the end of the file is a torn tail.
//! Streamed writes store the header first, then the data, then the metadata
//! and checksum.
//!
//! A tombstone is a record with the tombstone flag, `D = 0`, and the deleted
//! needle's id and cookie; its metadata's last-modified is the deletion time.
//!
//! # Metadata (inside a needle record)
//!
//! | offset  | size | field                                              |
//! |--------:|-----:|----------------------------------------------------|
//! |       0 |    8 | last modified, Unix seconds                        |
//! |       8 |    8 | expires at, Unix seconds (0 = never)               |
//! |      16 |    2 | content type length `C`                            |
//! |      18 |  `C`| content type, UTF-8                                |
//! |  18 + C |    2 | file name length `F`                               |
//! |  20 + C |  `F`| file name, UTF-8                                   |
//!
//! # Index file (`<id>.idx`)
//!
//! A 16-byte header, then one 16-byte entry per needle write or delete, in
//! the order they became durable.
//!
//! | offset | size | header field                                  |
//! |-------:|-----:|-----------------------------------------------|
//! |      0 |    4 | magic `"HLIX"`                                |
//! |      4 |    2 | format version (currently 1)                  |
//! |      6 |    2 | reserved (0)                                  |
//! |      8 |    4 | volume id                                     |
//! |     12 |    4 | CRC-32 of bytes 0..12                         |
//!
//! | offset | size | entry field                                            |
//! |-------:|-----:|--------------------------------------------------------|
//! |      0 |    8 | needle id                                              |
//! |      8 |    4 | record offset in the data file, in 8-byte units        |
//! |     12 |    4 | bit 31: tombstone; bits 0..31: record length in 8-byte units |
//!
//! Offsets in 8-byte units in 32 bits address 32 GiB, the largest volume.
//!
//! Why one file of ~720 lines: the on-disk format with its byte tables in one
//! place. Its round-trip and corruption tests are in `format/tests.rs`, the
//! chunk checksums of format 2 in `format/chunks.rs`.

use bytes::{Buf, BufMut};

use crate::types::{Cookie, NeedleId, VolumeId};

pub mod chunks;
pub use chunks::CHUNK_LEN;

/// Length of the volume superblock at the start of the data file.
pub const SUPERBLOCK_LEN: usize = 64;
/// Magic number opening the superblock.
pub const SUPERBLOCK_MAGIC: [u8; 4] = *b"HLVS";
/// Version of the volume format new volumes are created with (2: records
/// carry chunk checksums).
pub const FORMAT_VERSION: u16 = 2;
/// The first volume format: records without chunk checksums. Volumes of it
/// are read, and written, as they are.
pub const FORMAT_VERSION_1: u16 = 1;
/// Version of the index file format (not changed by volume format 2).
pub const INDEX_FORMAT_VERSION: u16 = 1;

/// Magic number opening every needle record.
pub const NEEDLE_MAGIC: [u8; 4] = *b"HLND";
/// Length of the fixed needle header.
pub const NEEDLE_HEADER_LEN: usize = 32;
/// Length of the checksum trailer.
pub const CHECKSUM_LEN: usize = 4;
/// Records start at multiples of this.
pub const ALIGNMENT: u64 = 8;
/// Length of the fixed part of the metadata (times and two length fields).
pub const FIXED_METADATA_LEN: usize = 20;
/// Largest blob a needle can hold.
pub const MAX_DATA_LEN: u64 = u32::MAX as u64;
/// Largest metadata section.
pub const MAX_METADATA_LEN: usize = u16::MAX as usize;
/// Largest data file a volume can have (offsets are 32-bit in 8-byte units).
pub const MAX_VOLUME_SIZE: u64 = (u32::MAX as u64 + 1) * ALIGNMENT;

/// Needle flag: this record deletes the needle with its id.
pub const FLAG_TOMBSTONE: u8 = 1;
/// Needle flag: the record CRC is followed by chunk CRCs and a trailer CRC
/// (format 2).
pub const FLAG_CHUNK_CRCS: u8 = 2;

/// Magic number opening the index file.
pub const INDEX_MAGIC: [u8; 4] = *b"HLIX";
/// Length of the index file header.
pub const INDEX_HEADER_LEN: usize = 16;
/// Length of one index entry.
pub const INDEX_ENTRY_LEN: usize = 16;
const INDEX_TOMBSTONE_BIT: u32 = 1 << 31;

/// Why a byte range failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the structure needs (a torn tail, or a short file).
    #[error("truncated")]
    Truncated,
    /// The magic number is wrong: these bytes are not that structure.
    #[error("bad magic")]
    BadMagic,
    /// A version this build does not know.
    #[error("unsupported format version")]
    UnsupportedVersion,
    /// The checksum does not match the bytes.
    #[error("checksum mismatch")]
    BadChecksum,
    /// A length or field is out of range.
    #[error("invalid field")]
    InvalidField,
}

/// The volume superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// The volume's id.
    pub volume_id: VolumeId,
    /// When the volume was created, Unix seconds.
    pub created_at: u64,
    /// Format version ([`FORMAT_VERSION`] for new volumes).
    pub version: u16,
}

impl Superblock {
    /// Encodes into exactly [`SUPERBLOCK_LEN`] bytes.
    pub fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut out = [0u8; SUPERBLOCK_LEN];
        let mut buf = &mut out[..];
        buf.put_slice(&SUPERBLOCK_MAGIC);
        buf.put_u16_le(self.version);
        buf.put_u16_le(0);
        buf.put_u32_le(self.volume_id.0);
        buf.put_u32_le(0);
        buf.put_u64_le(self.created_at);
        let crc = crc32fast::hash(&out[..SUPERBLOCK_LEN - 4]);
        out[SUPERBLOCK_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates a superblock.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < SUPERBLOCK_LEN {
            return Err(FormatError::Truncated);
        }
        let mut buf = &bytes[..SUPERBLOCK_LEN];
        if buf[..4] != SUPERBLOCK_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let stored_crc = u32::from_le_bytes(read_array(&bytes[SUPERBLOCK_LEN - 4..]));
        if crc32fast::hash(&bytes[..SUPERBLOCK_LEN - 4]) != stored_crc {
            return Err(FormatError::BadChecksum);
        }
        buf.advance(4);
        let version = buf.get_u16_le();
        if !(FORMAT_VERSION_1..=FORMAT_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion);
        }
        let _flags = buf.get_u16_le();
        let volume_id = VolumeId(buf.get_u32_le());
        let _reserved = buf.get_u32_le();
        let created_at = buf.get_u64_le();
        Ok(Superblock {
            volume_id,
            created_at,
            version,
        })
    }
}

/// Metadata stored with each needle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeedleMeta {
    /// MIME type served as `Content-Type` (empty = unknown).
    pub content_type: String,
    /// Original file name, served in `Content-Disposition` (empty = none).
    pub file_name: String,
    /// Last modification time, Unix seconds.
    pub last_modified: u64,
    /// Expiry time, Unix seconds; the needle reads as missing from then on.
    pub expires_at: Option<u64>,
}

impl NeedleMeta {
    /// Encoded length of this metadata.
    pub fn encoded_len(&self) -> usize {
        FIXED_METADATA_LEN + self.content_type.len() + self.file_name.len()
    }

    /// Checks that the metadata fits the format.
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.content_type.len() > u16::MAX as usize
            || self.file_name.len() > u16::MAX as usize
            || self.encoded_len() > MAX_METADATA_LEN
        {
            return Err(FormatError::InvalidField);
        }
        Ok(())
    }

    /// Appends the encoded metadata to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u64_le(self.last_modified);
        buf.put_u64_le(self.expires_at.unwrap_or(0));
        buf.put_u16_le(self.content_type.len() as u16);
        buf.put_slice(self.content_type.as_bytes());
        buf.put_u16_le(self.file_name.len() as u16);
        buf.put_slice(self.file_name.as_bytes());
    }

    /// Decodes metadata occupying exactly `bytes`.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < FIXED_METADATA_LEN {
            return Err(FormatError::Truncated);
        }
        let last_modified = bytes.get_u64_le();
        let expires_at = match bytes.get_u64_le() {
            0 => None,
            t => Some(t),
        };
        let content_type = take_str(&mut bytes)?;
        let file_name = take_str(&mut bytes)?;
        if !bytes.is_empty() {
            return Err(FormatError::InvalidField);
        }
        Ok(NeedleMeta {
            content_type,
            file_name,
            last_modified,
            expires_at,
        })
    }
}

fn take_str(bytes: &mut &[u8]) -> Result<String, FormatError> {
    if bytes.len() < 2 {
        return Err(FormatError::Truncated);
    }
    let len = bytes.get_u16_le() as usize;
    if bytes.len() < len {
        return Err(FormatError::Truncated);
    }
    let s = std::str::from_utf8(&bytes[..len]).map_err(|_| FormatError::InvalidField)?;
    bytes.advance(len);
    Ok(s.to_owned())
}

/// The fixed header of a needle record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedleHeader {
    /// Flags ([`FLAG_TOMBSTONE`]).
    pub flags: u8,
    /// Length of the metadata section.
    pub metadata_len: u16,
    /// The needle's id.
    pub needle_id: NeedleId,
    /// The needle's cookie.
    pub cookie: Cookie,
    /// Length of the data (the blob).
    pub data_len: u32,
}

impl NeedleHeader {
    /// True if this record is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    /// True if the record carries chunk CRCs and a trailer CRC (format 2).
    pub fn has_chunk_crcs(&self) -> bool {
        self.flags & FLAG_CHUNK_CRCS != 0
    }

    /// Total length of the record this header opens, padding included.
    pub fn record_len(&self) -> u64 {
        record_len(
            self.data_len as u64,
            self.metadata_len as usize,
            self.has_chunk_crcs(),
        )
    }

    /// Offset of the metadata within the record: where its tail starts.
    pub fn metadata_offset(&self) -> usize {
        NEEDLE_HEADER_LEN + self.data_len as usize
    }

    /// Offset of the chunk CRCs within the record (format 2).
    pub fn chunk_crcs_offset(&self) -> usize {
        self.checksum_offset() + CHECKSUM_LEN
    }

    /// Number of chunk CRCs the record carries (0 without them).
    pub fn chunk_count(&self) -> u64 {
        if self.has_chunk_crcs() {
            u64::from(self.data_len).div_ceil(CHUNK_LEN)
        } else {
            0
        }
    }

    /// End of the tail within the record (metadata, record CRC and, in
    /// format 2, chunk CRCs and trailer CRC): where the padding starts.
    pub fn tail_end(&self) -> usize {
        if self.has_chunk_crcs() {
            self.chunk_crcs_offset() + 4 * self.chunk_count() as usize + CHECKSUM_LEN
        } else {
            self.checksum_offset() + CHECKSUM_LEN
        }
    }

    /// A hasher that has hashed this header as the record CRC covers it:
    /// as version 1 encodes it (without [`FLAG_CHUNK_CRCS`]), so that the
    /// record CRC of a blob does not depend on the volume's version.
    pub fn record_crc_start(&self) -> crc32fast::Hasher {
        let v1 = NeedleHeader {
            flags: self.flags & !FLAG_CHUNK_CRCS,
            ..*self
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&v1.encode());
        hasher
    }

    /// Offset of the data within the record.
    pub const fn data_offset() -> usize {
        NEEDLE_HEADER_LEN
    }

    /// Offset of the checksum within the record.
    pub fn checksum_offset(&self) -> usize {
        NEEDLE_HEADER_LEN + self.data_len as usize + self.metadata_len as usize
    }

    /// Encodes into [`NEEDLE_HEADER_LEN`] bytes.
    pub fn encode(&self) -> [u8; NEEDLE_HEADER_LEN] {
        let mut out = [0u8; NEEDLE_HEADER_LEN];
        let mut buf = &mut out[..];
        buf.put_slice(&NEEDLE_MAGIC);
        buf.put_u8(self.flags);
        buf.put_u8(0);
        buf.put_u16_le(self.metadata_len);
        buf.put_u64_le(self.needle_id.0);
        buf.put_u32_le(self.cookie.0);
        buf.put_u32_le(self.data_len);
        buf.put_u32_le(0);
        let crc = crc32fast::hash(&out[..NEEDLE_HEADER_LEN - 4]);
        out[NEEDLE_HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header, checking its magic and its own checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < NEEDLE_HEADER_LEN {
            return Err(FormatError::Truncated);
        }
        let mut buf = &bytes[..NEEDLE_HEADER_LEN];
        if buf[..4] != NEEDLE_MAGIC {
            return Err(FormatError::BadMagic);
        }
        buf.advance(4);
        let flags = buf.get_u8();
        let _reserved = buf.get_u8();
        let metadata_len = buf.get_u16_le();
        let needle_id = NeedleId(buf.get_u64_le());
        let cookie = Cookie(buf.get_u32_le());
        let data_len = buf.get_u32_le();
        let _reserved = buf.get_u32_le();
        let crc = buf.get_u32_le();
        if crc32fast::hash(&bytes[..NEEDLE_HEADER_LEN - 4]) != crc {
            return Err(FormatError::BadChecksum);
        }
        if (metadata_len as usize) < FIXED_METADATA_LEN {
            return Err(FormatError::InvalidField);
        }
        Ok(NeedleHeader {
            flags,
            metadata_len,
            needle_id,
            cookie,
            data_len,
        })
    }
}

/// Length of a record with `data_len` bytes of data and `metadata_len` bytes of
/// metadata, padding included; with chunk CRCs (format 2) or not.
pub fn record_len(data_len: u64, metadata_len: usize, chunk_crcs: bool) -> u64 {
    let mut raw = NEEDLE_HEADER_LEN as u64 + data_len + metadata_len as u64 + CHECKSUM_LEN as u64;
    if chunk_crcs {
        raw += 4 * data_len.div_ceil(CHUNK_LEN) + CHECKSUM_LEN as u64;
    }
    raw.next_multiple_of(ALIGNMENT)
}

/// The flags of a record written into a volume of format `version`.
pub fn record_flags(version: u16, tombstone: bool) -> u8 {
    let mut flags = if tombstone { FLAG_TOMBSTONE } else { 0 };
    if version >= FORMAT_VERSION {
        flags |= FLAG_CHUNK_CRCS;
    }
    flags
}

/// Encodes a whole needle record (header, data, metadata, checksum, padding)
/// into `buf`, returning the checksum.
pub fn encode_needle(
    buf: &mut Vec<u8>,
    flags: u8,
    needle_id: NeedleId,
    cookie: Cookie,
    data: &[u8],
    meta: &NeedleMeta,
) -> Result<u32, FormatError> {
    meta.validate()?;
    let data_len = u32::try_from(data.len()).map_err(|_| FormatError::InvalidField)?;
    let header = NeedleHeader {
        flags,
        metadata_len: meta.encoded_len() as u16,
        needle_id,
        cookie,
        data_len,
    };
    buf.reserve(header.record_len() as usize);
    buf.put_slice(&header.encode());
    buf.put_slice(data);
    let mut hasher = header.record_crc_start();
    hasher.update(data);
    let chunk_crcs = if header.has_chunk_crcs() {
        chunks::chunk_crcs(data)
    } else {
        Vec::new()
    };
    Ok(encode_tail(buf, &header, meta, hasher, &chunk_crcs))
}

/// Appends a record's tail to `buf`, which holds (or whose record holds)
/// its header and data: metadata, record CRC (`hasher` has hashed the header
/// as [`NeedleHeader::record_crc_start`] does, and the data), then in format
/// 2 the chunk CRCs and the trailer CRC, then padding. Returns the record CRC.
pub fn encode_tail(
    buf: &mut Vec<u8>,
    header: &NeedleHeader,
    meta: &NeedleMeta,
    mut hasher: crc32fast::Hasher,
    chunk_crcs: &[u32],
) -> u32 {
    let start = buf.len();
    meta.encode(buf);
    hasher.update(&buf[start..]);
    let crc = hasher.finalize();
    buf.put_u32_le(crc);
    if header.has_chunk_crcs() {
        debug_assert_eq!(chunk_crcs.len() as u64, header.chunk_count());
        for chunk_crc in chunk_crcs {
            buf.put_u32_le(*chunk_crc);
        }
        let trailer = crc32fast::hash(&buf[start..]);
        buf.put_u32_le(trailer);
    }
    let tail_len = header.record_len() as usize - header.metadata_offset();
    buf.resize(start + tail_len, 0);
    crc
}

/// A needle record decoded from a byte slice, borrowing its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedNeedle<'a> {
    /// The record's header.
    pub header: NeedleHeader,
    /// The blob.
    pub data: &'a [u8],
    /// The metadata.
    pub meta: NeedleMeta,
    /// The stored checksum (verified by [`decode_needle`]).
    pub checksum: u32,
    /// The chunk CRCs, encoded (empty in format 1; covered by the trailer
    /// CRC, not compared with the data: see [`DecodedNeedle::chunks_match`]).
    pub chunk_crcs: &'a [u8],
}

impl DecodedNeedle<'_> {
    /// True if every chunk CRC matches its chunk of the data (scrub's
    /// check; a read of the whole record relies on the record CRC).
    pub fn chunks_match(&self) -> bool {
        !self.header.has_chunk_crcs()
            || (self.chunk_crcs.len() as u64 == 4 * self.header.chunk_count()
                && chunks::verify(self.data, 0, self.chunk_crcs).is_ok())
    }
}

/// Decodes and fully validates (magic, lengths, checksum, padding) the record at
/// the start of `bytes`.
pub fn decode_needle(bytes: &[u8]) -> Result<DecodedNeedle<'_>, FormatError> {
    let header = NeedleHeader::decode(bytes)?;
    let total = header.record_len();
    if (bytes.len() as u64) < total {
        return Err(FormatError::Truncated);
    }
    let crc_at = header.checksum_offset();
    let checksum = u32::from_le_bytes(read_array(&bytes[crc_at..]));
    let mut hasher = header.record_crc_start();
    hasher.update(&bytes[NEEDLE_HEADER_LEN..crc_at]);
    if hasher.finalize() != checksum {
        return Err(FormatError::BadChecksum);
    }
    let data_end = header.metadata_offset();
    let chunk_crcs = if header.has_chunk_crcs() {
        let tail = decode_tail(&header, &bytes[data_end..header.tail_end()])?;
        tail.chunk_crcs
    } else {
        &[]
    };
    let meta = NeedleMeta::decode(&bytes[data_end..crc_at])?;
    if header.is_tombstone() && header.data_len != 0 {
        return Err(FormatError::InvalidField);
    }
    Ok(DecodedNeedle {
        header,
        data: &bytes[NEEDLE_HEADER_LEN..data_end],
        meta,
        checksum,
        chunk_crcs,
    })
}

/// A record's tail (metadata onwards) decoded without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail<'a> {
    /// The metadata.
    pub meta: NeedleMeta,
    /// The stored record CRC (the ETag's source).
    pub checksum: u32,
    /// The chunk CRCs, encoded, 4 bytes each.
    pub chunk_crcs: &'a [u8],
}

/// Decodes the tail of a format-2 record, `bytes` being its bytes from
/// [`NeedleHeader::metadata_offset`] to [`NeedleHeader::tail_end`]: checks
/// the trailer CRC, so metadata, record CRC and chunk CRCs are as written.
/// A format-1 record's tail has no CRC of its own: `InvalidField`.
pub fn decode_tail<'a>(header: &NeedleHeader, bytes: &'a [u8]) -> Result<Tail<'a>, FormatError> {
    if !header.has_chunk_crcs() {
        return Err(FormatError::InvalidField);
    }
    let start = header.metadata_offset();
    let len = header.tail_end() - start;
    if bytes.len() < len {
        return Err(FormatError::Truncated);
    }
    let trailer_at = len - CHECKSUM_LEN;
    let trailer = u32::from_le_bytes(read_array(&bytes[trailer_at..]));
    if crc32fast::hash(&bytes[..trailer_at]) != trailer {
        return Err(FormatError::BadChecksum);
    }
    let crc_at = header.checksum_offset() - start;
    let meta = NeedleMeta::decode(&bytes[..crc_at])?;
    Ok(Tail {
        meta,
        checksum: u32::from_le_bytes(read_array(&bytes[crc_at..])),
        chunk_crcs: &bytes[crc_at + CHECKSUM_LEN..trailer_at],
    })
}

/// The header of the index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    /// The volume the index belongs to.
    pub volume_id: VolumeId,
}

impl IndexHeader {
    /// Encodes into [`INDEX_HEADER_LEN`] bytes.
    pub fn encode(&self) -> [u8; INDEX_HEADER_LEN] {
        let mut out = [0u8; INDEX_HEADER_LEN];
        let mut buf = &mut out[..];
        buf.put_slice(&INDEX_MAGIC);
        buf.put_u16_le(INDEX_FORMAT_VERSION);
        buf.put_u16_le(0);
        buf.put_u32_le(self.volume_id.0);
        let crc = crc32fast::hash(&out[..12]);
        out[12..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates the index header.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < INDEX_HEADER_LEN {
            return Err(FormatError::Truncated);
        }
        if bytes[..4] != INDEX_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if crc32fast::hash(&bytes[..12]) != u32::from_le_bytes(read_array(&bytes[12..])) {
            return Err(FormatError::BadChecksum);
        }
        let mut buf = &bytes[4..12];
        if buf.get_u16_le() != INDEX_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion);
        }
        let _reserved = buf.get_u16_le();
        Ok(IndexHeader {
            volume_id: VolumeId(buf.get_u32_le()),
        })
    }
}

/// One entry of the index file: a needle write or delete that became durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The needle written or deleted.
    pub needle_id: NeedleId,
    /// Byte offset of the record in the data file (a multiple of 8).
    pub offset: u64,
    /// Length of the record in bytes (a multiple of 8).
    pub record_len: u64,
    /// True if the record is a tombstone.
    pub tombstone: bool,
}

impl IndexEntry {
    /// Appends the encoded entry to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        debug_assert!(
            self.offset.is_multiple_of(ALIGNMENT) && self.record_len.is_multiple_of(ALIGNMENT)
        );
        buf.put_u64_le(self.needle_id.0);
        buf.put_u32_le((self.offset / ALIGNMENT) as u32);
        let mut len = (self.record_len / ALIGNMENT) as u32 & !INDEX_TOMBSTONE_BIT;
        if self.tombstone {
            len |= INDEX_TOMBSTONE_BIT;
        }
        buf.put_u32_le(len);
    }

    /// Decodes one entry from exactly [`INDEX_ENTRY_LEN`] bytes.
    pub fn decode(mut bytes: &[u8]) -> Self {
        let needle_id = NeedleId(bytes.get_u64_le());
        let offset = bytes.get_u32_le() as u64 * ALIGNMENT;
        let len = bytes.get_u32_le();
        IndexEntry {
            needle_id,
            offset,
            record_len: (len & !INDEX_TOMBSTONE_BIT) as u64 * ALIGNMENT,
            tombstone: len & INDEX_TOMBSTONE_BIT != 0,
        }
    }
}

fn read_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

#[cfg(test)]
mod tests;
