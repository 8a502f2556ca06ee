//! Erasure-coded volumes: a sealed volume's data file as `k` data shards and
//! `m` parity shards on `k + m` servers (f4's warm tier), 1.4 times the bytes
//! for RS(10,4) instead of 3 copies' 3.
//!
//! # Layout
//!
//! - [`layout`]: the code (`K+M`) and the stripe arithmetic: which piece of
//!   which shard holds a byte range of the data file. Pure.
//! - [`codec`]: parity of a stripe, and the slices of lost shards restored
//!   from any `k` others (`reed-solomon-simd`). Pure.
//! - [`shard`]: one shard file: header, body, a CRC-32 per 64 KiB chunk, the
//!   digest of the whole; the writer (temp, fsync, rename) and reader.
//! - [`encode`]: a sealed data file read stripe by stripe into shards.
//! - [`decode`]: the data file restored from the shards as a replicated
//!   copy, staged until the directory commits it, then served.
//! - [`to_cold`]: the restored data file staged as a cold copy once
//!   uploaded (a move of the volume to the cold tier), then served.
//! - [`reencode`]: a re-encode's next generation staged beside the one
//!   served, and swapped in once committed.
//! - [`held`]: the erasure-coded volumes of a store, beside its replicated
//!   ones (install, take a written shard, remove).
//! - [`volume`]: an erasure-coded volume as one holder keeps it: manifest,
//!   index, delete journal, the shards it holds; locating a needle's pieces
//!   and restoring a piece from other shards.
//!
//! A healthy read of a needle is one read of one shard (a needle crosses
//! into a second block only at a block's end), checked by the needle's own
//! checksum. A read whose shard is lost or fails the checksum restores just
//! the needle's range (widened to 64-byte units) from `k` other shards.

pub mod codec;
pub mod decode;
pub mod encode;
pub mod held;
pub mod layout;
pub mod reencode;
pub mod shard;
pub mod to_cold;
pub mod volume;

pub use codec::CodecError;
pub use encode::{Encoder, STEP_LEN, Stripe, encode_to_dir};
pub use layout::{CHUNK_LEN, CODEC_UNIT, Code, CodeError, Layout, MAX_BLOCK_LEN, Piece};
pub use shard::{BodyDigest, ShardFile, ShardHeader, ShardWriter, shard_path};
pub use volume::{EcManifest, EcVolume, Located, ec_paths, restore_piece};

#[cfg(test)]
mod tests;
