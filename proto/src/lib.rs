//! hayloft's gRPC API, package `hayloft.v1`, generated from the `.proto`
//! files beside this crate (documented field by field there).
//!
//! - `Directory`: `Assign`, `Lookup`, `Heartbeat`, `Status`.
//! - `Volume`: `Write` (client stream), `Read` (server stream), `Delete`,
//!   `Stat`, `CreateVolume`, `ListVolumes`.

/// Generated messages, clients and servers of `hayloft.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("hayloft.v1");
}

pub use v1::*;

/// Largest message either service accepts or sends (chunks are smaller).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Size of the data chunks clients and servers stream.
pub const CHUNK_BYTES: usize = 1 << 20;
