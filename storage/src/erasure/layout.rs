//! Where the bytes of an erasure-coded volume are: the code, the stripe
//! arithmetic, and nothing else (no I/O).
//!
//! The sealed data file (`L` bytes) is cut into blocks of `B` bytes. Row `r`
//! is `k` consecutive blocks of the file: data shard `i` holds block `i` of
//! every row, one row after the other, so the byte at data file offset `p`
//! is in
//!
//! ```text
//! row   = p / (k * B)
//! shard = (p % (k * B)) / B
//! body  = row * B + p % B        (offset in the shard's body)
//! ```
//!
//! Parity shard `j` holds, at body offset `x`, the parity of the `k` data
//! shards' bytes at `x`. Past the file's end the data shards hold zeros.
//!
//! `B` is as large as [`MAX_BLOCK_LEN`] allows and no larger than the file
//! needs: `rows = ceil(L / (k * max))`, `B = ceil(L / (k * rows))` rounded
//! up to [`CHUNK_LEN`]. So a volume of any size pads at most `k` chunks a
//! row, and a needle sits in one block unless it crosses a block's end.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bytes covered by one checksum of a shard's body; block lengths are
/// multiples of it. Also a multiple of the codec's 64-byte unit, so every
/// chunk-aligned range can be reconstructed on its own.
pub const CHUNK_LEN: u64 = 64 * 1024;

/// Largest block: a needle read touches one block of one shard.
pub const MAX_BLOCK_LEN: u64 = 1 << 30;

/// The codec works on units of this many bytes: a range of a shard can be
/// reconstructed from the same range of other shards when it starts and ends
/// on a multiple of it (counted from the body's start).
pub const CODEC_UNIT: u64 = 64;

/// An erasure code: `data` data shards and `parity` parity shards; any
/// `data` of the `data + parity` shards give back the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Code {
    /// Data shards (`k`).
    pub data: u8,
    /// Parity shards (`m`): this many shards can be lost.
    pub parity: u8,
}

/// Why a code is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid erasure code {text:?}: {reason}")]
pub struct CodeError {
    text: String,
    reason: &'static str,
}

impl Code {
    /// RS(10,4), as f4: 1.4 times the bytes, any 4 shards may be lost.
    pub const DEFAULT: Code = Code {
        data: 10,
        parity: 4,
    };

    /// Most shards a volume may have.
    pub const MAX_SHARDS: usize = 64;

    /// A code of `data` + `parity` shards: each at least 1, together at
    /// most [`Code::MAX_SHARDS`].
    pub fn new(data: u8, parity: u8) -> Result<Code, CodeError> {
        let error = |reason| CodeError {
            text: format!("{data}+{parity}"),
            reason,
        };
        if data == 0 || parity == 0 {
            return Err(error("needs at least one data and one parity shard"));
        }
        if usize::from(data) + usize::from(parity) > Self::MAX_SHARDS {
            return Err(error("more than 64 shards"));
        }
        Ok(Code { data, parity })
    }

    /// Data plus parity shards.
    pub fn shards(self) -> usize {
        usize::from(self.data) + usize::from(self.parity)
    }

    /// Bytes stored per byte of data: `(k + m) / k`.
    pub fn overhead(self) -> f64 {
        self.shards() as f64 / f64::from(self.data)
    }

    /// True if shard `shard` is a data shard.
    pub fn is_data(self, shard: u8) -> bool {
        shard < self.data
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.data, self.parity)
    }
}

impl FromStr for Code {
    type Err = CodeError;

    /// Parses `K+M`, e.g. `10+4`.
    fn from_str(text: &str) -> Result<Code, CodeError> {
        let error = |reason| CodeError {
            text: text.to_owned(),
            reason,
        };
        let (data, parity) = text
            .split_once('+')
            .ok_or_else(|| error("expected K+M, e.g. 10+4"))?;
        let parse = |n: &str| {
            n.trim()
                .parse::<u8>()
                .map_err(|_| error("K and M are numbers up to 64"))
        };
        Code::new(parse(data)?, parse(parity)?).map_err(|e| CodeError {
            text: text.to_owned(),
            ..e
        })
    }
}

