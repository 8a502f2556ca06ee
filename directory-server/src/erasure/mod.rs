//! Erasure-coded volumes, the directory's part (issue 33): where the
//! shards of a volume go ([`placement`]) and `EncodeVolume`'s steps on the
//! leader ([`encode`]), and `DecodeVolume`'s, back to copies ([`decode`]).
//!
//! See ARCHITECTURE.md, "Erasure-coded volumes: encoding".

pub mod decode;
pub mod encode;
pub mod placement;

pub use placement::{ShardPlacementError, ShardPlan, place_shards};
