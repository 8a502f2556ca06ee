//! Erasure-coded volumes, the directory's part (issue 33): where the
//! shards of a volume go ([`placement`]), `EncodeVolume`'s steps on the
//! leader ([`encode`]) and which code it uses ([`codes`]), which lost
//! shards to rebuild where ([`rebuild`], pure) and the worker that rebuilds
//! them, drops orphan shards and removes copies an encode left
//! ([`shard_worker`]), and `DecodeVolume`'s steps, back to copies
//! ([`decode`]), `ReencodeVolume`'s, the space of deleted needles given
//! back ([`reencode`]); encodes and decodes kept as jobs a new leader
//! finishes ([`jobs`]).
//!
//! See ARCHITECTURE.md, "Erasure-coded volumes: encoding" and "Rebuilding
//! lost shards".

pub mod codes;
pub mod decode;
pub mod encode;
pub mod jobs;
pub mod placement;
pub mod rebuild;
pub mod reencode;
pub mod shard_worker;

pub use codes::EcCodes;
pub use placement::{ShardPlacementError, ShardPlan, place_shards};