/// How a sealed data file of `data_len` bytes is striped over its shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Layout {
    /// The code.
    pub code: Code,
    /// Length of the data file.
    pub data_len: u64,
    /// Block length `B`, a multiple of [`CHUNK_LEN`].
    pub block_len: u64,
}

/// A contiguous piece of one shard's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The shard (`0..k` data, `k..k+m` parity).
    pub shard: u8,
    /// Offset in the shard's body.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Piece {
    /// The piece widened to [`CODEC_UNIT`] boundaries: the smallest range
    /// of every shard that reconstructs it.
    pub fn widened(self) -> Range<u64> {
        let start = self.offset / CODEC_UNIT * CODEC_UNIT;
        let end = (self.offset + self.len).div_ceil(CODEC_UNIT) * CODEC_UNIT;
        start..end
    }
}

impl Layout {
    /// The layout of a `data_len`-byte file under `code`, with blocks of at
    /// most `max_block` bytes (rounded down to a multiple of [`CHUNK_LEN`],
    /// at least one chunk).
    pub fn plan(code: Code, data_len: u64, max_block: u64) -> Layout {
        let k = u64::from(code.data);
        let max_block = (max_block / CHUNK_LEN * CHUNK_LEN).max(CHUNK_LEN);
        let rows = data_len.div_ceil(k * max_block).max(1);
        let block_len = data_len.div_ceil(k * rows).div_ceil(CHUNK_LEN).max(1) * CHUNK_LEN;
        Layout {
            code,
            data_len,
            block_len,
        }
    }

    /// Rows of blocks (at least one).
    pub fn rows(&self) -> u64 {
        self.data_len
            .div_ceil(u64::from(self.code.data) * self.block_len)
            .max(1)
    }

    /// Length of every shard's body.
    pub fn body_len(&self) -> u64 {
        self.rows() * self.block_len
    }

    /// Bytes of all shards' bodies together.
    pub fn stored_len(&self) -> u64 {
        self.body_len() * self.code.shards() as u64
    }

    /// The pieces of shards holding the data file's bytes `range`, in file
    /// order (a range inside one block is one piece). Bytes past the file's
    /// end are not asked for.
    pub fn pieces(&self, range: Range<u64>) -> Vec<Piece> {
        let k = u64::from(self.code.data);
        let b = self.block_len;
        let end = range.end.min(self.data_len);
        let mut pieces = Vec::new();
        let mut at = range.start;
        while at < end {
            let row = at / (k * b);
            let within = at % (k * b);
            let shard = (within / b) as u8;
            let offset = within % b;
            let len = (b - offset).min(end - at);
            pieces.push(Piece {
                shard,
                offset: row * b + offset,
                len,
            });
            at += len;
        }
        pieces
    }

