//! Erasure-coded volumes on a volume server.
//!
//! - `encode`: this server's sealed copy of a volume encoded into `k + m`
//!   shards written to their holders ([`encode()`]).
//! - `rebuild`: a lost shard restored here from `k` others
//!   ([`rebuild()`]), the holders' delete journals kept in step
//!   ([`JournalSync`]), and shards scrubbed, a bad chunk mended from `k`
//!   others ([`ShardScrub`]).
//! - `decode`: a decode's target: the data file restored from the shards
//!   and staged as a replicated copy, the journals applied, the copy
//!   served once committed ([`decode::build`]).
//! - `reencode`: a re-encode's target: the staged copy compacted and
//!   encoded as the volume's next generation, staged on its holders
//!   ([`reencode::reencode`]).
//! - `read`: needles of an erasure-coded volume held here, read from the
//!   shards (here or on their holders) or restored from `k` of them
//!   ([`ErasureReads`]).

pub mod decode;
mod encode;
mod read;
mod rebuild;
pub mod reencode;

pub use decode::DecodeRequest;
pub use encode::{EncodeRequest, encode};
pub use read::{ErasureReads, PIECE_TIMEOUT, Served};
pub use rebuild::{JournalSync, RebuildRequest, Rebuilding, ShardScrub, rebuild};
