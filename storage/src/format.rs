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
//! |      4 |    2 | format version (currently 1)                   |
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
//! |             4 |        1 | flags: bit 0 = tombstone                     |
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
//! Why one file of ~640 lines: the on-disk format with its byte tables in one
//! place, and its round-trip and corruption tests (a fifth of the file).

use bytes::{Buf, BufMut};

use crate::types::{Cookie, NeedleId, VolumeId};

/// Length of the volume superblock at the start of the data file.
pub const SUPERBLOCK_LEN: usize = 64;
/// Magic number opening the superblock.
pub const SUPERBLOCK_MAGIC: [u8; 4] = *b"HLVS";
/// Current version of the volume format.
pub const FORMAT_VERSION: u16 = 1;

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
}

impl Superblock {
    /// Encodes into exactly [`SUPERBLOCK_LEN`] bytes.
    pub fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut out = [0u8; SUPERBLOCK_LEN];
        let mut buf = &mut out[..];
        buf.put_slice(&SUPERBLOCK_MAGIC);
        buf.put_u16_le(FORMAT_VERSION);
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
        if buf.get_u16_le() != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion);
        }
        let _flags = buf.get_u16_le();
        let volume_id = VolumeId(buf.get_u32_le());
        let _reserved = buf.get_u32_le();
        let created_at = buf.get_u64_le();
        Ok(Superblock {
            volume_id,
            created_at,
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

    /// Total length of the record this header opens, padding included.
    pub fn record_len(&self) -> u64 {
        record_len(self.data_len as u64, self.metadata_len as usize)
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
/// metadata, padding included.
pub fn record_len(data_len: u64, metadata_len: usize) -> u64 {
    let raw = NEEDLE_HEADER_LEN as u64 + data_len + metadata_len as u64 + CHECKSUM_LEN as u64;
    raw.next_multiple_of(ALIGNMENT)
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
    let start = buf.len();
    buf.reserve(header.record_len() as usize);
    buf.put_slice(&header.encode());
    buf.put_slice(data);
    meta.encode(buf);
    let crc = crc32fast::hash(&buf[start..]);
    buf.put_u32_le(crc);
    buf.resize(start + header.record_len() as usize, 0);
    Ok(crc)
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
    if crc32fast::hash(&bytes[..crc_at]) != checksum {
        return Err(FormatError::BadChecksum);
    }
    let data_end = NEEDLE_HEADER_LEN + header.data_len as usize;
    let meta = NeedleMeta::decode(&bytes[data_end..crc_at])?;
    if header.is_tombstone() && header.data_len != 0 {
        return Err(FormatError::InvalidField);
    }
    Ok(DecodedNeedle {
        header,
        data: &bytes[NEEDLE_HEADER_LEN..data_end],
        meta,
        checksum,
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
        buf.put_u16_le(FORMAT_VERSION);
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
        if buf.get_u16_le() != FORMAT_VERSION {
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_meta() -> impl Strategy<Value = NeedleMeta> {
        (
            "[a-z/+.-]{0,40}",
            "\\PC{0,60}",
            any::<u64>(),
            proptest::option::of(1u64..),
        )
            .prop_map(
                |(content_type, file_name, last_modified, expires_at)| NeedleMeta {
                    content_type,
                    file_name,
                    last_modified,
                    expires_at,
                },
            )
    }

    proptest! {
        #[test]
        fn needle_round_trips(
            id in any::<u64>(),
            cookie in any::<u32>(),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            meta in arb_meta(),
        ) {
            let mut buf = Vec::new();
            let crc = encode_needle(&mut buf, 0, NeedleId(id), Cookie(cookie), &data, &meta).unwrap();
            prop_assert_eq!(buf.len() as u64 % ALIGNMENT, 0);
            prop_assert_eq!(buf.len() as u64, record_len(data.len() as u64, meta.encoded_len()));
            let decoded = decode_needle(&buf).unwrap();
            prop_assert_eq!(decoded.header.needle_id, NeedleId(id));
            prop_assert_eq!(decoded.header.cookie, Cookie(cookie));
            prop_assert_eq!(decoded.data, &data[..]);
            prop_assert_eq!(&decoded.meta, &meta);
            prop_assert_eq!(decoded.checksum, crc);
            prop_assert!(!decoded.header.is_tombstone());
        }

        #[test]
        fn any_flipped_bit_is_detected(
            data in proptest::collection::vec(any::<u8>(), 1..500),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut buf = Vec::new();
            let meta = NeedleMeta { content_type: "image/png".into(), ..Default::default() };
            encode_needle(&mut buf, 0, NeedleId(7), Cookie(9), &data, &meta).unwrap();
            let header = NeedleHeader::decode(&buf).unwrap();
            // Flip a bit anywhere in the checksummed bytes or the checksum itself.
            let covered = header.checksum_offset() + CHECKSUM_LEN;
            let bit = bit.index(covered * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_needle(&buf).is_err());
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_needle(&bytes);
            let _ = Superblock::decode(&bytes);
            let _ = IndexHeader::decode(&bytes);
            let mut with_magic = NEEDLE_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_needle(&with_magic);
        }

        #[test]
        fn index_entry_round_trips(id in any::<u64>(), off in 0u32.., len in 1u32..(1 << 31), tomb in any::<bool>()) {
            let entry = IndexEntry {
                needle_id: NeedleId(id),
                offset: off as u64 * ALIGNMENT,
                record_len: len as u64 * ALIGNMENT,
                tombstone: tomb,
            };
            let mut buf = Vec::new();
            entry.encode(&mut buf);
            prop_assert_eq!(buf.len(), INDEX_ENTRY_LEN);
            prop_assert_eq!(IndexEntry::decode(&buf), entry);
        }
    }

    #[test]
    fn superblock_round_trips_and_detects_damage() {
        let sb = Superblock {
            volume_id: VolumeId(42),
            created_at: 1_700_000_000,
        };
        let mut bytes = sb.encode();
        assert_eq!(Superblock::decode(&bytes), Ok(sb));
        bytes[9] ^= 0x10;
        assert_eq!(Superblock::decode(&bytes), Err(FormatError::BadChecksum));
        assert_eq!(
            Superblock::decode(&bytes[..10]),
            Err(FormatError::Truncated)
        );
    }

    #[test]
    fn truncated_record_is_reported_as_truncated() {
        let mut buf = Vec::new();
        encode_needle(
            &mut buf,
            0,
            NeedleId(1),
            Cookie(2),
            b"hello world",
            &NeedleMeta::default(),
        )
        .unwrap();
        for cut in 0..buf.len() {
            // Records are written whole, padding included: any prefix is torn.
            assert!(decode_needle(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }
}