    /// The data file range of data shard `shard`'s body bytes `offset..`,
    /// `len` long (clamped to the file's end): the inverse of
    /// [`Layout::pieces`]. Empty for parity shards and padding.
    pub fn data_range(&self, shard: u8, offset: u64, len: u64) -> Range<u64> {
        if !self.code.is_data(shard) {
            return 0..0;
        }
        let k = u64::from(self.code.data);
        let b = self.block_len;
        let (row, within) = (offset / b, offset % b);
        let start = row * k * b + u64::from(shard) * b + within;
        let len = len.min(b - within);
        start.min(self.data_len)..(start + len).min(self.data_len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_parse_and_refuse_clearly() {
        assert_eq!("10+4".parse::<Code>().unwrap(), Code::DEFAULT);
        assert_eq!(" 2 + 1".parse::<Code>().unwrap(), Code::new(2, 1).unwrap());
        for bad in ["10", "0+4", "4+0", "60+5", "a+b", "300+1"] {
            let error = bad.parse::<Code>().unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
        assert!((Code::DEFAULT.overhead() - 1.4).abs() < 1e-9);
    }

    #[test]
    fn a_small_file_is_one_row_of_equal_blocks() {
        let layout = Layout::plan(Code::DEFAULT, 10 * 1024 * 1024, MAX_BLOCK_LEN);
        assert_eq!(layout.rows(), 1);
        assert_eq!(layout.block_len, 1024 * 1024);
        assert_eq!(layout.stored_len(), 14 * 1024 * 1024);
        // Padding is under a chunk per data shard.
        let odd = Layout::plan(Code::DEFAULT, 10 * 1024 * 1024 + 1, MAX_BLOCK_LEN);
        assert_eq!(odd.block_len, 1024 * 1024 + CHUNK_LEN);
        assert_eq!(
            Layout::plan(Code::DEFAULT, 0, MAX_BLOCK_LEN).block_len,
            CHUNK_LEN
        );
    }

    #[test]
    fn a_large_file_has_rows_of_at_most_the_largest_block() {
        let gib = 1u64 << 30;
        let layout = Layout::plan(Code::DEFAULT, 32 * gib, MAX_BLOCK_LEN);
        assert_eq!(layout.rows(), 4);
        assert!(layout.block_len <= MAX_BLOCK_LEN);
        // Rows are filled evenly: the padding stays under one chunk a block.
        let padding = layout.body_len() * 10 - 32 * gib;
        assert!(padding < 40 * CHUNK_LEN, "{padding}");
    }

    #[test]
    fn a_range_across_a_block_end_is_two_pieces() {
        let layout = Layout::plan(Code::new(2, 1).unwrap(), 4 * CHUNK_LEN, CHUNK_LEN);
        assert_eq!(layout.block_len, CHUNK_LEN);
        assert_eq!(layout.rows(), 2);
        let pieces = layout.pieces(CHUNK_LEN - 10..CHUNK_LEN + 10);
        assert_eq!(
            pieces,
            vec![
                Piece {
                    shard: 0,
                    offset: CHUNK_LEN - 10,
                    len: 10
                },
                Piece {
                    shard: 1,
                    offset: 0,
                    len: 10
                },
            ]
        );
        // Row 1 starts at 2 blocks of the file, at one block of each body.
        assert_eq!(
            layout.pieces(2 * CHUNK_LEN + 5..2 * CHUNK_LEN + 6),
            vec![Piece {
                shard: 0,
                offset: CHUNK_LEN + 5,
                len: 1
            }]
        );
    }

    #[test]
    fn widened_pieces_cover_whole_codec_units() {
        let piece = Piece {
            shard: 0,
            offset: 100,
            len: 30,
        };
        assert_eq!(piece.widened(), 64..192);
        let aligned = Piece {
            shard: 3,
            offset: 128,
            len: 64,
        };
        assert_eq!(aligned.widened(), 128..192);
    }

    proptest! {
        #[test]
        fn pieces_cover_the_range_once_and_map_back(
            k in 1u8..12,
            data_len in 0u64..5_000_000,
            max_chunks in 1u64..8,
            start in 0u64..5_000_000,
            len in 0u64..3_000_000,
        ) {
            let layout = Layout::plan(Code::new(k, 1).unwrap(), data_len, max_chunks * CHUNK_LEN);
            prop_assert!(layout.block_len.is_multiple_of(CHUNK_LEN));
            prop_assert!(layout.block_len <= max_chunks * CHUNK_LEN || data_len == 0);
            prop_assert!(layout.body_len() * u64::from(k) >= data_len);
            let start = start.min(data_len);
            let end = (start + len).min(data_len);
            let mut at = start;
            for piece in layout.pieces(start..end) {
                prop_assert!(piece.shard < k);
                prop_assert!(piece.offset + piece.len <= layout.body_len());
                prop_assert!(piece.offset / layout.block_len
                    == (piece.offset + piece.len - 1) / layout.block_len);
                let back = layout.data_range(piece.shard, piece.offset, piece.len);
                prop_assert_eq!(back, at..at + piece.len);
                at += piece.len;
            }
            prop_assert_eq!(at, end);
        }
    }
}
