//! Erasure-coded volumes on a volume server.
//!
//! - `encode`: this server's sealed copy of a volume encoded into `k + m`
//!   shards written to their holders ([`encode()`]).
//! - `read`: needles of an erasure-coded volume held here, read from the
//!   shards (here or on their holders) or restored from `k` of them
//!   ([`ErasureReads`]).

mod encode;
mod read;

pub use encode::{EncodeRequest, encode};
pub use read::{ErasureReads, PIECE_TIMEOUT, Served};
