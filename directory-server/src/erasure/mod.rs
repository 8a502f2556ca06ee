//! Erasure-coded volumes, the directory's part (issue 33): where the
//! shards of a volume go ([`placement`]), `EncodeVolume`'s steps on the
//! leader ([`encode`]) and which code it uses ([`codes`]).
//!
//! See ARCHITECTURE.md, "Erasure-coded volumes: encoding".

pub mod codes;
pub mod encode;
pub mod placement;

pub use codes::EcCodes;
pub use placement::{ShardPlacementError, ShardPlan, place_shards};
